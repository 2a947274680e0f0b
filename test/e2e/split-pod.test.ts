// The split network namespace of a real pod, end to end, on the test bed (real
// containerd, runc, CNI, the emulated DPU): a pod whose `app` runs on the host and
// whose `proxy` is offloaded is one network identity. Each half reaches the
// other's listeners on 127.0.0.1; the node reaches a DPU-owned port at the pod
// IP; the DPU container's egress leaves as the pod IP; a listener started later
// in the DPU container is reachable from the host half within a second. Then the
// pod goes, also after its shim was killed (the sandbox's poststop hook and
// `delete` clean up), and nothing is left on either side: no window, link, TAP
// device or netfilter rule.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { CriClient } from '../../src/cri/client';
import type { CriObject } from '../../src/cri/config';
import { dialPortForward } from '../../src/cri/portforward';
import { hostAndDpuCpus } from '../../src/dpu/cgroup';
import { CLEANUP_HOOK, podWindowPath } from '../../src/netns';
import { REPO_ROOT, TESTBED } from '../../src/testbed/paths';
import { httpGet } from '../../src/testbed/http';
import { listProcesses, waitFor } from '../../src/testbed/proc';
import { readStats } from '../../src/xpu/window';
import { agentPods } from '../lib/dpu';
import { fetchIn as fetchInContainer, httpd, OWN_PID_NAMESPACE, runContainer } from '../lib/split';
import { parseCpuMask } from '../lib/netns';
import { Bed, podLeaks, ownPods, podConfig, useTestBed, waitForContainerState } from '../lib/testbed';

// The test bed's bridge (hp-cni0) address in the node's namespace.
const NODE_BRIDGE_IP = '10.233.77.1';
const HOST_PORT = 8080; // app's, on the host
const DPU_PORT = 15006; // proxy's, declared in heteropod.io/ports
const LATER_PORT = 9090; // a listener proxy starts while the pod runs

let bed: Bed;
let cri: CriClient;

useTestBed(test, (b) => {
  bed = b;
  cri = b.cri;
});

async function noLeaks(when: string, podId: string): Promise<void> {
  const window = podWindowPath(podId);
  const left = [...(await podLeaks(bed)), ...(fs.existsSync(window) ? [`XPU window ${window}`] : [])];
  assert.equal(left, [], `${when} left behind:\n${left.join('\n')}`);
}

function splitPod(name: string, annotations: Record<string, string>): CriObject {
  return podConfig(bed, name, { annotations, linux: OWN_PID_NAMESPACE });
}

const run = (podId: string, pod: CriObject, name: string, command: string[]) => runContainer(cri, podId, pod, name, command);
const fetchIn = (id: string, url: string, seconds?: number) => fetchInContainer(cri, id, url, seconds);

/** A TCP server in the node's namespace on the bridge address: answers each client with its address as seen. */
async function peerEcho(): Promise<{ port: number; peers: string[]; close: () => Promise<void> }> {
  const peers: string[] = [];
  const server = net.createServer((s) => {
    peers.push(s.remoteAddress ?? '');
    s.end(`${s.remoteAddress}\n`);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, NODE_BRIDGE_IP, () => resolve());
  });
  return { port: (server.address() as net.AddressInfo).port, peers, close: () => new Promise((r) => server.close(() => r())) };
}

async function removePod(podId: string): Promise<void> {
  await cri.stopPodSandbox(podId);
  await cri.removePodSandbox(podId);
}

function sandboxSpec(podId: string): { hooks?: { poststop?: { path: string }[] } } {
  return JSON.parse(fs.readFileSync(path.join(TESTBED.containerdState, 'io.containerd.runtime.v2.task', TESTBED.namespace, podId, 'config.json'), 'utf8'));
}

test('app on the host, proxy on the DPU: one network namespace', async () => {
  const pod = splitPod('split-net', { 'heteropod.io/offload': 'proxy', 'heteropod.io/ports': `proxy=${DPU_PORT}` });
  const podId = await cri.runPodSandbox(pod, 'heteropod');
  const podIp = (((await cri.podSandboxStatus(podId)).status as CriObject).network as CriObject).ip as string;
  assert.ok(podIp.startsWith('10.233.77.'), `pod IP ${podIp}`);
  assert.ok(fs.existsSync(podWindowPath(podId)), 'the pod has an XPU window');
  assert.ok(sandboxSpec(podId).hooks?.poststop?.some((h) => h.path === CLEANUP_HOOK), 'the sandbox spec has the clean-up hook');
  const [dpuPod] = (await agentPods()).filter((p) => p.pod_id === podId);
  assert.ok(dpuPod, 'the agent has the pod\'s DPU half');

  const app = await run(podId, pod, 'app', httpd('from-host', HOST_PORT));
  const proxy = await run(podId, pod, 'proxy', httpd('from-dpu', DPU_PORT));
  const inDpu = await cri.execSync(proxy, ['grep', '-c', 'heteropod-dpu', '/proc/self/cgroup']);
  assert.ok(Number(inDpu.stdout.toString()) > 0, 'proxy runs on the DPU');

  // The link's host end is served by the DPU end (the default host_mode), which
  // hands what it writes into the host half's xpu0 to the host's CPUs (RPS): every
  // CPU outside the DPU's cpuset.
  assert.is(readStats(podWindowPath(podId)).host.mode, 'served');
  const hostMask = hostAndDpuCpus().host.reduce((m, cpu) => m | (1n << BigInt(cpu)), 0n);
  const rps = await cri.execSync(app, ['cat', '/sys/class/net/xpu0/queues/rx-0/rps_cpus']);
  assert.is(rps.exitCode, 0, rps.stderr.toString());
  assert.is(parseCpuMask(rps.stdout.toString()), hostMask, `the host half's xpu0 receives on the host's CPUs (rps_cpus ${rps.stdout.toString().trim()})`);
  // Setting it made the namespace's sysfs writable for a moment only: the container's stays read-only.
  const write = await cri.execSync(app, ['sh', '-c', 'echo 0 > /sys/class/net/xpu0/queues/rx-0/rps_cpus']);
  assert.is.not(write.exitCode, 0, "the app container's /sys is still read-only");
  assert.match(write.stderr.toString(), /Read-only file system/);

  // localhost, both ways.
  const toDpu = await fetchIn(app, `http://127.0.0.1:${DPU_PORT}/`);
  assert.equal(toDpu, { ok: true, out: 'from-dpu' }, 'app (host) reaches proxy (DPU) on 127.0.0.1');
  const toHost = await fetchIn(proxy, `http://127.0.0.1:${HOST_PORT}/`);
  assert.equal(toHost, { ok: true, out: 'from-host' }, 'proxy (DPU) reaches app (host) on 127.0.0.1');

  // The pod IP from the node reaches the DPU-owned port, and the host's own.
  assert.is(await httpGet(`http://${podIp}:${DPU_PORT}/`), 'from-dpu');
  assert.is(await httpGet(`http://${podIp}:${HOST_PORT}/`), 'from-host');

  // Egress from the DPU container leaves through the host half as the pod IP.
  const echo = await peerEcho();
  try {
    const r = await cri.execSync(proxy, ['sh', '-c', `nc -w 3 ${NODE_BRIDGE_IP} ${echo.port} </dev/null`], 10);
    assert.is(r.exitCode, 0, `nc from proxy to the node: ${r.stderr.toString()}`);
    assert.is(r.stdout.toString().trim(), podIp, 'the node sees the DPU container\'s connection from the pod IP');
    assert.equal(echo.peers, [podIp]);
  } finally {
    await echo.close();
  }

  // A listener that appears later in the DPU half is reachable from the host half within a second.
  const started = await cri.execSync(proxy, ['sh', '-c', `mkdir -p /later && echo later > /later/index.html && httpd -p ${LATER_PORT} -h /later`]);
  assert.is(started.exitCode, 0, started.stderr.toString());
  const t0 = Date.now();
  const later = await fetchIn(app, `http://127.0.0.1:${LATER_PORT}/`, 3);
  const elapsed = Date.now() - t0;
  assert.equal(later, { ok: true, out: 'later' }, 'app reaches the later listener');
  assert.ok(elapsed < 1000, `the later listener was reachable after ${elapsed} ms (exec included)`);

  await removePod(podId);
  await noLeaks('the split pod', podId);
});

/** An HTTP GET written on a port-forward stream; the body of the answer. */
async function getThrough(stream: Duplex): Promise<string> {
  stream.write('GET / HTTP/1.0\r\nHost: localhost\r\n\r\n');
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  const answer = Buffer.concat(chunks).toString();
  return answer.slice(answer.indexOf('\r\n\r\n') + 4).trim();
}

test('PortForward (crictl port-forward) reaches a port on the DPU and one on the host', async () => {
  const pod = splitPod('split-forward', { 'heteropod.io/offload': 'proxy', 'heteropod.io/ports': `proxy=${DPU_PORT}` });
  const podId = await cri.runPodSandbox(pod, 'heteropod');
  await run(podId, pod, 'app', httpd('from-host', HOST_PORT));
  const proxy = await run(podId, pod, 'proxy', httpd('from-dpu', DPU_PORT));
  await waitFor('proxy to listen', 5000, async () => (await cri.execSync(proxy, ['sh', '-c', `netstat -ltn | grep -q :${DPU_PORT}`])).exitCode === 0 || undefined);

  // The runtime dials localhost:PORT in the pod's (host half) namespace.
  assert.is(await getThrough(await dialPortForward(cri, podId, DPU_PORT)), 'from-dpu');
  assert.is(await getThrough(await dialPortForward(cri, podId, HOST_PORT)), 'from-host');
  // Nothing listens there: the runtime's error comes back, naming the port.
  const refused = await getThrough(await dialPortForward(cri, podId, 9)).then(
    () => null,
    (e: Error) => e,
  );
  assert.ok(refused, 'a forward to a closed port fails');
  assert.match(refused!.message, 'port 9');

  // The command a user runs: `heteropod cri port-forward POD 0:PORT`, then plain HTTP to the local port.
  const child = spawn(path.join(REPO_ROOT, 'bin', 'heteropod'), ['cri', 'port-forward', podId.slice(0, 12), `0:${DPU_PORT}`], {
    env: { ...process.env, CONTAINER_RUNTIME_ENDPOINT: TESTBED.endpoint },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  try {
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const local = await waitFor('port-forward to listen', 10_000, () => /Forwarding from 127\.0\.0\.1:(\d+) -> 15006/.exec(out)?.[1]);
    assert.is(await httpGet(`http://127.0.0.1:${local}/`), 'from-dpu');
    assert.is(await httpGet(`http://127.0.0.1:${local}/`), 'from-dpu', 'a second connection, a second forward');
  } finally {
    child.kill('SIGINT');
    await new Promise((r) => child.once('exit', r));
  }
  await removePod(podId);
  await noLeaks('the forwarded pod', podId);
});

test('a malformed heteropod.io/ports fails RunPodSandbox naming it', async () => {
  const pod = splitPod('bad-ports', { 'heteropod.io/offload': 'proxy', 'heteropod.io/ports': 'app=80' });
  const err = await cri.runPodSandbox(pod, 'heteropod').then(
    () => null,
    (e: Error) => e,
  );
  assert.ok(err, 'RunPodSandbox fails');
  assert.match(err!.message, 'heteropod.io/ports');
  assert.match(err!.message, 'app=80');
  await waitFor('the failed sandbox to go', 20_000, async () => (await ownPods(bed)).length === 0 || undefined).catch(() => undefined);
  for (const s of await ownPods(bed)) await removePod(s.id as string);
  await noLeaks('the refused pod', 'none');
});

test('the shim killed: the hook and delete remove the split network', async () => {
  const pod = splitPod('split-killed', { 'heteropod.io/offload': 'proxy' });
  const podId = await cri.runPodSandbox(pod, 'heteropod');
  const app = await run(podId, pod, 'app', httpd('from-host', HOST_PORT));
  const proxy = await run(podId, pod, 'proxy', httpd('from-dpu', DPU_PORT));
  assert.equal(await fetchIn(app, `http://127.0.0.1:${DPU_PORT}/`), { ok: true, out: 'from-dpu' }, 'a discovered DPU port crosses');
  assert.ok(proxy);

  const shim = listProcesses().filter((p) => p.cmdline.startsWith('containerd-shim-heteropod-v2') && p.cmdline.includes(`-id ${podId}`));
  assert.is(shim.length, 1);
  process.kill(shim[0].pid, 'SIGKILL');
  // containerd runs `delete` for each task (the agent removes the DPU half) and runc
  // deletes the sandbox (its poststop hook runs).
  // (Their exit codes are offload.test's: here, with listeners and an exec before
  // the kill, containerd 1.6 sometimes reports 255 for both.)
  for (const id of [proxy, app]) await waitForContainerState(cri, id, 'CONTAINER_EXITED');
  await removePod(podId);
  await noLeaks('the pod whose shim was killed', podId);
});

test.run();
