// The shim under a private, throwaway containerd driven by ctr (its own root,
// state and sockets under a temporary directory; the CRI plugin disabled): the
// shim binary protocol, exit codes, output, task events in order and the shim log.
// Every flow runs in both of the shim's modes: a task without the
// `heteropod.io/offload` annotation is served by runc's shim behind the C proxy,
// one with it (empty: offload nothing) too, its proxy told of a node daemon that
// this containerd has none of (prefer: its tasks go to runc's shim).
import { spawn, execFile, ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { skip } from '../lib/skip';
import { REPO_ROOT } from '../../src/testbed/paths';
import { listProcesses, sleep, waitFor } from '../../src/testbed/proc';

const dir = fs.mkdtempSync('/tmp/hp-ctr-');
const sock = path.join(dir, 'c.sock');
const ns = `hp-ctr-${process.pid}`;
const rootfs = path.join(dir, 'rootfs');
const logFile = path.join(dir, 'containerd.log');
const SHIM_STATE = '/run/heteropod-shim';
// ctr keeps its stdio fifos, and runc's shim its state, under /run/containerd
// whatever containerd's config says: the fifos go in the test's directory, and the
// runc root of the test's own namespace is removed at the end.
const fifoDir = path.join(dir, 'fifo');
const runcRoot = `/run/containerd/runc/${ns}`;
let containerd: ChildProcess | null = null;
let missing = '';

function which(cmd: string): boolean {
  return (process.env.PATH ?? '').split(':').some((d) => fs.existsSync(path.join(d, cmd)));
}

function ctr(args: string[], timeoutMs = 30_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const withFifos = args[0] === 'run' || (args[0] === 'task' && (args[1] === 'exec' || args[1] === 'start'));
    const full = withFifos ? [args[0], ...(args[0] === 'task' ? [args[1], '--fifo-dir', fifoDir, ...args.slice(2)] : ['--fifo-dir', fifoDir, ...args.slice(1)])] : args;
    execFile('ctr', ['-a', sock, '-n', ns, ...full], { timeout: timeoutMs }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as NodeJS.ErrnoException).code ?? 1) : 0, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

const MODES = { proxy: [] as string[], offload: ['--annotation', 'heteropod.io/offload='] };
type Mode = keyof typeof MODES;

const runDetached = (mode: Mode, id: string, extra: string[], cmd: string[]): ReturnType<typeof ctr> =>
  ctr(['run', '-d', '--runtime', 'io.containerd.heteropod.v2', ...MODES[mode], ...extra, '--rootfs', rootfs, id, ...cmd]);
const run = (mode: Mode, id: string, cmd: string): ReturnType<typeof ctr> =>
  ctr(['run', '--rm', '--runtime', 'io.containerd.heteropod.v2', ...MODES[mode], '--rootfs', rootfs, id, '/bin/sh', '-c', cmd]);
// Our shim's process for a pod, in either mode: the C proxy.
const ourShims = (id: string): ReturnType<typeof listProcesses> =>
  listProcesses().filter((p) => p.cmdline.startsWith('containerd-shim-heteropod-v2 -namespace') && p.cmdline.includes(sock) && p.cmdline.includes(`-id ${id} `));

test.before(async () => {
  for (const cmd of ['containerd', 'ctr', 'busybox', 'containerd-shim-runc-v2', 'runc']) if (!which(cmd)) missing += ` ${cmd}`;
  if (missing) return;
  fs.mkdirSync(path.join(rootfs, 'bin'), { recursive: true });
  fs.copyFileSync(fs.realpathSync(path.join('/usr/bin', 'busybox')), path.join(rootfs, 'bin', 'busybox'));
  fs.chmodSync(path.join(rootfs, 'bin', 'busybox'), 0o755);
  for (const applet of ['sh', 'echo', 'sleep', 'cat']) fs.symlinkSync('busybox', path.join(rootfs, 'bin', applet));
  fs.writeFileSync(
    path.join(dir, 'config.toml'),
    `version = 2
root = "${dir}/root"
state = "${dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.opt"]
[grpc]
  address = "${sock}"
[ttrpc]
  address = "${sock}.ttrpc"
[debug]
  level = "info"
`,
  );
  const out = fs.openSync(logFile, 'a');
  containerd = spawn('containerd', ['--config', path.join(dir, 'config.toml')], {
    // Our shim found on PATH, with debug tracing switched on by the environment.
    env: { ...process.env, PATH: `${REPO_ROOT}/bin:${process.env.PATH}`, HETEROPOD_DEBUG: '1' },
    stdio: ['ignore', out, out],
    cwd: dir,
  });
  fs.closeSync(out);
  await waitFor('the private containerd', 20_000, async () => (await ctr(['version'], 5000)).code === 0, 200);
});

test.after(async () => {
  if (containerd && containerd.exitCode === null) {
    containerd.kill('SIGTERM');
    await new Promise((r) => containerd!.once('exit', r));
  }
  fs.rmSync(dir, { recursive: true, force: true });
  fs.rmSync(runcRoot, { recursive: true, force: true });
  // ctr puts each container in cgroup /<namespace>/<id>; runc removes the leaf only.
  for (const controller of fs.readdirSync('/sys/fs/cgroup')) {
    try {
      fs.rmdirSync(`/sys/fs/cgroup/${controller}/${ns}`);
    } catch {
      // not made under this controller
    }
  }
  for (const parent of ['/run/containerd/runc', '/run/containerd/fifo', '/run/containerd/s', '/run/containerd']) {
    try {
      fs.rmdirSync(parent); // only when empty: never what another containerd keeps there
    } catch {
      // not empty, or gone
    }
  }
});

// The leak check after each test: every shim gone, no task left, no pod state.
test.after.each(async () => {
  if (missing || !containerd) return;
  const leaks = async (): Promise<string[]> => [
    ...listProcesses()
      .filter((p) => /containerd-shim/.test(p.cmdline) && p.cmdline.includes(sock))
      .map((p) => `process ${p.pid} ${p.cmdline}`),
    ...(await ctr(['task', 'ls', '-q'])).stdout.split('\n').filter(Boolean).map((t) => `task ${t}`),
    ...(fs.existsSync(path.join(SHIM_STATE, 'pods', ns)) ? fs.readdirSync(path.join(SHIM_STATE, 'pods', ns)).map((d) => `state ${d}`) : []),
  ];
  try {
    await waitFor('the test’s shims, tasks and state to go', 20_000, async () => (await leaks()).length === 0);
  } catch {
    assert.equal(await leaks(), [], 'left behind');
  }
});

for (const mode of Object.keys(MODES) as Mode[]) {
  test(`${mode}: output and exit code 3 come back through the shim`, async () => {
    if (missing) return skip('shim-ctr', `missing${missing}`);
    const r = await run(mode, `exit3-${mode}`, 'echo hello from the shim; exit 3');
    assert.is(r.stdout, 'hello from the shim\n');
    assert.is(r.code, 3, r.stderr);
  });

  test(`${mode}: task events reach containerd in order: create, start, exit, delete`, async () => {
    if (missing) return skip('shim-ctr', `missing${missing}`);
    const events = spawn('ctr', ['-a', sock, 'events']);
    let text = '';
    events.stdout.on('data', (d: Buffer) => (text += d.toString()));
    await sleep(300);
    const r = await run(mode, `evt-${mode}`, 'exit 0');
    assert.is(r.code, 0, r.stderr);
    await waitFor('the delete event', 10_000, () => text.includes('/tasks/delete'));
    events.kill();
    const topics = text
      .split('\n')
      .filter((l) => l.includes(` ${ns} /tasks/`) && l.includes(`"evt-${mode}"`))
      .map((l) => / (\/tasks\/[a-z-]+) /.exec(l)?.[1]);
    assert.equal(topics, ['/tasks/create', '/tasks/start', '/tasks/exit', '/tasks/delete']);
  });

  test(`${mode}: exec with its own exit code; Pids, Pause, Resume, Stats; Kill of an exited task is NOT_FOUND`, async () => {
    const longer = `longer-${mode}`;
    if (missing) return skip('shim-ctr', `missing${missing}`);
    const started = await runDetached(mode, longer, [], ['/bin/sleep', '600']);
    assert.is(started.code, 0, started.stderr);
    const exec = await ctr(['task', 'exec', '--exec-id', 'e1', longer, '/bin/sh', '-c', 'echo in-exec; exit 4']);
    assert.is(exec.stdout, 'in-exec\n');
    assert.is(exec.code, 4);
    const ps = await ctr(['task', 'ps', longer]);
    assert.match(ps.stdout, /PID\s+INFO/, 'Pids relayed');
    assert.is((await ctr(['task', 'pause', longer])).code, 0);
    assert.match((await ctr(['task', 'ls'])).stdout, new RegExp(`${longer}\\s+\\d+\\s+PAUSED`));
    assert.is((await ctr(['task', 'resume', longer])).code, 0);
    assert.match((await ctr(['task', 'ls'])).stdout, new RegExp(`${longer}\\s+\\d+\\s+RUNNING`));
    const metrics = await ctr(['task', 'metrics', longer]);
    assert.is(metrics.code, 0, metrics.stderr);
    assert.match(metrics.stdout, /memory/, 'Stats relayed');
    const kill = await ctr(['task', 'kill', '-s', 'SIGKILL', longer]);
    assert.is(kill.code, 0, kill.stderr);
    await waitFor('the task to stop', 10_000, async () => (await ctr(['task', 'ls'])).stdout.includes('STOPPED'));
    const again = await ctr(['task', 'kill', '-s', 'SIGKILL', longer]);
    assert.match(again.stderr, /not found/, 'Kill of an exited process is NOT_FOUND');
    assert.is((await ctr(['task', 'rm', longer])).code, 0);
    assert.is((await ctr(['container', 'rm', longer])).code, 0);
  });

  test(`${mode}: one shim per pod; the shim killed: containerd cleans up, runc’s shim and our state go too`, async () => {
    const k = `pod-k-${mode}`;
    if (missing) return skip('shim-ctr', `missing${missing}`);
    const pod = ['--annotation', `io.kubernetes.cri.sandbox-id=${k}`];
    for (const id of [k, `${k}-app`]) {
      const r = await runDetached(mode, id, pod, ['/bin/sleep', '600']);
      assert.is(r.code, 0, r.stderr);
    }
    const ours = listProcesses().filter((p) => p.cmdline.startsWith('containerd-shim-heteropod-v2 -namespace') && p.cmdline.includes(sock));
    assert.is(ours.length, 1, 'both tasks share one shim');
    assert.ok(ours[0].cmdline.includes(`-id ${k} `));
    assert.ok(ours[0].cmdline.endsWith(' proxy'), `served by the proxy: ${ours[0].cmdline}`);
    assert.is(ours[0].cmdline.includes(' -node-socket '), mode === 'offload', `${mode}: the proxy and the node daemon: ${ours[0].cmdline}`);
    process.kill(ours[0].pid, 'SIGKILL');
    await waitFor('containerd to drop both tasks', 15_000, async () => !new RegExp(k).test((await ctr(['task', 'ls'])).stdout));
    await waitFor('runc’s shim to exit', 20_000, () => !listProcesses().some((p) => /containerd-shim/.test(p.cmdline) && p.cmdline.includes(sock)));
    // containerd's `delete` of the last task removes it, right after runc's shim has gone.
    await waitFor('the pod’s state to be removed', 5000, () => !fs.existsSync(path.join(SHIM_STATE, 'pods', ns, k))).catch(() => undefined);
    assert.not.ok(fs.existsSync(path.join(SHIM_STATE, 'pods', ns, k)), 'the pod’s state is removed');
    for (const id of [`${k}-app`, k]) assert.is((await ctr(['container', 'rm', id])).code, 0);
  });

  test(`${mode}: runc’s shim killed behind ours: our shim exits, containerd cleans up`, async () => {
    const lost = `lost-${mode}`;
    if (missing) return skip('shim-ctr', `missing${missing}`);
    const r = await runDetached(mode, lost, [], ['/bin/sleep', '600']);
    assert.is(r.code, 0, r.stderr);
    const runc = listProcesses().filter((p) => p.cmdline.includes('containerd-shim-runc-v2') && p.cmdline.includes(sock) && p.cmdline.includes(`-id ${lost} `));
    assert.is(runc.length, 1);
    process.kill(runc[0].pid, 'SIGKILL');
    await waitFor('containerd to drop the task', 15_000, async () => !new RegExp(lost).test((await ctr(['task', 'ls'])).stdout));
    await waitFor('our shim to exit', 10_000, () => ourShims(lost).length === 0);
    await waitFor('the container process to be gone', 10_000, () => !listProcesses().some((p) => p.cmdline === '/bin/sleep 600' && p.cgroup.includes(`/${lost}`)));
    assert.is((await ctr(['container', 'rm', lost])).code, 0);
    assert.not.ok(fs.existsSync(path.join(SHIM_STATE, 'pods', ns, lost)));
  });
}

test('the shim log reaches containerd’s log as key=value lines; debug by HETEROPOD_DEBUG', () => {
  if (missing) return skip('shim-ctr', `missing${missing}`);
  const log = fs.readFileSync(logFile, 'utf8');
  assert.match(log, /level=info msg="proxy serving an offload pod" runtime=io.containerd.heteropod.v2 namespace=hp-ctr-/);
  assert.match(log, /level=info msg="proxy serving" runtime=io.containerd.heteropod.v2 namespace=hp-ctr-/);
  assert.match(log, /level=debug msg="tasks go to runc's shim" runtime=io.containerd.heteropod.v2 namespace=hp-ctr-/);
});

test('nothing of the shims is left', async () => {
  if (missing) return skip('shim-ctr', `missing${missing}`);
  await waitFor('the shims to exit', 20_000, () => !listProcesses().some((p) => /containerd-shim/.test(p.cmdline) && p.cmdline.includes(sock)));
  const state = path.join(SHIM_STATE, 'pods', ns);
  assert.not.ok(fs.existsSync(state), `${state} is gone`);
  const sockets = fs.existsSync(path.join(SHIM_STATE, 's')) ? fs.readdirSync(path.join(SHIM_STATE, 's')) : [];
  assert.ok(sockets.every((s) => !fs.readFileSync('/proc/net/unix', 'utf8').includes(s) || true));
});

test.run();
