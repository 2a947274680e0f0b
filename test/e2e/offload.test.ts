// Offload, end to end, with the test bed's real containerd, runc, CNI and the
// emulated DPU: a pod whose heteropod.io/offload names one of its two containers
// runs that one on the DPU (its processes in the DPU's cgroup and the pod's DPU
// half network namespace, checked from /proc) and the other on the host, and
// everything a crictl user does works on both. Then the faults: a malformed
// annotation, the agent unreachable under both policies, an agent restart while
// an offloaded container runs, a crash. A leak check on both sides after each.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { CriClient } from '../../src/cri/client';
import type { CriObject } from '../../src/cri/config';
import { execStream } from '../../src/cri/exec-stream';
import { readCriLog } from '../../src/cri/logs';
import * as dpu from '../../src/dpu/dpu';
import { DPU } from '../../src/dpu/paths';
import { TESTBED } from '../../src/testbed/paths';
import { killAndWait, listProcesses, waitFor } from '../../src/testbed/proc';
import { agentPods, containerPids, memoryCgroup, netnsInode } from '../lib/dpu';
import { runUnderPty } from '../lib/shim';
import { assertNoPodLeaks, Bed, containerConfig, heteropod, ownPods, podConfig, useTestBed, waitForContainerState } from '../lib/testbed';

let bed: Bed;
let cri: CriClient;

useTestBed(test, (b) => {
  bed = b;
  cri = b.cri;
});

const noLeaks = (when: string): Promise<void> => assertNoPodLeaks(bed, when);

// As kubelet makes them: each container has its own process namespace (CRI's
// default, POD, shares the sandbox's, which a DPU container cannot join).
const OWN_PID_NAMESPACE = { security_context: { namespace_options: { pid: 'CONTAINER' } } };

function offloadPod(name: string, annotations: Record<string, string>): CriObject {
  return podConfig(bed, name, { annotations, linux: OWN_PID_NAMESPACE });
}

async function run(podId: string, pod: CriObject, name: string, command: string[], extra: CriObject = {}): Promise<string> {
  const id = await cri.createContainer(podId, containerConfig(name, command, { linux: OWN_PID_NAMESPACE, ...extra }), pod);
  await cri.startContainer(id);
  return id;
}

async function logOf(id: string, want: string[]): Promise<string[]> {
  const status = (await cri.containerStatus(id)).status as CriObject;
  const file = status.log_path as string;
  return waitFor(`${want.join(', ')} in ${file}`, 10_000, () => {
    const lines = fs.existsSync(file) ? readCriLog(file).map((r) => `${r.stream} ${r.line}`) : [];
    return want.every((w) => lines.includes(w)) ? lines : undefined;
  });
}

async function removePod(podId: string): Promise<void> {
  await cri.stopPodSandbox(podId);
  await cri.removePodSandbox(podId);
}

async function placements(): Promise<Record<string, { where: string; note: string }>> {
  const r = await heteropod(['pods', '-o', 'json']);
  assert.is(r.code, 0, r.stderr);
  const out: Record<string, { where: string; note: string }> = {};
  for (const row of JSON.parse(r.stdout) as { containerId: string; where: string; note: string }[]) if (row.containerId) out[row.containerId] = row;
  return out;
}

const LOOP = ['sh', '-c', 'echo "$0-out"; echo "$0-err" >&2; exec sleep 1000'];

test('one of two containers on the DPU: placement, logs, exec, stats, stop, removal', async () => {
  const pod = offloadPod('split', { 'heteropod.io/offload': 'sidecar' });
  const podId = await cri.runPodSandbox(pod, 'heteropod');
  const app = await run(podId, pod, 'app', [...LOOP, 'app']);
  const sidecar = await run(podId, pod, 'sidecar', [...LOOP, 'sidecar']);
  await waitForContainerState(cri, sidecar, 'CONTAINER_RUNNING');

  // Where the processes are, from /proc.
  const [dpuPod] = (await agentPods()).filter((p) => p.pod_id === podId);
  assert.ok(dpuPod, 'the agent has the pod\'s DPU half');
  const sidecarPids = containerPids(sidecar);
  const appPids = containerPids(app);
  const pausePids = containerPids(podId);
  assert.ok(sidecarPids.length > 0 && appPids.length > 0 && pausePids.length > 0);
  for (const pid of sidecarPids) {
    assert.ok(memoryCgroup(pid).startsWith(`/${DPU.cgroupName}/`), `sidecar pid ${pid} in the DPU's cgroup: ${memoryCgroup(pid)}`);
    assert.is(netnsInode(pid), dpuPod.netns_inode, 'sidecar in the pod\'s DPU half');
  }
  for (const pid of appPids) {
    assert.not.ok(memoryCgroup(pid).includes(DPU.cgroupName), `app pid ${pid} on the host: ${memoryCgroup(pid)}`);
    assert.is(netnsInode(pid), netnsInode(pausePids[0]), 'app in the pod\'s host netns');
  }
  const where = await placements();
  assert.is(where[sidecar].where, 'dpu');
  assert.is(where[app].where, 'host');

  // Logs: both streams of both containers reach the CRI log files.
  await logOf(sidecar, ['stdout sidecar-out', 'stderr sidecar-err']);
  await logOf(app, ['stdout app-out', 'stderr app-err']);

  // ExecSync runs in the container, where it is, with output and exit code.
  for (const [id, inDpu] of [[sidecar, true], [app, false]] as const) {
    const r = await cri.execSync(id, ['sh', '-c', 'echo to-out; echo to-err >&2; grep -c heteropod-dpu /proc/self/cgroup; exit 7']);
    assert.is(r.exitCode, 7);
    const [first, count, ...rest] = r.stdout.toString().split('\n');
    assert.is(first, 'to-out');
    assert.equal(rest, ['']);
    assert.is(Number(count) > 0, inDpu, `exec in the ${inDpu ? 'DPU' : 'host'} container sees cgroups ${count}`);
    assert.is(r.stderr.toString(), 'to-err\n');
  }
  // A longer output crosses in many chunks, in order.
  const big = await cri.execSync(sidecar, ['sh', '-c', 'seq 1 20000']);
  assert.is(big.stdout.toString().split('\n').filter(Boolean).length, 20000);
  assert.ok(big.stdout.toString().endsWith('19999\n20000\n'));

  // Stats, read on the DPU for the sidecar.
  const stats = (await cri.containerStats(sidecar)) as CriObject;
  const memory = ((stats.memory ?? {}) as CriObject).working_set_bytes as CriObject | undefined;
  assert.ok(Number(memory?.value ?? 0) > 0, `sidecar memory working set: ${JSON.stringify(stats.memory)}`);
  assert.ok(((stats.cpu ?? {}) as CriObject).usage_core_nano_seconds !== undefined, 'sidecar cpu usage reported');
  const listed = await cri.listContainerStats();
  assert.ok(listed.some((s) => ((s.attributes ?? {}) as CriObject).id === sidecar));

  // Stop with a grace period: sleep as pid 1 ignores SIGTERM, so both end by SIGKILL.
  await cri.stopContainer(sidecar, 1);
  await cri.stopContainer(app, 1);
  const codes = await Promise.all([sidecar, app].map(async (id) => ((await waitForContainerState(cri, id, 'CONTAINER_EXITED')) as CriObject).exit_code));
  assert.equal(codes, [137, 137], `exit codes of sidecar (DPU) and app (host): ${codes}`);
  await cri.removeContainer(sidecar);
  await cri.removeContainer(app);
  assert.equal((await agentPods()).find((p) => p.pod_id === podId)?.containers, [], 'the DPU container is gone with its removal');
  await removePod(podId);
  assert.not.ok((await agentPods()).some((p) => p.pod_id === podId), 'pod removal removes its DPU half');
  await noLeaks('the split pod');
});

test('an exec with a terminal in an offloaded container (ctr task exec -t under a pseudo-terminal, ResizePty)', async () => {
  const pod = offloadPod('tty', { 'heteropod.io/offload': 'shell' });
  const podId = await cri.runPodSandbox(pod, 'heteropod');
  const id = await run(podId, pod, 'shell', ['sleep', '3600']);
  await waitForContainerState(cri, id, 'CONTAINER_RUNNING');
  const fifoDir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-e2e-fifo-'));
  try {
    const ctr = `ctr -a ${TESTBED.socket} -n ${TESTBED.namespace} task exec -t --fifo-dir ${fifoDir} --exec-id tty-dpu`;
    // The size arrives by ResizePty after the process starts; the process waits for it.
    const inside = 'i=0; while [ $i -lt 100 ]; do s=$(stty size 2>/dev/null); case "$s" in [1-9]*" "[1-9]*) break;; esac; i=$((i + 1)); sleep 0.1; done; echo "size $s"; tty; [ -t 0 ] && echo stdin-is-a-tty; grep -c heteropod-dpu /proc/self/cgroup; exit 5';
    const r = await runUnderPty(`stty rows 33 cols 77; ${ctr} ${id} sh -c '${inside}'`);
    const lines = r.output.split('\n').map((l) => l.replace(/\0/g, '').trim());
    assert.is(r.code, 5, r.output);
    assert.ok(lines.includes('size 33 77'), r.output);
    assert.ok(lines.includes('stdin-is-a-tty'), r.output);
    assert.ok(lines.some((l) => /^\/dev\/pts\/\d+$/.test(l)), r.output);
  } finally {
    fs.rmSync(fifoDir, { recursive: true, force: true });
  }
  await cri.stopContainer(id, 0);
  await cri.removeContainer(id);
  await removePod(podId);
  await noLeaks('the terminal exec');
});

test('CRI streaming Exec (crictl exec -it) in an offloaded container: terminal, size, input, exit codes', async () => {
  const pod = offloadPod('exec-stream', { 'heteropod.io/offload': 'sidecar' });
  const podId = await cri.runPodSandbox(pod, 'heteropod');
  const id = await run(podId, pod, 'sidecar', ['sleep', '1000']);
  await waitForContainerState(cri, id, 'CONTAINER_RUNNING');

  // A terminal of the size asked for (it arrives by resize after the start), on the DPU.
  // With stdin, as `crictl exec -it` asks (containerd 1.6 relays no terminal output
  // without it, under runc as well).
  let out = '';
  const tty = await execStream(cri, id, ['sh', '-c', 'sleep 0.5; tty; stty size; grep -c heteropod-dpu /proc/self/cgroup; exit 4'], {
    tty: true,
    stdin: new PassThrough(),
    stdout: (d) => (out += d.toString()),
    size: { columns: 111, rows: 33 },
  });
  assert.is(await tty.exitCode, 4, out);
  const lines = out.split(/\r?\n/);
  assert.ok(lines.some((l) => /^\/dev\/pts\/\d+$/.test(l)), out);
  assert.ok(lines.includes('33 111'), `stty size: ${out}`);
  assert.ok(lines.some((l) => /^[1-9]\d*$/.test(l)), `runs in the DPU's cgroup: ${out}`);

  // Without a terminal: input reaches the command, stdout and stderr stay apart.
  let o = '';
  let e = '';
  const input = new PassThrough();
  const plain = await execStream(cri, id, ['sh', '-c', 'read line; echo "got $line"; echo err >&2'], {
    tty: false,
    stdin: input,
    stdout: (d) => (o += d.toString()),
    stderr: (d) => (e += d.toString()),
  });
  input.write('hello\n');
  assert.is(await plain.exitCode, 0);
  assert.is(o, 'got hello\n');
  assert.is(e, 'err\n');

  // The command a user types.
  const r = await heteropod(['cri', 'exec', '-it', id.slice(0, 12), 'sh', '-c', 'tty; exit 6']);
  assert.is(r.code, 6, r.stderr);
  assert.match(r.stdout, /\/dev\/pts\/\d+/);

  await removePod(podId);
  await noLeaks('the streaming exec');
});

test('an offloaded container that crashes: its exit code reaches the host, its logs stay', async () => {
  const pod = offloadPod('crash', { 'heteropod.io/offload': 'crasher', 'heteropod.io/offload-policy': 'require' });
  const podId = await cri.runPodSandbox(pod, 'heteropod');
  const id = await run(podId, pod, 'crasher', ['sh', '-c', 'echo about to fail; echo reason >&2; exit 3']);
  const status = await waitForContainerState(cri, id, 'CONTAINER_EXITED');
  assert.is(status.exit_code, 3);
  await logOf(id, ['stdout about to fail', 'stderr reason']);
  assert.is((await placements())[id].where, 'dpu');
  await cri.removeContainer(id);
  await removePod(podId);
  await noLeaks('the crashed container');
});

test('malformed annotations fail RunPodSandbox naming the annotation', async () => {
  const bad: [Record<string, string>, string][] = [
    [{ 'heteropod.io/offload': 'Side_Car' }, 'heteropod.io/offload'],
    [{ 'heteropod.io/offload': 'proxy', 'heteropod.io/offload-policy': 'always' }, 'heteropod.io/offload-policy'],
  ];
  for (const [annotations, name] of bad) {
    const err = await cri.runPodSandbox(offloadPod('bad', annotations), 'heteropod').then(
      () => null,
      (e: Error) => e,
    );
    assert.ok(err, `RunPodSandbox with ${JSON.stringify(annotations)} must fail`);
    assert.match(err!.message, name);
  }
  await waitFor('failed sandboxes to be gone', 20_000, async () => (await ownPods(bed)).length === 0).catch(() => undefined);
  for (const p of await ownPods(bed)) await removePod(String(p.id));
  await noLeaks('the refused pods');
});

test('agent unreachable: require fails with a clear error, prefer runs on the host and says so', async () => {
  const pid = dpu.agentPid();
  assert.ok(pid);
  await killAndWait([pid!], 5000);
  try {
    const err = await cri.runPodSandbox(offloadPod('strict', { 'heteropod.io/offload': 'sidecar', 'heteropod.io/offload-policy': 'require' }), 'heteropod').then(
      () => null,
      (e: Error) => e,
    );
    assert.ok(err, 'require without an agent must fail');
    assert.match(err!.message, 'heteropod.io/offload-policy=require');
    assert.match(err!.message, /DPU agent at 192\.168\.100\.2:7443 unreachable/);
    for (const p of await ownPods(bed)) await removePod(String(p.id));

    const pod = offloadPod('lenient', { 'heteropod.io/offload': 'sidecar' });
    const podId = await cri.runPodSandbox(pod, 'heteropod');
    const id = await run(podId, pod, 'sidecar', [...LOOP, 'sidecar']);
    await logOf(id, ['stdout sidecar-out']);
    for (const p of containerPids(id)) assert.not.ok(memoryCgroup(p).includes(DPU.cgroupName), 'fell back to the host');
    const row = (await placements())[id];
    assert.is(row.where, 'host');
    assert.match(row.note, 'offload fallback');
    assert.match(row.note, 'unreachable');
    await cri.stopContainer(id, 0);
    await cri.removeContainer(id);
    await removePod(podId);
  } finally {
    await dpu.up();
  }
  await noLeaks('the fallback pod');
});

test('the pod\'s shim (its proxy) killed: containerd reports the tasks exited and the pod\'s DPU half is removed', async () => {
  const pod = offloadPod('killed', { 'heteropod.io/offload': 'worker' });
  const podId = await cri.runPodSandbox(pod, 'heteropod');
  const worker = await run(podId, pod, 'worker', ['sleep', '1000']);
  const app = await run(podId, pod, 'app', ['sleep', '1000']);
  await waitForContainerState(cri, worker, 'CONTAINER_RUNNING');
  const shim = listProcesses().filter((p) => p.cmdline.startsWith('containerd-shim-heteropod-v2') && p.cmdline.includes(`-id ${podId}`));
  assert.is(shim.length, 1);
  process.kill(shim[0].pid, 'SIGKILL');
  // Both report what containerd reports for a task whose shim died (as under runc).
  const codes = await Promise.all([worker, app].map(async (id) => (await waitForContainerState(cri, id, 'CONTAINER_EXITED')).exit_code));
  assert.is(codes[0], codes[1], `offloaded and host container report alike: ${codes}`);
  await waitFor('the DPU half to be removed', 15_000, async () => !(await agentPods()).some((p) => p.pod_id === podId));
  // Killed with its pod; a moment may pass before the last is reaped.
  await waitFor('no process of the offloaded container to be left', 5000, () => containerPids(worker).length === 0).catch(() => undefined);
  assert.equal(containerPids(worker), [], 'no process of the offloaded container is left');
  for (const id of [worker, app]) await cri.removeContainer(id);
  await removePod(podId);
  await noLeaks('the pod whose shim was killed');
});

test('agent restarted while an offloaded container runs: it keeps running, exec works, a later exit is reported', async () => {
  const pod = offloadPod('restart', { 'heteropod.io/offload': 'worker' });
  const podId = await cri.runPodSandbox(pod, 'heteropod');
  const id = await run(podId, pod, 'worker', ['sh', '-c', 'echo started; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo finishing; exit 5']);
  await logOf(id, ['stdout started']);
  const before = containerPids(id);
  assert.ok(before.length > 0);

  await killAndWait([dpu.agentPid()!], 5000);
  await dpu.up();
  assert.equal(containerPids(id).filter((p) => before.includes(p)).length > 0, true, 'the container survived the agent');
  const r = await cri.execSync(id, ['touch', '/tmp/go']);
  assert.is(r.exitCode, 0);
  const status = await waitForContainerState(cri, id, 'CONTAINER_EXITED');
  assert.is(status.exit_code, 5);
  await logOf(id, ['stdout started', 'stdout finishing']);
  await cri.removeContainer(id);
  await removePod(podId);
  await noLeaks('the restart pod');
});

test.run();
