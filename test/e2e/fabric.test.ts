// The DPU at the node's network entrance, end to end on the test bed: the fabric
// (a namespace standing for the network outside the node) reaches the node only
// through the emulated DPU's uplink p0. A connection from the fabric to a port of
// the pod's DPU half is delivered there by the DPU, and not one of its packets
// crosses the host (counted on the host's PF link and on the pod's XPU link);
// the offloaded server sees the client's real address. Other ports reach the host
// half through the PF, as before. Each half's egress to the fabric leaves as the
// pod IP, the DPU half's from the DPU's uplink, and the two never collide (each
// takes ports from its own range). Then the pod goes and nothing of it is left
// on either side: no wire, rule or route on the DPU.
import { spawn, ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { CriClient } from '../../src/cri/client';
import type { CriObject } from '../../src/cri/config';
import { DPU } from '../../src/dpu/paths';
import { inNetns } from '../../src/netns/exec';
import { DPU_EPHEMERAL, HOST_EPHEMERAL } from '../../src/netns/uplink';
import { httpGet } from '../../src/testbed/http';
import { TESTBED } from '../../src/testbed/paths';
import { run as runCmd, waitFor } from '../../src/testbed/proc';
import { settleDpuLeaks } from '../lib/dpu';
import { settleAndCheckLeaks } from '../lib/shim';
import { fetchIn, httpd, OWN_PID_NAMESPACE, runContainer } from '../lib/split';
import { Bed, podConfig, removeOwnPods, startBed, stopBed } from '../lib/testbed';

const FABRIC = DPU.uplink.fabricNetns;
const CLIENT = DPU.uplink.fabricAddress;
const HOST_PORT = 8080;
const DPU_PORT = 15006;
/** A host-half listener inside the DPU half's ephemeral range: the DPU must not take it. */
const HOST_PORT_IN_DPU_RANGE = 50000;
const FABRIC_PORT = 7070;
const LATER_PORT = 9090;

let bed: Bed;
let cri: CriClient;

test.before(async () => {
  bed = await startBed();
  cri = bed.cri;
});

test.after(async () => {
  await removeOwnPods(bed);
  const leaks = await stopBed(bed);
  assert.equal(leaks, [], `the test bed left:\n${leaks.join('\n')}`);
});

/** Runs a command inside the fabric namespace. */
function inFabric(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return runCmd('ip', ['netns', 'exec', FABRIC, ...argv], { allowFail: true, timeout: 20_000 });
}

// An HTTP GET from inside the fabric (busybox's static wget crashes in a
// namespace made by `ip netns exec`; node does not).
const GET = `require('http').get(process.argv[1], { timeout: 3000 }, (r) => { let b = ''; r.on('data', (d) => (b += d)).on('end', () => { process.stdout.write(b); process.exit(r.statusCode === 200 ? 0 : 1); }); }).on('error', () => process.exit(1)).on('timeout', () => process.exit(1))`;

/** A page fetched from the fabric (a client outside the node), or undefined. */
async function fetchFromFabric(url: string): Promise<string | undefined> {
  const r = await inFabric([process.execPath, '-e', GET, url]);
  return r.code === 0 ? r.stdout.trim() : undefined;
}

/**
 * Packets through the host's end of the PF link (host namespace) and the host
 * half's end of the pod's XPU link (its CNI namespace), both directions, from the
 * devices' own counters. The emulated links carry no IPv6 and nothing else runs
 * over them while a test counts, so any packet counted is the test's.
 */
async function hostCrossings(podNetns: string): Promise<{ pf: number; xpu: number }> {
  const packets = (json: string) => {
    const [dev] = JSON.parse(json) as { stats64: { rx: { packets: number }; tx: { packets: number } } }[];
    return dev.stats64.rx.packets + dev.stats64.tx.packets;
  };
  const pf = packets((await runCmd('ip', ['-s', '-j', 'link', 'show', 'dev', DPU.pf.hostDev])).stdout);
  const xpu = packets(await inNetns(podNetns, ['ip', '-s', '-j', 'link', 'show', 'dev', 'xpu0']));
  return { pf, xpu };
}

/** An HTTP server in the fabric that answers each request with the client's address and port as it sees them. */
async function fabricServer(): Promise<{ child: ChildProcess; close: () => Promise<void> }> {
  const script = `require('http').createServer((q, s) => s.end(q.socket.remoteAddress + ':' + q.socket.remotePort + '\\n')).listen(${FABRIC_PORT}, '${CLIENT}', () => console.log('ready'))`;
  const child = spawn('ip', ['netns', 'exec', FABRIC, process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`the fabric's server exited (${code})`)));
  });
  return { child, close: () => new Promise((r) => (child.exitCode !== null ? r() : (child.once('exit', () => r()), child.kill()))) };
}

/** The pod's network namespace (the host half), from its sandbox's OCI spec. */
function podNetnsPath(podId: string): string {
  const spec = JSON.parse(fs.readFileSync(path.join(TESTBED.containerdState, 'io.containerd.runtime.v2.task', TESTBED.namespace, podId, 'config.json'), 'utf8'));
  const ns = (spec.linux.namespaces as { type: string; path?: string }[]).find((n) => n.type === 'network');
  if (!ns?.path) throw new Error(`pod ${podId}: no network namespace in its spec`);
  return ns.path;
}

function inRange(port: number, [lo, hi]: readonly [number, number]): boolean {
  return port >= lo && port <= hi;
}

test('the fabric reaches the DPU half through the DPU alone; the host half through the PF', async () => {
  const pod = podConfig(bed, 'fabric', { annotations: { 'heteropod.io/offload': 'proxy', 'heteropod.io/ports': `proxy=${DPU_PORT}` }, linux: OWN_PID_NAMESPACE });
  const podId = await cri.runPodSandbox(pod, 'heteropod');
  const podIp = (((await cri.podSandboxStatus(podId)).status as CriObject).network as CriObject).ip as string;
  const podNetns = podNetnsPath(podId);
  const app = await runContainer(cri, podId, pod, 'app', ['sh', '-c', `${httpd('from-host', HOST_PORT)[2]} & mkdir -p /w2 && echo from-host-high > /w2/index.html && exec httpd -f -p ${HOST_PORT_IN_DPU_RANGE} -h /w2`]);
  const proxy = await runContainer(cri, podId, pod, 'proxy', httpd('from-dpu', DPU_PORT));
  const server = await fabricServer();
  const crossings = { read: () => hostCrossings(podNetns) };
  const start = await crossings.read();
  try {
    // The host half's ports at the pod IP, from the fabric: through the PF (counted, so the counters work).
    assert.is(await waitFor('the fabric to reach the host half', 10_000, () => fetchFromFabric(`http://${podIp}:${HOST_PORT}/`)), 'from-host');
    const viaPf = await crossings.read();
    assert.ok(viaPf.pf > start.pf, `a connection to the host half crossed the PF link (${viaPf.pf - start.pf} packets counted)`);
    assert.is(viaPf.xpu, start.xpu, 'and not the XPU link');
    // A host listener inside the DPU's ephemeral range stays the host's.
    assert.is(await waitFor('the host listener on 50000', 10_000, () => fetchFromFabric(`http://${podIp}:${HOST_PORT_IN_DPU_RANGE}/`)), 'from-host-high');

    // The DPU half's port from the fabric: delivered by the DPU; no packet on the host.
    const before = await crossings.read();
    assert.is(await fetchFromFabric(`http://${podIp}:${DPU_PORT}/`), 'from-dpu');
    for (let i = 0; i < 20; i++) assert.is(await fetchFromFabric(`http://${podIp}:${DPU_PORT}/`), 'from-dpu');
    assert.equal(await crossings.read(), before, 'no packet of the fabric\'s connections to the DPU half crossed the PF or XPU link');

    // The offloaded server sees the client's real address.
    const hold = `require('net').connect(${DPU_PORT}, '${podIp}').on('error', () => process.exit(1)); setTimeout(() => process.exit(0), 20000)`;
    const held = spawn('ip', ['netns', 'exec', FABRIC, process.execPath, '-e', hold], { stdio: 'ignore' });
    try {
      const seen = await waitFor('the DPU half to see the fabric\'s connection', 10_000, async () => {
        const r = await cri.execSync(proxy, ['netstat', '-tn']);
        // (busybox httpd listens on ::, so IPv4 peers show as ::ffff:a.b.c.d)
        const addr = (ip: string) => `(::ffff:)?${ip.replace(/\./g, '\\.')}`;
        return new RegExp(`${addr(podIp)}:${DPU_PORT}\\s+${addr(CLIENT)}:\\d+\\s+ESTABLISHED`).test(r.stdout.toString()) || undefined;
      });
      assert.ok(seen);
    } finally {
      held.kill();
    }

    // Egress. The DPU half's connection to the fabric leaves from the uplink as the pod IP, from its own port range.
    const fromDpu = await fetchIn(cri, proxy, `http://${CLIENT}:${FABRIC_PORT}/`);
    assert.ok(fromDpu.ok, `the DPU container reaches the fabric: ${fromDpu.out}`);
    const [dpuSrc, dpuPort] = fromDpu.out.split(':');
    assert.is(dpuSrc, podIp, 'the fabric sees the DPU container\'s connection from the pod IP');
    assert.ok(inRange(Number(dpuPort), DPU_EPHEMERAL), `from the DPU half's ports (${dpuPort})`);
    const afterDpuEgress = await crossings.read();
    assert.equal(afterDpuEgress, before, 'the DPU half\'s egress and its replies did not cross the host');
    // The host half's, through the PF, from its own range.
    const fromHost = await fetchIn(cri, app, `http://${CLIENT}:${FABRIC_PORT}/`);
    assert.ok(fromHost.ok, `the host container reaches the fabric: ${fromHost.out}`);
    const [hostSrc, hostPort] = fromHost.out.split(':');
    assert.is(hostSrc, podIp, 'the fabric sees the host container\'s connection from the pod IP');
    assert.ok(inRange(Number(hostPort), HOST_EPHEMERAL), `from the host half's ports (${hostPort})`);
    assert.ok((await crossings.read()).pf > before.pf, 'the host half\'s egress crossed the PF');

    // A listener the DPU half starts later (not declared) is steered to it as soon as it is seen
    // (until then the fabric's connection attempts go to the host half, which refuses them).
    const later = await cri.execSync(proxy, ['sh', '-c', `mkdir -p /later && echo later > /later/index.html && httpd -p ${LATER_PORT} -h /later`]);
    assert.is(later.exitCode, 0, later.stderr.toString());
    const t0 = Date.now();
    assert.is(await waitFor('the fabric to reach the later listener', 5000, () => fetchFromFabric(`http://${podIp}:${LATER_PORT}/`), 50), 'later');
    const elapsed = Date.now() - t0;
    assert.ok(elapsed < 2000, `the later listener was reachable from the fabric after ${elapsed} ms`);

    // Both halves busy on the pod IP at once: every connection answered, each from its own half's range.
    const loop = (n: number) => `i=0; ok=0; while [ $i -lt ${n} ]; do wget -q -O - http://${CLIENT}:${FABRIC_PORT}/ && ok=$((ok+1)); i=$((i+1)); done; echo ok=$ok`;
    const [dpuRun, hostRun] = await Promise.all([cri.execSync(proxy, ['sh', '-c', loop(100)], 60), cri.execSync(app, ['sh', '-c', loop(100)], 60)]);
    for (const [who, r, range] of [['DPU', dpuRun, DPU_EPHEMERAL], ['host', hostRun, HOST_EPHEMERAL]] as const) {
      const out = r.stdout.toString();
      assert.match(out, /ok=100$/m, `${who} half: 100 of 100 connections answered`);
      const ports = [...out.matchAll(/^(\S+):(\d+)$/gm)];
      assert.is(ports.length, 100);
      for (const [, src, port] of ports) {
        assert.is(src, podIp);
        assert.ok(inRange(Number(port), range), `${who} half's connection from port ${port}`);
      }
    }

    // Inside the node, as before: the node reaches either half at the pod IP.
    assert.is(await httpGet(`http://${podIp}:${DPU_PORT}/`), 'from-dpu');
    assert.is(await httpGet(`http://${podIp}:${HOST_PORT}/`), 'from-host');
  } finally {
    await server.close();
  }

  await cri.stopPodSandbox(podId);
  await cri.removePodSandbox(podId);
  const left = [...(await settleAndCheckLeaks(bed.preexisting.shims)), ...(await settleDpuLeaks(bed.preexisting.dpu))];
  assert.equal(left, [], `the pod left behind:\n${left.join('\n')}`);
  // Nothing answers for the pod IP any more; the fabric's route is the node's, not the pod's.
  assert.is(await fetchFromFabric(`http://${podIp}:${DPU_PORT}/`), undefined);
});

test.run();
