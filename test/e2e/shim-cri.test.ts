// The HeteroPod shim against the real containerd, runc and CNI of the test bed:
// the same CRI flows run under handler `runc` and handler `heteropod`, and their
// outcomes must be identical. A pod that offloads nothing must not be able to
// tell the two apart. Under `heteropod` each flow runs in both of the shim's
// modes: a pod without the `heteropod.io/offload` annotation (`heteropod`:
// runc's shim behind the C proxy) and one with it, empty, so that nothing is
// offloaded (`heteropod-offload`: the proxy asks the node daemon where each task
// goes). Every test ends with a leak
// check of what shims make.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { CriClient } from '../../src/cri/client';
import type { CriObject } from '../../src/cri/config';
import { readCriLog } from '../../src/cri/logs';
import { TESTBED } from '../../src/testbed/paths';
import { listProcesses, sleep, waitFor } from '../../src/testbed/proc';
import { Bed, containerConfig, podConfig, startBed, stopBed, waitForContainerState } from '../lib/testbed';
import { containerdLogSince, containerdLogSize, restartContainerd, runUnderPty, settleAndCheckLeaks } from '../lib/shim';

const HANDLERS = ['runc', 'heteropod', 'heteropod-offload'] as const;
type Handler = (typeof HANDLERS)[number];
const OFFLOAD_ANNOTATIONS = { annotations: { 'heteropod.io/offload': '' } };

let bed: Bed;
let cri: CriClient;
const outcomes: Record<string, Partial<Record<Handler, unknown>>> = {};

async function logLines(status: CriObject, count: number): Promise<string[]> {
  const file = status.log_path as string;
  const records = await waitFor(`${count} log lines in ${file}`, 10_000, () => {
    const r = fs.existsSync(file) ? readCriLog(file) : [];
    return r.length >= count ? r : undefined;
  });
  return records.map((r) => `${r.stream} ${r.line}`).sort();
}

async function startContainer(podId: string, pod: CriObject, name: string, command: string[]): Promise<string> {
  const id = await cri.createContainer(podId, containerConfig(name, command), pod);
  await cri.startContainer(id);
  return id;
}

async function runPod(handler: Handler, name: string): Promise<{ podId: string; pod: CriObject }> {
  const pod = podConfig(bed, `${name}-${handler}`, handler === 'heteropod-offload' ? OFFLOAD_ANNOTATIONS : {});
  const podId = await cri.runPodSandbox(pod, handler === 'runc' ? 'runc' : 'heteropod');
  if (handler !== 'runc') {
    // The pod really is served by our shim, the C proxy, told of the node daemon
    // when its annotation asks for offload: one process, titled for containerd.
    const ours = listProcesses().filter((p) => p.cmdline.startsWith('containerd-shim-heteropod-v2') && p.cmdline.includes(`-id ${podId}`));
    assert.is(ours.length, 1, `one heteropod shim serves pod ${podId.slice(0, 13)}`);
    assert.ok(ours[0].cmdline.endsWith(' proxy'), `${handler} pod served by the proxy: ${ours[0].cmdline}`);
    assert.is(ours[0].cmdline.includes(' -node-socket '), handler === 'heteropod-offload', `${handler} pod's proxy and the node daemon: ${ours[0].cmdline}`);
  }
  return { podId, pod };
}

async function removePod(podId: string): Promise<string> {
  await cri.stopPodSandbox(podId);
  const state = ((await cri.podSandboxStatus(podId)).status as CriObject).state as string;
  await cri.removePodSandbox(podId);
  assert.equal((await cri.listPodSandbox()).filter((p) => p.id === podId), []);
  return state;
}

async function noLeaks(when: string): Promise<void> {
  const leaks = await settleAndCheckLeaks(bed.preexisting.shims);
  assert.equal(leaks, [], `${when} left behind:\n${leaks.join('\n')}`);
}

// Runs `scenario` under a handler, records its outcome, checks for leaks; on a
// failure the containerd log of the scenario is attached.
async function under(handler: Handler, name: string, scenario: (h: Handler) => Promise<unknown>): Promise<void> {
  const logOffset = containerdLogSize();
  try {
    (outcomes[name] ??= {})[handler] = await scenario(handler);
    await noLeaks(`${name} under ${handler}`);
  } catch (err) {
    const log = containerdLogSince(logOffset).split('\n').filter((l) => /level=(error|warn)|heteropod/.test(l)).slice(-40).join('\n');
    (err as Error).message += `\ncontainerd log (${handler}):\n${log}`;
    throw err;
  }
}

function sameOutcomes(name: string): void {
  const o = outcomes[name] ?? {};
  for (const h of HANDLERS) assert.ok(o[h] !== undefined, `${name} ran under ${h}`);
  assert.equal(o.heteropod, o.runc, `${name}: heteropod (proxy) and runc disagree`);
  assert.equal(o['heteropod-offload'], o.runc, `${name}: heteropod (offload) and runc disagree`);
}

// --- the CRI flows -----------------------------------------------------------

async function lifecycle(handler: Handler): Promise<unknown> {
  const { podId, pod } = await runPod(handler, 'life');
  const podState = ((await cri.podSandboxStatus(podId)).status as CriObject).state;

  const main = await startContainer(podId, pod, 'main', ['sh', '-c', 'echo hello-out; echo hello-err >&2; exec sleep 3600']);
  const mainStatus = await waitForContainerState(cri, main, 'CONTAINER_RUNNING');
  const mainLogs = await logLines(mainStatus, 2);

  const execs = [];
  for (const cmd of [['sh', '-c', 'echo out; echo err >&2; exit 7'], ['sh', '-c', 'echo $((6 * 7))'], ['false']]) {
    const r = await cri.execSync(main, cmd, 10);
    execs.push({ cmd: cmd.join(' '), stdout: r.stdout.toString(), stderr: r.stderr.toString(), exitCode: r.exitCode });
  }

  const three = await startContainer(podId, pod, 'three', ['sh', '-c', 'echo bye; exit 3']);
  const threeStatus = await waitForContainerState(cri, three, 'CONTAINER_EXITED');
  const threeLogs = await logLines(threeStatus, 1);

  const stats = await cri.containerStats(main);
  const memory = Number(((stats.memory as CriObject)?.working_set_bytes as CriObject)?.value ?? 0);
  const cpu = stats.cpu as CriObject | null;
  const listed = await cri.listContainerStats({ pod_sandbox_id: podId });
  const statsOutcome = {
    id: ((stats.attributes as CriObject).id as string) === main,
    memoryReported: memory > 0,
    cpuReported: cpu !== null && cpu !== undefined,
    listed: listed.map((s) => ((s.attributes as CriObject).metadata as CriObject).name).sort(),
  };

  await cri.updateContainerResources(main, { memory_limit_in_bytes: 64 << 20, cpu_shares: 512 });
  const limits = await cri.execSync(main, ['sh', '-c', 'cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.shares'], 10);

  // SIGTERM ignored: StopContainer waits the grace period, then SIGKILL.
  const stubborn = await startContainer(podId, pod, 'stubborn', ['sh', '-c', 'trap "" TERM; echo ready; while true; do sleep 1; done']);
  await logLines(await waitForContainerState(cri, stubborn, 'CONTAINER_RUNNING'), 1);
  const stopStarted = Date.now();
  await cri.stopContainer(stubborn, 2);
  const stopMs = Date.now() - stopStarted;
  const stubbornStatus = await waitForContainerState(cri, stubborn, 'CONTAINER_EXITED');

  await cri.stopContainer(main, 10);
  const mainStopped = await waitForContainerState(cri, main, 'CONTAINER_EXITED');

  for (const id of [main, three, stubborn]) await cri.removeContainer(id);
  const left = await cri.listContainers({ pod_sandbox_id: podId });
  const podStopped = await removePod(podId);

  return {
    podState,
    mainLogs,
    execs,
    three: { exitCode: threeStatus.exit_code, reason: threeStatus.reason, logs: threeLogs },
    stats: statsOutcome,
    limits: limits.stdout.toString(),
    stubborn: { exitCode: stubbornStatus.exit_code, waitedForGrace: stopMs >= 1900, killedSoonAfter: stopMs < 8000 },
    main: { exitCode: mainStopped.exit_code },
    containersLeft: left.length,
    podStopped,
  };
}

async function terminalExec(handler: Handler): Promise<unknown> {
  const { podId, pod } = await runPod(handler, 'tty');
  const id = await startContainer(podId, pod, 'shell', ['sleep', '3600']);
  await waitForContainerState(cri, id, 'CONTAINER_RUNNING');
  const fifoDir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-e2e-fifo-'));
  try {
    const ctr = `ctr -a ${TESTBED.socket} -n ${TESTBED.namespace} task exec -t --fifo-dir ${fifoDir} --exec-id tty-${handler}`;
    // ctr resizes the pty right after starting the process (with either handler the
    // process may run first), so the process waits for the size to arrive.
    const inside = 'i=0; while [ $i -lt 100 ]; do s=$(stty size 2>/dev/null); case "$s" in [1-9]*" "[1-9]*) break;; esac; i=$((i + 1)); sleep 0.1; done; echo "size $s"; tty; [ -t 0 ] && echo stdin-is-a-tty; exit 5';
    const r = await runUnderPty(`stty rows 33 cols 77; ${ctr} ${id} sh -c '${inside}'`);
    const notty = await cri.execSync(id, ['sh', '-c', '[ -t 0 ] || echo no-tty-without-terminal'], 10);
    await cri.stopContainer(id, 0);
    await cri.removeContainer(id);
    return { code: r.code, lines: r.output.split('\n').map((l) => l.replace(/\0/g, '').trim()).filter((l) => /^(size|\/dev\/|stdin)/.test(l)), notty: notty.stdout.toString(), podStopped: await removePod(podId) };
  } finally {
    fs.rmSync(fifoDir, { recursive: true, force: true });
  }
}

async function containerdRestart(handler: Handler): Promise<unknown> {
  const { podId, pod } = await runPod(handler, 'restart');
  const id = await startContainer(podId, pod, 'main', ['sh', '-c', 'echo before-restart; exec sleep 3600']);
  await waitForContainerState(cri, id, 'CONTAINER_RUNNING');
  await restartContainerd();
  cri.close();
  cri = (await import('../../src/cri/client')).CriClient.connect(TESTBED.endpoint, 60_000);
  bed.cri = cri;
  const pods = await cri.listPodSandbox();
  const listed = pods.filter((p) => p.id === podId).map((p) => p.state);
  const state = ((await cri.containerStatus(id)).status as CriObject).state;
  const exec = await cri.execSync(id, ['echo', 'after-restart'], 10);
  await cri.stopContainer(id, 5);
  const stopped = await waitForContainerState(cri, id, 'CONTAINER_EXITED');
  await cri.removeContainer(id);
  return { listed, state, exec: exec.stdout.toString(), exitCode: stopped.exit_code, podStopped: await removePod(podId) };
}

async function shimKilled(handler: Handler): Promise<unknown> {
  const { podId, pod } = await runPod(handler, 'killed');
  const id = await startContainer(podId, pod, 'main', ['sleep', '3600']);
  await waitForContainerState(cri, id, 'CONTAINER_RUNNING');
  const binary = handler === 'runc' ? 'containerd-shim-runc-v2' : 'containerd-shim-heteropod-v2';
  const shims = listProcesses().filter((p) => p.cmdline.includes(binary) && p.cmdline.includes(podId) && p.cmdline.includes(TESTBED.socket));
  assert.is(shims.length, 1, `one ${binary} for the pod`);
  const bundle = path.join(TESTBED.containerdState, 'io.containerd.runtime.v2.task', TESTBED.namespace, podId);
  const address = fs.readFileSync(path.join(bundle, 'address'), 'utf8').trim().replace(/^unix:\/\//, '');
  process.kill(shims[0].pid, 'SIGKILL');
  const exited = await waitForContainerState(cri, id, 'CONTAINER_EXITED', 30_000);
  const podState = await waitFor('the sandbox to be NOTREADY', 30_000, async () => {
    const s = ((await cri.podSandboxStatus(podId)).status as CriObject).state;
    return s === 'SANDBOX_NOTREADY' ? s : undefined;
  });
  await cri.removeContainer(id);
  const podStopped = await removePod(podId);
  // A killed shim cannot remove its socket, and containerd 1.6 leaves it: runc's
  // stays behind (a known containerd 1.6 behaviour, removed here); ours is removed
  // by our `delete`, which the leak check verifies.
  if (handler === 'runc') fs.rmSync(address, { force: true });
  // containerd runs our `delete` for each task in the background; it removes the socket.
  else await waitFor(`our shim socket ${address} to be removed`, 15_000, () => !fs.existsSync(address));
  return { container: exited.state, exitCode: exited.exit_code, podState, podStopped };
}

// --- tests ----------------------------------------------------------------------

test.before(async () => {
  bed = await startBed();
  cri = bed.cri;
});

for (const handler of HANDLERS) {
  test(`${handler}: pod, containers, logs, exec, exit code 3, stats, update, graceful and forced stop, removal`, async () => {
    await under(handler, 'lifecycle', lifecycle);
  });
}

test('lifecycle: identical outcomes under runc and heteropod', () => {
  const o = outcomes.lifecycle?.runc as Record<string, unknown> | undefined;
  assert.ok(o, 'the runc run completed');
  // The reference itself is what the CRI contract says.
  assert.equal(o!.mainLogs, ['stderr hello-err', 'stdout hello-out']);
  assert.equal((o!.three as CriObject).exitCode, 3);
  assert.equal((o!.stubborn as CriObject).exitCode, 137);
  assert.equal(o!.limits, '67108864\n512\n');
  sameOutcomes('lifecycle');
});

for (const handler of HANDLERS) {
  test(`${handler}: exec with a terminal (ctr task exec -t under a pseudo-terminal, ResizePty)`, async () => {
    await under(handler, 'tty', terminalExec);
  });
}

test('tty: identical outcomes, the terminal has the size the client set', () => {
  const o = outcomes.tty?.runc as { code: number; lines: string[] } | undefined;
  assert.ok(o);
  assert.is(o!.code, 5);
  assert.ok(o!.lines.includes('size 33 77'), `stty size inside: ${o!.lines.join(' | ')}`);
  assert.ok(o!.lines.some((l) => l.startsWith('/dev/pts/')));
  sameOutcomes('tty');
});

for (const handler of HANDLERS) {
  test(`${handler}: containerd restarted while the pod runs; still listed, usable, stoppable, removable`, async () => {
    await under(handler, 'restart', containerdRestart);
  });
}

test('restart: identical outcomes', () => {
  sameOutcomes('restart');
});

for (const handler of HANDLERS) {
  test(`${handler}: the shim process killed; containerd cleans up and reports the task exited`, async () => {
    await under(handler, 'killed', shimKilled);
  });
}

test('killed: identical outcomes', () => {
  sameOutcomes('killed');
});

test('nothing is left behind (local down, unless the test bed was up before)', async () => {
  await sleep(100);
  const leaks = await stopBed(bed);
  assert.equal(leaks, [], `left behind:\n${leaks.join('\n')}`);
});

test.after(async () => {
  if (bed) await stopBed(bed).catch(() => {});
});

test.run();
