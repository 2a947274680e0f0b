// The node daemon on the test bed: one process serves every offloading pod, and
// a crash of it disturbs no running pod. runc's counterpart: containerd-shim-runc-v2
// has no node-wide process whose crash could touch a pod, so each check below is
// what a pod under runc would show across the same minutes.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import type { CriClient } from '../../src/cri/client';
import type { CriObject } from '../../src/cri/config';
import { readCriLog } from '../../src/cri/logs';
import { DPU } from '../../src/dpu/paths';
import { podWindowPath } from '../../src/netns/half';
import { httpGet } from '../../src/testbed/http';
import { waitFor } from '../../src/testbed/proc';
import { processState } from '../../src/common/processes';
import { socketAnswers } from '../../src/common/sockets';
import { TESTBED } from '../../src/testbed/paths';
import { nodeDaemonArgv, nodeDaemonPids, startNodeDaemon, stopNodeDaemon } from '../../src/testbed/testbed';
import { readStats } from '../../src/xpu/window';
import { agentPods, containerPids, memoryCgroup } from '../lib/dpu';
import { xpuThreadNames } from '../lib/netns';
import { testbedShims } from '../lib/shim';
import { httpd, OWN_PID_NAMESPACE } from '../lib/split';
import { Bed, podLeaks, containerConfig, podConfig, removeOwnPods, startBed, stopBed, waitForContainerState } from '../lib/testbed';

let bed: Bed;
let cri: CriClient;

test.before(async () => {
  bed = await startBed();
  cri = bed.cri;
});

test.after.each(async () => {
  // A test that failed half way may have left the daemon down.
  if (nodeDaemonPids().length === 0) await startNodeDaemon();
  await removeOwnPods(bed);
});

test.after(async () => {
  const leaks = await stopBed(bed);
  assert.equal(leaks, [], `the test bed left:\n${leaks.join('\n')}`);
});

async function noLeaks(when: string): Promise<void> {
  const left = await podLeaks(bed);
  assert.equal(left, [], `${when} left behind:\n${left.join('\n')}`);
}

function offloadPod(name: string, annotations: Record<string, string>): CriObject {
  return podConfig(bed, name, { annotations, linux: OWN_PID_NAMESPACE });
}

async function start(podId: string, pod: CriObject, name: string, command: string[]): Promise<string> {
  const id = await cri.createContainer(podId, containerConfig(name, command, { linux: OWN_PID_NAMESPACE }), pod);
  await cri.startContainer(id);
  return id;
}

const podIp = async (podId: string): Promise<string> => (((await cri.podSandboxStatus(podId)).status as CriObject).network as CriObject).ip as string;

function logLines(file: string): string[] {
  return fs.existsSync(file) ? readCriLog(file).map((r) => r.line) : [];
}

async function logFile(id: string): Promise<string> {
  return ((await cri.containerStatus(id)).status as CriObject).log_path as string;
}

/** ctr against the test bed's containerd, in CRI's namespace: what a node operator would run. */
const ctr = (args: string[]): string => execFileSync('ctr', ['-a', TESTBED.socket, '-n', 'k8s.io', ...args], { encoding: 'utf8', timeout: 10_000 });

const onDpu = (id: string): boolean => containerPids(id).some((pid) => memoryCgroup(pid).startsWith(`/${DPU.cgroupName}/`));

test('50 offloading pods at once: one node daemon, no process of ours per pod but the C proxy; all reachable over their XPU links; removed with nothing left', async () => {
  const PODS = 50;
  const PORT = 8080;
  const pods: { i: number; id: string; sidecar: string }[] = [];
  const startOne = async (i: number): Promise<void> => {
    const pod = offloadPod(`many-${i}`, { 'heteropod.io/offload': 'sidecar', 'heteropod.io/ports': `sidecar=${PORT}`, 'heteropod.io/offload-policy': 'require' });
    const id = await cri.runPodSandbox(pod, 'heteropod');
    const sidecar = await start(id, pod, 'sidecar', httpd(`pod-${i}`, PORT));
    pods.push({ i, id, sidecar });
  };
  // Four at a time, as a kubelet starting a node's pods would.
  for (let i = 0; i < PODS; i += 4) await Promise.all([0, 1, 2, 3].filter((k) => i + k < PODS).map((k) => startOne(i + k)));
  assert.is(pods.length, PODS);
  assert.is(nodeDaemonPids().length, 1, 'one node daemon');
  // Per pod on the host: runc's shim and our C proxy; no Node.js process.
  const shims = testbedShims().filter((s) => pods.some((p) => s.cmdline.includes(`-id ${p.id}`)));
  assert.is(shims.length, 2 * PODS, `two shim processes per pod:\n${shims.map((s) => s.cmdline).join('\n')}`);
  for (const s of shims) assert.not.ok(fs.readlinkSync(`/proc/${s.pid}/exe`).endsWith('/node'), `no Node.js per pod: ${s.cmdline}`);
  for (const p of pods) {
    await waitForContainerState(cri, p.sidecar, 'CONTAINER_RUNNING');
    assert.ok(onDpu(p.sidecar), `pod ${p.id}: its sidecar on the DPU`);
    assert.ok(readStats(podWindowPath(p.id)).linkUp, `pod ${p.id}: its XPU link up`);
  }
  // The node reaches each pod's DPU-owned port: host half, XPU link, DPU half.
  for (const p of pods) {
    const ip = await podIp(p.id);
    const page = await waitFor(`pod ${p.i} to answer on ${ip}:${PORT}`, 10_000, () => httpGet(`http://${ip}:${PORT}/`).catch(() => undefined));
    assert.is(page.trim(), `pod-${p.i}`);
  }
  assert.is((await agentPods()).filter((a) => pods.some((p) => p.id === a.pod_id)).length, PODS);
  await removeOwnPods(bed);
  await noLeaks('50 pods');
});

/** A TCP connection the test holds to an echo server: what it sent, and what came back. */
function echoClient(host: string, port: number): Promise<{ send: (s: string) => void; received: () => string; close: () => void }> {
  return new Promise((resolve, reject) => {
    let got = '';
    const sock = net.connect({ host, port }, () => resolve({ send: (s) => void sock.write(s), received: () => got, close: () => sock.destroy() }));
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => (got += d));
    sock.once('error', reject);
  });
}

test('kill -9 of the node daemon under load: pods run on; the TCP connection across the XPU link, exec, logs, stats and an exit during the outage all come back; a pod started meanwhile is placed per its policy; the sandbox\'s own task answers throughout', async () => {
  const ECHO = 9000;
  const pod = offloadPod('outage', { 'heteropod.io/offload': 'echo,counter,quitter', 'heteropod.io/ports': `echo=${ECHO}` });
  const podId = await cri.runPodSandbox(pod, 'heteropod');
  const app = await start(podId, pod, 'app', ['sleep', '1000']);
  const echo = await start(podId, pod, 'echo', ['nc', '-l', '-p', String(ECHO), '-e', 'cat']);
  const counter = await start(podId, pod, 'counter', ['sh', '-c', 'i=0; while [ $i -lt 100000 ]; do echo line-$i; i=$((i+1)); usleep 100000; done']);
  for (const id of [app, echo, counter]) await waitForContainerState(cri, id, 'CONTAINER_RUNNING');
  assert.ok(onDpu(echo) && onDpu(counter), 'echo and counter on the DPU');
  const ip = await podIp(podId);
  const conn = await waitFor('the echo server to accept', 10_000, () => echoClient(ip, ECHO).catch(() => undefined));
  conn.send('before\n');
  await waitFor('the echo before the outage', 5000, () => conn.received().includes('before\n') || undefined);
  const counterLog = await logFile(counter);
  await waitFor('the counter to log', 10_000, () => logLines(counterLog).length >= 5 || undefined);
  // Exits about 3 s into the outage, after its last lines.
  const quitter = await start(podId, pod, 'quitter', ['sh', '-c', 'sleep 4; echo last-1; echo last-2; echo last-3; exit 7']);
  await waitForContainerState(cri, quitter, 'CONTAINER_RUNNING');
  const hostPids = [app, podId].map((id) => containerPids(id)).flat();

  const [daemon] = nodeDaemonPids();
  process.kill(daemon, 'SIGKILL');
  await waitFor('the node daemon to be gone', 5000, () => nodeDaemonPids().length === 0 || undefined);
  conn.send('during\n');
  // Pods started while it is down: prefer runs on the host, require is refused.
  const preferPod = offloadPod('outage-prefer', { 'heteropod.io/offload': 'sidecar' });
  const preferId = await cri.runPodSandbox(preferPod, 'heteropod');
  const preferSidecar = await start(preferId, preferPod, 'sidecar', ['sleep', '1000']);
  await waitForContainerState(cri, preferSidecar, 'CONTAINER_RUNNING');
  assert.not.ok(onDpu(preferSidecar), 'prefer: the sidecar runs on the host while the node daemon is down');
  const refused = await cri.runPodSandbox(offloadPod('outage-require', { 'heteropod.io/offload': 'sidecar', 'heteropod.io/offload-policy': 'require' }), 'heteropod').then(
    () => '',
    (err: Error) => err.message,
  );
  assert.match(refused, /heteropod\.io\/offload-policy=require: the HeteroPod node daemon is not running/);
  await new Promise((r) => setTimeout(r, 4000)); // the quitter exits meanwhile
  // Nothing of the pod stopped: its host and DPU processes are the same.
  for (const pid of hostPids) assert.ok(fs.existsSync(`/proc/${pid}`), `host process ${pid} still runs`);
  assert.is((((await cri.containerStatus(counter)).status as CriObject).state), 'CONTAINER_RUNNING');
  // The sandbox's task answers without the daemon (only its Create and Delete
  // pass through it): its state and metrics come from runc's shim.
  assert.match(ctr(['task', 'ls']), new RegExp(`^${podId}\\s+${containerPids(podId)[0]}\\s+RUNNING\\s*$`, 'm'), 'the sandbox task RUNNING during the outage');
  assert.match(ctr(['task', 'metrics', podId]), /memory\.usage_in_bytes/, 'the sandbox\'s metrics during the outage');

  await startNodeDaemon();
  // The connection carried data across the outage.
  // TCP resends what was sent during the outage on its own clock, whose gaps double
  // (past 12 s after six tries, more on a busy machine): the wait allows for one
  // more gap after the link is back.
  await waitFor('the echo of what was sent during the outage', 60_000, () => conn.received().includes('during\n') || undefined);
  conn.send('after\n');
  await waitFor('the echo after the outage', 10_000, () => conn.received().includes('after\n') || undefined);
  assert.is(conn.received(), 'before\nduring\nafter\n');
  conn.close();
  // The exit during the outage, with its code and its last lines.
  const exited = await waitForContainerState(cri, quitter, 'CONTAINER_EXITED', 30_000);
  assert.is(exited.exit_code, 7);
  await waitFor('the quitter\'s last lines', 10_000, async () => {
    const lines = logLines(await logFile(quitter));
    return ['last-1', 'last-2', 'last-3'].every((l) => lines.includes(l)) || undefined;
  });
  // exec and stats on the DPU again.
  const r = await cri.execSync(counter, ['sh', '-c', 'echo exec-ok; exit 3']);
  assert.equal([r.exitCode, r.stdout.toString()], [3, 'exec-ok\n']);
  const stats = await cri.containerStats(counter);
  const memory = ((stats.memory ?? {}) as CriObject).working_set_bytes as CriObject | undefined;
  assert.ok(Number(memory?.value ?? 0) > 0, `stats of the DPU container: ${JSON.stringify(stats.memory)}`);
  // No line of the counter lost: consecutive from line-0 past the outage.
  const lines = await waitFor('the counter to log past the outage', 20_000, () => {
    const l = logLines(counterLog);
    return l.length >= 120 ? l : undefined;
  });
  // Every line, in order. A chunk the daemon wrote but had not acknowledged when
  // it was killed comes again from the agent: at most that one line twice.
  const unique = lines.filter((l, i) => l !== lines[i - 1]);
  unique.forEach((l, i) => assert.is(l, `line-${i}`, `counter line ${i}`));
  assert.ok(lines.length - unique.length <= 1, `at most one line twice: ${lines.length - unique.length}`);
  await removeOwnPods(bed);
  await noLeaks('the outage');
});

/**
 * The node daemon started as startNodeDaemon starts it, but under a parent that
 * never reaps it, as an init that reaps late (this machine's does): once
 * stopped, it stays a zombie while its successor takes its pods over. The
 * parent is the caller's to kill.
 */
async function startUnreapedNodeDaemon(): Promise<{ parent: ChildProcess; pid: number }> {
  const quoted = nodeDaemonArgv().map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const parent = spawn('sh', ['-c', `${quoted} >>'${TESTBED.nodeLogFile}' 2>&1 & echo $!; exec sleep 600`], { cwd: TESTBED.runDir, stdio: ['ignore', 'pipe', 'inherit'] });
  const pid = await new Promise<number>((resolve) => parent.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))));
  await waitFor('the node daemon to answer', 15_000, () => socketAnswers(TESTBED.nodeSocket).then((ok) => ok || undefined));
  return { parent, pid };
}

test('an upgrade: the old node daemon stopped and the new one started at once (inside the second a dead host end\'s heartbeat stays fresh, the old one not yet reaped), from host ends its threads pump (host_mode "sleep", the earlier default) to host ends the DPU serves; the TCP connection across the XPU link carries data on, exec works', async () => {
  const ECHO = 9000;
  const config = fs.readFileSync(TESTBED.shimConfig, 'utf8');
  let conn: Awaited<ReturnType<typeof echoClient>> | undefined;
  let unreaped: ChildProcess | undefined;
  try {
    await stopNodeDaemon();
    fs.writeFileSync(TESTBED.shimConfig, `${config}\n[xpu]\n  host_mode = "sleep"\n`);
    const started = await startUnreapedNodeDaemon();
    unreaped = started.parent;
    const pod = offloadPod('upgrade', { 'heteropod.io/offload': 'echo', 'heteropod.io/ports': `echo=${ECHO}` });
    const podId = await cri.runPodSandbox(pod, 'heteropod');
    const echo = await start(podId, pod, 'echo', ['nc', '-l', '-p', String(ECHO), '-e', 'cat']);
    await waitForContainerState(cri, echo, 'CONTAINER_RUNNING');
    assert.ok(onDpu(echo), 'echo on the DPU');
    const old = started.pid;
    assert.equal(nodeDaemonPids(), [old]);
    // Other offloading pods on the bed (a user's) have links of their own: each
    // adds its threads, so the names are looked for, not counted.
    const pumps = (names: string[]): string[] => names.filter((n) => n === 'xpu-ring2tap' || n === 'xpu-tap2ring');
    assert.equal([...new Set(pumps(xpuThreadNames(old)))], ['xpu-ring2tap', 'xpu-tap2ring'], 'the old daemon pumps the link\'s host end');
    const c = await waitFor('the echo server to accept', 10_000, async () => echoClient(await podIp(podId), ECHO).catch(() => undefined));
    conn = c;
    c.send('before\n');
    await waitFor('the echo before the upgrade', 5000, () => c.received().includes('before\n') || undefined);

    // The upgrade: the old daemon stopped as systemd stops it, the new one started with the new default.
    await stopNodeDaemon();
    assert.is(processState(old), 'Z', 'the old daemon has exited, not yet reaped');
    fs.writeFileSync(TESTBED.shimConfig, config);
    c.send('during\n');
    await startNodeDaemon();
    const [now] = nodeDaemonPids();
    await waitFor('the echo of what was sent during the upgrade', 60_000, () => c.received().includes('during\n') || undefined);
    c.send('after\n');
    await waitFor('the echo after the upgrade', 10_000, () => c.received().includes('after\n') || undefined);
    assert.is(c.received(), 'before\nduring\nafter\n');
    assert.equal(pumps(xpuThreadNames(now)), [], 'the new daemon\'s host ends are served: no pump thread');
    assert.ok(xpuThreadNames(now).includes('xpu-monitor'), 'the new daemon watches the link');
    assert.ok(readStats(podWindowPath(podId)).linkUp, 'the link is up');
    const r = await cri.execSync(echo, ['sh', '-c', 'echo exec-ok']);
    assert.equal([r.exitCode, r.stdout.toString()], [0, 'exec-ok\n']);
    await removeOwnPods(bed);
    await noLeaks('the upgrade');
  } finally {
    conn?.close(); // an open connection would keep the test's process alive
    unreaped?.kill('SIGKILL'); // the old daemon is reaped with it
    if (fs.readFileSync(TESTBED.shimConfig, 'utf8') !== config) {
      await stopNodeDaemon();
      fs.writeFileSync(TESTBED.shimConfig, config);
    }
  }
});

test.run();
