// What nodes go through, with offloaded containers on the test bed's real
// containerd, runc, CNI and emulated DPU: each fault is injected under load and
// what a crictl user then sees is held against what the same steps show under
// runc (run side by side where the fault applies to runc too). A leak check of
// both sides ends every test.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { CriClient } from '../../src/cri/client';
import { CriClient as Client } from '../../src/cri/client';
import type { CriObject } from '../../src/cri/config';
import { readCriLog } from '../../src/cri/logs';
import { TESTBED } from '../../src/testbed/paths';
import { run as runCmd, waitFor } from '../../src/testbed/proc';
import { MGMT_CHAIN } from '../../src/shim/mgmt-filter';
import { agentAddress, DPU } from '../../src/dpu/paths';
import { agentPods, containerPids, memoryCgroup } from '../lib/dpu';
import { skip } from '../lib/skip';
import { restartContainerd } from '../lib/shim';
import { kubeletWrite } from '../lib/volumes';
import { fetchIn, httpd, OWN_PID_NAMESPACE, runContainer } from '../lib/split';
import { cgroupPids } from '../../src/dpu/cgroup';
import * as dpu from '../../src/dpu/dpu';
import { assertNoPodLeaks, Bed, containerConfig, ownPods, podConfig, useTestBed, waitForContainerState } from '../lib/testbed';

let bed: Bed;
let cri: CriClient;

useTestBed(test, (b) => {
  bed = b;
  cri = b.cri;
});

const noLeaks = (when: string): Promise<void> => assertNoPodLeaks(bed, when);

type Handler = 'runc' | 'offload';

/** A pod whose `worker` runs on the DPU under `offload` and on the host under `runc`, beside a host container `app`. */
async function runPod(handler: Handler, name: string): Promise<{ podId: string; pod: CriObject }> {
  const annotations = handler === 'offload' ? { 'heteropod.io/offload': 'worker' } : {};
  const pod = podConfig(bed, `${name}-${handler}`, { annotations, linux: OWN_PID_NAMESPACE });
  const podId = await cri.runPodSandbox(pod, handler === 'runc' ? 'runc' : 'heteropod');
  return { podId, pod };
}

async function run(podId: string, pod: CriObject, name: string, command: string[]): Promise<string> {
  const id = await cri.createContainer(podId, containerConfig(name, command, { linux: OWN_PID_NAMESPACE }), pod);
  await cri.startContainer(id);
  return id;
}

async function removePod(podId: string): Promise<void> {
  await cri.stopPodSandbox(podId);
  await cri.removePodSandbox(podId);
}

async function logLines(id: string): Promise<string[]> {
  const file = ((await cri.containerStatus(id)).status as CriObject).log_path as string;
  return fs.existsSync(file) ? readCriLog(file).map((r) => `${r.stream} ${r.line}`) : [];
}

// Numbered lines, one every 50 ms, until /tmp/stop exists; then "last" and exit 3.
const TICKER = ['sh', '-c', 'i=0; while [ ! -e /tmp/stop ]; do echo tick-$i; i=$((i + 1)); sleep 0.05; done; echo last; exit 3'];

const ticks = (lines: string[]): number[] => lines.filter((l) => l.startsWith('stdout tick-')).map((l) => Number(l.slice('stdout tick-'.length)));

async function ticksPast(id: string, n: number): Promise<number[]> {
  return waitFor(`tick-${n} from ${id.slice(0, 13)}`, 20_000, async () => {
    const t = ticks(await logLines(id));
    return t.length > 0 && Math.max(...t) >= n ? t : undefined;
  });
}

// containerd's own restart (SIGKILL: a crash) while the worker writes a line
// every 50 ms. runc: the container keeps running; containerd reloads it from the
// shim (State names the fifos it reopens), exec, stats and logs work, lines
// written meanwhile wait in the fifo, and the exit is reported with its code.
async function containerdKilled(handler: Handler): Promise<unknown> {
  const { podId, pod } = await runPod(handler, 'ctrd');
  const worker = await run(podId, pod, 'worker', TICKER);
  const app = await run(podId, pod, 'app', ['sleep', '3600']);
  const before = Math.max(...(await ticksPast(worker, 5)));
  // Under offload the worker's processes are in the DPU's cgroup.
  const onDpu = containerPids(worker).some((pid) => memoryCgroup(pid).startsWith(`/${DPU.cgroupName}/`));

  await restartContainerd('SIGKILL');
  cri.close();
  cri = Client.connect(TESTBED.endpoint, 60_000);
  bed.cri = cri;

  const states = await Promise.all([worker, app].map(async (id) => ((await cri.containerStatus(id)).status as CriObject).state));
  const exec = await cri.execSync(worker, ['sh', '-c', 'echo exec-ok; exit 4'], 10);
  const stats = (await cri.containerStats(worker)).attributes as CriObject | undefined;
  // Lines keep coming, and none went missing across the restart.
  const after = await ticksPast(worker, before + 20);
  await cri.execSync(worker, ['touch', '/tmp/stop'], 10);
  const exited = await waitForContainerState(cri, worker, 'CONTAINER_EXITED');
  const lines = await waitFor('the last line', 10_000, async () => {
    const l = await logLines(worker);
    return l.includes('stdout last') ? l : undefined;
  });
  const numbers = ticks(lines);
  const gaps = numbers.filter((n, i) => i > 0 && n !== numbers[i - 1] + 1);
  assert.is(onDpu, handler === 'offload', `worker on the DPU under ${handler}`);
  await cri.removeContainer(worker);
  await cri.stopContainer(app, 0);
  await cri.removeContainer(app);
  await removePod(podId);
  await noLeaks(`containerd restart under ${handler}`);
  return {
    states,
    exec: { out: exec.stdout.toString().trim(), code: exec.exitCode },
    stats: stats?.id === worker,
    ticksAfterRestart: Math.max(...after) > before,
    gaps,
    firstTick: numbers[0],
    exitCode: exited.exit_code,
    last: lines[lines.length - 1],
  };
}

test('containerd killed and started again: offloaded containers are reloaded as under runc', async () => {
  const runc = await containerdKilled('runc');
  const offload = await containerdKilled('offload');
  assert.equal(runc, {
    states: ['CONTAINER_RUNNING', 'CONTAINER_RUNNING'],
    exec: { out: 'exec-ok', code: 4 },
    stats: true,
    ticksAfterRestart: true,
    gaps: [],
    firstTick: 0,
    exitCode: 3,
    last: 'stdout last',
  }, 'runc');
  assert.equal(offload, runc, 'offloaded worker vs runc');
});


// shim.toml broken while pods come and go. runc has no config of its own to
// break; what holds: every pod under the handler, offloading or not, fails at
// once with the one line that names the file, the line and the key, and the
// next pod after the fix starts.
test('a broken shim.toml fails every pod at once with file, line and key; fixed, pods start', async () => {
  const good = fs.readFileSync(TESTBED.shimConfig, 'utf8');
  const cases: { why: string; text: string; want: RegExp }[] = [
    { why: 'unparsable line', text: `${good}\nthis is not toml\n`, want: /shim\.toml:\d+: / },
    { why: 'misspelt key', text: good.replace(/^(\s*)address\s*=/m, '$1adress ='), want: /shim\.toml:\d+: dpu\.adress: unknown key/ },
    { why: 'misspelt section', text: good.replace(/^\[dpu\]/m, '[dpuu]'), want: /shim\.toml:\d+: \[dpuu\]: unknown section/ },
    { why: 'port out of range', text: good.replace(/^(\s*)address\s*=\s*"([^"]+):\d+"/m, '$1address = "$2:99999"'), want: /shim\.toml:\d+: dpu\.address: .*99999/ },
  ];
  try {
    for (const c of cases) {
      assert.is.not(c.text, good, `${c.why}: the case changes the file`);
      fs.writeFileSync(TESTBED.shimConfig, c.text);
      for (const handler of ['plain', 'offload'] as const) {
        const annotations = handler === 'offload' ? { 'heteropod.io/offload': 'worker' } : {};
        const started = Date.now();
        const err = await cri.runPodSandbox(podConfig(bed, `toml-${handler}`, { annotations, linux: OWN_PID_NAMESPACE }), 'heteropod').then(
          (id) => new Error(`pod ${id} started with ${c.why}`),
          (e: Error) => e,
        );
        const took = Date.now() - started;
        assert.match(err.message, c.want, `${c.why}, ${handler} pod: ${err.message}`);
        assert.ok(err.message.includes(TESTBED.shimConfig), `${c.why}, ${handler}: names the file: ${err.message}`);
        assert.ok(took < 10_000, `${c.why}, ${handler}: failed in ${took} ms`);
      }
    }
  } finally {
    fs.writeFileSync(TESTBED.shimConfig, good);
  }
  const { podId } = await runPod('offload', 'toml-fixed');
  assert.is(((await cri.podSandboxStatus(podId)).status as CriObject).state, 'SANDBOX_READY');
  await removePod(podId);
  await noLeaks('the broken shim.toml');
});

// Annotations by one rule: read exactly as written, whitespace refused, errors
// quoting at most a short prefix. runc reads no heteropod.io/* annotation; what
// holds is that RunPodSandbox fails with a message a user can act on, and that
// nothing of the refused pod is left.
test('bad annotations: whitespace refused, a long value quoted short, nothing left', async () => {
  const long = 'w'.repeat(10_000);
  const cases: [Record<string, string>, RegExp][] = [
    [{ 'heteropod.io/offload': ' worker' }, /annotation heteropod\.io\/offload=" worker": whitespace at character 1/],
    [{ 'heteropod.io/offload': 'worker, app' }, /annotation heteropod\.io\/offload="worker, app": whitespace at character 8/],
    [{ 'heteropod.io/offload': 'worker', 'heteropod.io/offload-policy': 'require ' }, /annotation heteropod\.io\/offload-policy="require ": must be "prefer" or "require", exactly/],
    [{ 'heteropod.io/offload': 'worker', 'heteropod.io/ports': 'worker = 80' }, /annotation heteropod\.io\/ports="worker = 80": whitespace at character 7/],
    [{ 'heteropod.io/offload': long }, /annotation heteropod\.io\/offload="w{64}"\.\.\. \(10000 characters\)/],
    [{ 'heteropod.io/offload': 'worker', 'heteropod.io/offload-policy': long }, /offload-policy="w{64}"\.\.\. \(10000 characters\)/],
  ];
  for (const [annotations, want] of cases) {
    const err = await cri.runPodSandbox(podConfig(bed, 'bad-annotation', { annotations, linux: OWN_PID_NAMESPACE }), 'heteropod').then(
      (id) => new Error(`pod ${id} started`),
      (e: Error) => e,
    );
    assert.match(err.message, want);
    assert.ok(err.message.length < 1000, `a short error (${err.message.length} characters): ${err.message.slice(0, 300)}`);
  }
  await waitFor('refused sandboxes to be gone', 20_000, async () => (await ownPods(bed)).length === 0).catch(() => undefined);
  for (const p of await ownPods(bed)) await removePod(String(p.id));
  await noLeaks('the refused pods');
});

/** Packets from the host's side that reached the DPU's management namespace for TCP port `port`, counted there. */
async function dpuArrivals(port: number, body: () => Promise<void>): Promise<number> {
  const rule = ['PREROUTING', '-i', DPU.link, '-p', 'tcp', '--dport', String(port), '-m', 'comment', '--comment', 'hp-e2e-count'];
  const inDpu = (args: string[]) => runCmd('ip', ['netns', 'exec', DPU.netns, 'iptables', '-w', '-t', 'raw', ...args]);
  await inDpu(['-I', ...rule]);
  try {
    await body();
    const listed = (await inDpu(['-L', 'PREROUTING', '-v', '-x', '-n'])).stdout;
    const line = listed.split('\n').find((l) => l.includes('hp-e2e-count'));
    return Number(line?.trim().split(/\s+/)[0] ?? NaN);
  } finally {
    await inDpu(['-D', ...rule]);
  }
}

/** Whether a TCP connection from the network namespace of `pid` to host:port opens within 2 s. */
async function connects(pid: number | null, host: string, port: number): Promise<boolean> {
  const script = `const s = require('net').connect(${port}, '${host}'); s.on('connect', () => { console.log('open'); process.exit(0); }); s.on('error', () => process.exit(0)); setTimeout(() => process.exit(0), 2000);`;
  const argv = pid === null ? [process.execPath, '-e', script] : ['nsenter', '-t', String(pid), '-n', '--', process.execPath, '-e', script];
  return (await runCmd(argv[0], argv.slice(1), { timeout: 10_000 })).stdout.includes('open');
}

// A pod with a default route through the host tries the DPU's management
// network. runc has no DPU; what holds is that nothing the host forwards reaches
// the management link (the node daemon's HETEROPOD-MGMT chain), while the host's
// own processes still reach the agent. The control (the chain unhooked for a
// moment) shows that the same packets do get there without it.
test('the management link takes nothing the host forwards: a pod with a default route cannot reach it', async () => {
  const chain = (await runCmd('iptables', ['-w', '-S', MGMT_CHAIN])).stdout;
  assert.match(chain, new RegExp(`-A ${MGMT_CHAIN} -o ${DPU.link} .*-j DROP`));
  assert.match((await runCmd('iptables', ['-w', '-S', 'FORWARD'])).stdout.split('\n')[1] ?? '', new RegExp(`-A FORWARD -j ${MGMT_CHAIN}`), 'the guard comes first in FORWARD');

  const { podId, pod } = await runPod('offload', 'mgmt');
  const worker = await run(podId, pod, 'worker', ['sleep', '3600']);
  const app = await run(podId, pod, 'app', ['sleep', '3600']);
  await waitForContainerState(cri, worker, 'CONTAINER_RUNNING');
  const appPid = containerPids(app)[0];
  assert.ok(appPid, 'a process of the host container');
  const gateway = TESTBED.podSubnet.replace(/0\/\d+$/, '1');
  await runCmd('nsenter', ['-t', String(appPid), '-n', '--', 'ip', 'route', 'add', 'default', 'via', gateway]);
  const agentPort = Number(agentAddress().split(':')[1]);

  const guarded = await dpuArrivals(9, async () => {
    assert.not.ok(await connects(appPid, DPU.dpuAddress, 9), 'port 9 from the pod');
    assert.not.ok(await connects(appPid, DPU.dpuAddress, agentPort), 'the agent from the pod');
  });
  assert.is(guarded, 0, 'no packet from the pod reached the management namespace');
  assert.ok(await connects(null, DPU.dpuAddress, agentPort), 'the host itself reaches the agent');

  // Control: without the hook, the pod's packets do arrive.
  await runCmd('iptables', ['-w', '-D', 'FORWARD', '-j', MGMT_CHAIN]);
  let unguarded: number;
  try {
    unguarded = await dpuArrivals(9, async () => {
      await connects(appPid, DPU.dpuAddress, 9);
    });
  } finally {
    await runCmd('iptables', ['-w', '-I', 'FORWARD', '1', '-j', MGMT_CHAIN]);
  }
  assert.ok(unguarded > 0, `without the guard the pod's packets reach the DPU (${unguarded})`);

  for (const id of [worker, app]) await cri.stopContainer(id, 0);
  for (const id of [worker, app]) await cri.removeContainer(id);
  await removePod(podId);
  await noLeaks('the pod with a default route');
});

// The DPU rebooted: every process on it killed (agent, runc shims, containers)
// and the DPU brought up again. runc's counterpart is a runc shim that dies: its
// containers are reported exited (255) at once, and the kubelet's restart runs
// them again. Here: each lost container is reported exited within seconds, its
// restart is placed on the DPU again with the split network back (the host half
// reaches it over localhost), and the pod's removal leaves nothing on either side.
test('DPU rebooted: lost containers exit within seconds, their restart runs on the DPU again, removal leaves nothing', async () => {
  // Every process on the DPU is killed: a user's pods there would lose their DPU containers.
  const users = (await agentPods()).filter((p) => bed.userPods.has(p.pod_id));
  if (users.length) {
    return skip('DPU rebooted', `the DPU runs ${users.length} pod(s) of yours; rebooting it would kill their DPU containers (run it after heteropod local down)`);
  }
  const { podId, pod } = await runPod('offload', 'reboot');
  const worker = await runContainer(cri, podId, pod, 'worker', httpd('before-reboot', 8080));
  const app = await runContainer(cri, podId, pod, 'app', ['sleep', '3600']);
  assert.ok((await fetchIn(cri, app, 'http://127.0.0.1:8080/')).out.includes('before-reboot'), 'the worker served the host half before');

  const dpuProcesses = cgroupPids();
  assert.ok(dpuProcesses.length > 2, `processes on the DPU: ${dpuProcesses.length}`);
  for (const pid of dpuProcesses) process.kill(pid, 'SIGKILL');
  await waitFor('every DPU process to be gone', 10_000, () => cgroupPids().length === 0);
  const down = Date.now();
  await dpu.up({ podCidr: TESTBED.podSubnet });

  const lost = await waitForContainerState(cri, worker, 'CONTAINER_EXITED', 30_000);
  const took = Date.now() - down;
  assert.ok(took < 15_000, `the lost container was reported exited ${took} ms after the DPU went down`);
  assert.is(lost.exit_code, 255, 'exit code of a container whose runtime died (as containerd reports under runc)');
  assert.is(((await cri.containerStatus(app)).status as CriObject).state, 'CONTAINER_RUNNING', 'the host container runs on');

  // The kubelet's restart: the same container, attempt 1.
  const again = await cri.createContainer(podId, containerConfig('worker', httpd('after-reboot', 8080), { linux: OWN_PID_NAMESPACE, metadata: { name: 'worker', attempt: 1 } }), pod);
  await cri.startContainer(again);
  await waitForContainerState(cri, again, 'CONTAINER_RUNNING');
  assert.ok(containerPids(again).some((pid) => memoryCgroup(pid).startsWith(`/${DPU.cgroupName}/`)), 'the restarted worker runs on the DPU');
  const page = await fetchIn(cri, app, 'http://127.0.0.1:8080/', 20);
  assert.ok(page.out.includes('after-reboot'), `the split network is back: ${page.out}`);
  assert.is((await cri.execSync(again, ['echo', 'exec-ok'], 10)).stdout.toString().trim(), 'exec-ok');

  await cri.removeContainer(worker);
  for (const id of [again, app]) await cri.stopContainer(id, 0);
  for (const id of [again, app]) await cri.removeContainer(id);
  await removePod(podId);
  await noLeaks('the pod across a DPU reboot');
});

// A ConfigMap updated while the container runs, and the termination message it
// writes as it exits. runc: the container reads the new value as soon as the
// kubelet swaps `..data` (its bind mount shows the host's directory), and what it
// writes to /dev/termination-log is in the host file the kubelet reads.
async function liveFiles(handler: Handler): Promise<unknown> {
  const dir = fs.mkdtempSync(path.join(bed.logDir, `volume-${handler}-`));
  const volume = path.join(dir, 'config');
  const termination = path.join(dir, 'termination-log');
  kubeletWrite(volume, `..v1_${Date.now()}`, { key: 'v1\n' });
  fs.writeFileSync(termination, '');
  fs.chmodSync(termination, 0o666);
  const { podId, pod } = await runPod(handler, 'files');
  const mounts = [
    { container_path: '/etc/config', host_path: volume, readonly: true },
    { container_path: '/dev/termination-log', host_path: termination },
  ];
  const command = ['sh', '-c', 'while [ ! -e /tmp/stop ]; do sleep 0.1; done; echo "bye from $(cat /etc/config/key)" > /dev/termination-log; exit 2'];
  const worker = await cri.createContainer(podId, containerConfig('worker', command, { linux: OWN_PID_NAMESPACE, mounts }), pod);
  await cri.startContainer(worker);
  await waitForContainerState(cri, worker, 'CONTAINER_RUNNING');
  const read = async () => (await cri.execSync(worker, ['cat', '/etc/config/key'], 10)).stdout.toString().trim();
  const first = await read();
  const swapped = Date.now();
  kubeletWrite(volume, `..v2_${Date.now()}`, { key: 'v2\n' });
  await waitFor('v2 in the container', 30_000, async () => (await read()) === 'v2', 200);
  const tookMs = Date.now() - swapped;
  await cri.execSync(worker, ['touch', '/tmp/stop'], 10);
  const exited = await waitForContainerState(cri, worker, 'CONTAINER_EXITED');
  const message = fs.readFileSync(termination, 'utf8');
  await cri.removeContainer(worker);
  await removePod(podId);
  await noLeaks(`live files under ${handler}`);
  return { first, updatedWithin5s: tookMs < 5000, exitCode: exited.exit_code, message };
}

test('a ConfigMap update reaches an offloaded container within seconds, and its termination message comes back (as under runc)', async () => {
  const runc = await liveFiles('runc');
  const offload = await liveFiles('offload');
  assert.equal(runc, { first: 'v1', updatedWithin5s: true, exitCode: 2, message: 'bye from v2\n' }, 'runc');
  assert.equal(offload, runc, 'offloaded worker vs runc');
});

// The DPU agent killed while an offloaded container runs, which prints its last
// lines and exits before the agent is back. runc's counterpart is containerd's
// runc shim, which holds the container's output until containerd reads it: no
// line is lost, and the exit code is reported.
test('agent killed: a container that exits during the outage loses none of its output', async () => {
  const { podId, pod } = await runPod('offload', 'agent-gone');
  const worker = await run(podId, pod, 'worker', ['sh', '-c', 'echo started; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo one; echo two >&2; echo three; exit 6']);
  await waitFor('the first line', 10_000, async () => (await logLines(worker)).includes('stdout started'));
  const agent = dpu.agentPid();
  assert.ok(agent, 'the agent runs');
  process.kill(agent!, 'SIGKILL');
  await waitFor('the agent to be gone', 5000, () => dpu.agentPid() === undefined);
  // The container is told to finish while no agent runs (through its own
  // filesystem: exec would need the agent), and does.
  const pids = containerPids(worker);
  assert.ok(pids.length > 0);
  fs.writeFileSync(`/proc/${pids[0]}/root/tmp/go`, '');
  await waitFor('the container to exit', 10_000, () => containerPids(worker).length === 0);
  await dpu.up({ podCidr: TESTBED.podSubnet });
  const exited = await waitForContainerState(cri, worker, 'CONTAINER_EXITED');
  assert.is(exited.exit_code, 6);
  const lines = await waitFor('every line', 15_000, async () => {
    const l = await logLines(worker);
    return ['stdout one', 'stderr two', 'stdout three'].every((w) => l.includes(w)) ? l : undefined;
  }).catch(async () => logLines(worker));
  assert.equal(lines.filter((l) => l !== 'stdout started').sort(), ['stderr two', 'stdout one', 'stdout three']);
  await cri.removeContainer(worker);
  await removePod(podId);
  await noLeaks('the pod across an agent restart');
});

test.run();
