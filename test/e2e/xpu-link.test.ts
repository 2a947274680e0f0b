// End to end: XPU links between two network namespaces, their two ends in two
// processes. TCP and UDP across the link (with content checks), statistics from
// a third process, a peer that is killed or stopped, and a leak check.
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { XpuStats, XpuWindow, listWindows, readStats, removeWindow, windowPath } from '../../src/xpu/window';
import { addAddress } from '../../src/xpu/link';
import { writeSysctls } from '../../src/netns/exec';
import { processRunning } from '../../src/common/processes';
import { addNetns, canMakeNetns, delNetns, devices, listNetns, parseCpuMask, processesMatching, xpuThreadNames, xpuThreads } from '../lib/netns';
import { skip } from '../lib/skip';

const root = path.resolve(__dirname, '..', '..', '..');
const heteropod = path.join(root, 'bin', 'heteropod');
const traffic = path.join(root, 'dist', 'test', 'lib', 'traffic.js');
const portProcess = path.join(root, 'dist', 'src', 'xpu', 'port-process.js');
const tag = `hpx-xe${process.pid}`;
const A = `${tag}-a`;
const B = `${tag}-b`;
const HOST_IP = '169.254.77.1';
const DPU_IP = '169.254.77.2';
const why = canMakeNetns();
const spawned: ChildProcess[] = [];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function track(c: ChildProcess): ChildProcess {
  spawned.push(c);
  return c;
}

/** Run a traffic mode inside a namespace; resolves with its last JSON line. */
function trafficIn(ns: string, args: string[], timeoutMs = 20_000): { child: ChildProcess; result: Promise<Record<string, unknown>>; ready: Promise<void> } {
  const child = track(spawn('ip', ['netns', 'exec', ns, process.execPath, traffic, ...args], { stdio: ['ignore', 'pipe', 'pipe'] }));
  let out = '';
  let err = '';
  let readyResolve: () => void = () => {};
  const ready = new Promise<void>((r) => (readyResolve = r));
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
    if (out.includes('"listening":true')) readyResolve();
  });
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const result = new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`traffic ${args.join(' ')} in ${ns} timed out; stderr: ${err}`));
    }, timeoutMs);
    child.on('exit', () => {
      clearTimeout(timer);
      const lines = out.trim().split('\n').filter((l) => l.startsWith('{') && !l.includes('"listening"'));
      if (lines.length === 0) reject(new Error(`traffic ${args.join(' ')} in ${ns} printed nothing; stderr: ${err}`));
      else resolve(JSON.parse(lines[lines.length - 1]));
    });
  });
  return { child, result, ready };
}

/** Until the sink listens; a sink that ends first fails the test (not the process, with its namespaces left behind). */
async function listening(sink: ReturnType<typeof trafficIn>): Promise<void> {
  await Promise.race([
    sink.ready,
    sink.result.then((r) => {
      throw new Error(`the sink ended before it listened: ${JSON.stringify(r)}`);
    }),
  ]);
}

async function tcpIntegrity(bytes: number, port: number): Promise<void> {
  const sink = trafficIn(B, ['tcp-sink', DPU_IP, String(port)]);
  await listening(sink);
  const send = await trafficIn(A, ['tcp-send', DPU_IP, String(port), String(bytes)]).result;
  assert.ok(send.ok, `TCP content hash matches across the link: ${JSON.stringify(send)}`);
  const got = await sink.result;
  assert.is(got.bytes, bytes);
}

async function udpIntegrity(count: number, port: number): Promise<void> {
  const sink = trafficIn(A, ['udp-sink', HOST_IP, String(port), String(count)]);
  await listening(sink);
  await trafficIn(B, ['udp-send', HOST_IP, String(port), String(count)]).result;
  const got = await sink.result;
  assert.is(got.bad, 0, 'no corrupt datagram');
  assert.ok((got.good as number) >= count * 0.95, `UDP datagrams received: ${got.good} of ${count}`);
}

interface CliLink {
  child: ChildProcess;
  dpuPid: number;
  window: string;
  exit: Promise<{ code: number | null; stderr: string }>;
}

async function startCliLink(mode = 'elastic'): Promise<CliLink> {
  const child = track(spawn(heteropod, ['xpu', 'link', A, B, '--mode', mode], { stdio: ['ignore', 'pipe', 'pipe'] }));
  let out = '';
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exit = new Promise<{ code: number | null; stderr: string }>((r) => child.on('exit', (code) => r({ code, stderr })));
  const line = await new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = out.match(/^xpu link up: .*$/m);
      if (m) resolve(m[0]);
    });
    child.on('exit', (code) => reject(new Error(`heteropod xpu link exited ${code}: ${stderr}`)));
    setTimeout(() => reject(new Error(`heteropod xpu link did not come up: ${out} ${stderr}`)), 15_000);
  });
  const dpuPid = Number(line.match(/DPU end pid (\d+)/)![1]);
  const window = line.match(/window (\S+),/)![1];
  return { child, dpuPid, window, exit };
}

function statsFromCli(): XpuStats[] {
  const r = spawnSync(heteropod, ['xpu', 'stats', '--json'], { encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as XpuStats[];
}

async function waitFor(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cond()) return true;
    await sleep(50);
  }
  return cond();
}

function assertClean(window: string): void {
  assert.not.ok(fs.existsSync(window), `window ${window} removed`);
  assert.equal(devices(A), [], `no device left in ${A}`);
  assert.equal(devices(B), [], `no device left in ${B}`);
  assert.equal(processesMatching(tag), [], 'no process of this test left');
}

test.before(() => {
  if (why) return;
  addNetns(A);
  addNetns(B);
});

test('heteropod xpu link: TCP and UDP cross, stats from another process, SIGINT cleans up', async () => {
  if (why) return skip('xpu link e2e', why);
  const link = await startCliLink();
  try {
  await tcpIntegrity(16 * 1024 * 1024, 15001);
  await udpIntegrity(450, 15002);

  const srv = track(spawn('ip', ['netns', 'exec', B, 'iperf3', '-s', '-1', '-B', DPU_IP, '-p', '15003'], { stdio: 'ignore' }));
  await sleep(300);
  const ip = spawnSync('ip', ['netns', 'exec', A, 'iperf3', '-c', DPU_IP, '-p', '15003', '-t', '2', '-J'], { encoding: 'utf8', timeout: 15_000 });
  assert.is(ip.status, 0, ip.stderr);
  const bps = JSON.parse(ip.stdout).end.sum_received.bits_per_second as number;
  assert.ok(bps > 100e6, `TCP throughput ${bps}`);
  await new Promise((r) => (srv.exitCode !== null ? r(null) : srv.on('exit', r)));

  const all = statsFromCli().filter((s) => s.path === link.window);
  assert.is(all.length, 1, 'xpu stats lists the link');
  const s = all[0];
  assert.ok(s.linkUp);
  assert.is(s.host.netns, `/run/netns/${A}`);
  assert.is(s.dpu.pid, link.dpuPid);
  assert.ok(s.hostToDpu.frames > 0 && s.dpuToHost.frames > 0);
  // GSO: TCP segments cross as frames far larger than the 1500-byte MTU.
  assert.ok(s.hostToDpu.bytes / s.hostToDpu.frames > 8000, `average frame ${s.hostToDpu.bytes / s.hostToDpu.frames} bytes`);
  const text = spawnSync(heteropod, ['xpu', 'stats'], { encoding: 'utf8' }).stdout;
  assert.match(text, `${link.window}: link up`);

  } finally {
    link.child.kill('SIGINT');
  }
  const { code } = await link.exit;
  assert.is(code, 0);
  assert.not.ok(processRunning(link.dpuPid), 'DPU end process gone');
  assertClean(link.window);
});

test('heteropod xpu link --mode sleep: traffic crosses and no pump ever spins', async () => {
  if (why) return skip('xpu link sleep mode', why);
  const link = await startCliLink('sleep');
  try {
    await tcpIntegrity(4 * 1024 * 1024, 15004);
    await udpIntegrity(200, 15005);
    const s = statsFromCli().find((x) => x.path === link.window);
    assert.ok(s, 'xpu stats lists the link');
    assert.equal([s!.host.mode, s!.dpu.mode], ['sleep', 'sleep']);
    assert.ok(s!.hostToDpu.frames > 0 && s!.dpuToHost.frames > 0);
    // Each wait went to sleep at once: no wait found work by spinning.
    assert.equal([s!.hostToDpu.spins, s!.dpuToHost.spins], [0, 0]);
    assert.ok(s!.hostToDpu.sleeps > 0 && s!.dpuToHost.sleeps > 0);
  } finally {
    link.child.kill('SIGINT');
  }
  assert.is((await link.exit).code, 0);
  assertClean(link.window);
});

test('heteropod xpu link: a killed DPU end is noticed, the command exits 1 and cleans up', async () => {
  if (why) return skip('xpu link peer killed', why);
  const link = await startCliLink();
  try {
    process.kill(link.dpuPid, 'SIGKILL');
  } catch (err) {
    link.child.kill('SIGINT');
    throw err;
  }
  const t0 = Date.now();
  const { code, stderr } = await link.exit;
  assert.is(code, 1);
  assert.match(stderr, /DPU end of the link exited unexpectedly/);
  assert.ok(Date.now() - t0 < 5000);
  assertClean(link.window);
});

interface Ends {
  window: string;
  host: ChildProcess;
  dpu: ChildProcess;
}

/** One port process on window, as shim or agent would; with `cpu`, confined to that CPU. */
async function startEnd(window: string, side: 'host' | 'dpu', mode: string, cpu?: number): Promise<ChildProcess> {
  const argv = [portProcess, window, side, `/run/netns/${side === 'host' ? A : B}`, 'xpu0', mode];
  const c = track(
    cpu === undefined
      ? spawn(process.execPath, argv, { stdio: ['pipe', 'pipe', 'inherit'] })
      : spawn('taskset', ['-c', String(cpu), process.execPath, ...argv], { stdio: ['pipe', 'pipe', 'inherit'] }),
  );
  await new Promise<void>((resolve, reject) => {
    c.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
    c.on('exit', (code) => reject(new Error(`${side} port exited ${code}`)));
  });
  return c;
}

/** Two port processes on a window this test made, as shim and agent would;
 * with `cpu`, both confined to that one CPU (as the emulated DPU's agent is). */
async function startEnds(name: string, cpu?: number, opts: { hostMode?: string; dpuCpu?: number } = {}): Promise<Ends> {
  const window = windowPath(`${tag}-${name}`);
  XpuWindow.create(window).close();
  // As the pod's halves do (netns/half.ts): no IPv6 on xpu0, so the kernel's
  // own router solicitations and reports do not cross an idle link. Set for the
  // devices to come, so that none is sent when the link comes up: the first
  // frame to cross is the test's own.
  for (const ns of [A, B]) await writeSysctls(`/run/netns/${ns}`, new Map([['net.ipv6.conf.default.disable_ipv6', '1']]));
  const host = await startEnd(window, 'host', opts.hostMode ?? 'elastic', cpu);
  const dpu = await startEnd(window, 'dpu', 'elastic', opts.dpuCpu ?? cpu);
  addAddress(`/run/netns/${A}`, 'xpu0', `${HOST_IP}/30`);
  addAddress(`/run/netns/${B}`, 'xpu0', `${DPU_IP}/30`);
  assert.ok(await waitFor(() => readStats(window).linkUp, 3000), 'link up');
  return { window, host, dpu };
}

async function withEnds(name: string, body: (e: Ends) => Promise<void>, cpu?: number, opts: { hostMode?: string; dpuCpu?: number } = {}): Promise<void> {
  const e = await startEnds(name, cpu, opts);
  try {
    await body(e);
  } finally {
    for (const c of [e.host, e.dpu]) {
      if (c.exitCode === null && c.signalCode === null) {
        c.kill('SIGCONT');
        c.kill('SIGTERM');
        await exitOf(c, 3000).catch(() => c.kill('SIGKILL'));
      }
    }
    removeWindow(e.window);
  }
  assertClean(e.window);
}

async function exitOf(c: ChildProcess, ms: number): Promise<number | null> {
  if (c.exitCode !== null || c.signalCode !== null) return c.exitCode;
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`process ${c.pid} did not exit within ${ms} ms`)), ms);
    c.on('exit', (code) => {
      clearTimeout(t);
      resolve(code);
    });
  });
}

test('a peer that dies: the link goes down, the survivor does not hang and closes cleanly', async () => {
  if (why) return skip('xpu peer dies', why);
  await withEnds('dies', async (e) => {
    await tcpIntegrity(1024 * 1024, 15011);
    e.dpu.kill('SIGKILL');
    await exitOf(e.dpu, 3000);
    // The host end's own verdict: its monitor saw the heartbeat stop.
    assert.ok(await waitFor(() => !readStats(e.window).host.peerUp, 2500), 'host end saw its peer die');
    const s = readStats(e.window);
    assert.not.ok(s.linkUp, 'link down after the peer died');
    assert.not.ok(s.dpu.alive);
    assert.ok(s.host.alive, 'host end still running');
    // Traffic towards the dead end fails in bounded time instead of hanging.
    const probe = await trafficIn(A, ['tcp-probe', DPU_IP, '15012', '1500'], 10_000).result;
    assert.is(probe.connected, false);
    e.host.kill('SIGTERM');
    assert.is(await exitOf(e.host, 3000), 0, 'survivor closes promptly');
  });
});

test('a peer that stops: the link goes down, and up again when it continues', async () => {
  if (why) return skip('xpu peer stops', why);
  await withEnds('stops', async (e) => {
    e.dpu.kill('SIGSTOP');
    assert.ok(await waitFor(() => !readStats(e.window).host.peerUp, 2500), 'host end saw the stopped peer');
    e.dpu.kill('SIGCONT');
    assert.ok(await waitFor(() => readStats(e.window).linkUp, 2500), 'link up again');
    await tcpIntegrity(1024 * 1024, 15021);
    assert.ok(readStats(e.window).host.linkDowns >= 1);
    e.dpu.kill('SIGTERM');
    e.host.kill('SIGTERM');
    assert.is(await exitOf(e.dpu, 3000), 0);
    assert.is(await exitOf(e.host, 3000), 0);
  });
});

/** The CPU mask of xpu0's receive queue in ns, as sysfs gives it (hex words, commas). */
function rpsCpus(ns: string): bigint {
  const r = spawnSync('ip', ['netns', 'exec', ns, 'cat', '/sys/class/net/xpu0/queues/rx-0/rps_cpus'], { encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
  return parseCpuMask(r.stdout);
}

test('a served host end: no pump on the host, frames cross while the host end is dead, each end restarts', async () => {
  if (why) return skip('xpu served host end', why);
  const cpus = os.cpus().length;
  // The DPU end on the last CPU, as the emulated DPU's cpuset puts the agent.
  const dpuCpu = cpus > 1 ? cpus - 1 : undefined;
  await withEnds('served', async (e) => {
    assert.equal(xpuThreadNames(e.host.pid!), ['xpu-monitor'], 'the host end runs no pump');
    assert.equal(xpuThreadNames(e.dpu.pid!), ['xpu-monitor', 'xpu-ring2tap', 'xpu-served', 'xpu-tap2ring']);
    if (dpuCpu !== undefined) {
      // What the DPU end writes into the host's device is received on the other CPUs.
      const others = ((1n << BigInt(cpus)) - 1n) & ~(1n << BigInt(dpuCpu));
      assert.is(rpsCpus(A), others, "the host's receive work steered off the DPU end's CPU");
    }
    await tcpIntegrity(4 * 1024 * 1024, 15041);
    await udpIntegrity(200, 15042);
    const s = readStats(e.window);
    assert.equal([s.host.mode, s.dpu.mode], ['served', 'elastic']);
    assert.ok(s.hostToDpu.frames > 0 && s.dpuToHost.frames > 0, 'the DPU end counts both directions');
    // GSO frames cross the device as they do a ring.
    assert.ok(s.hostToDpu.bytes / s.hostToDpu.frames > 8000, `average frame ${s.hostToDpu.bytes / s.hostToDpu.frames} bytes`);

    // The host end's process dies: the DPU end keeps the device and serves it.
    e.host.kill('SIGKILL');
    await exitOf(e.host, 3000);
    assert.ok(await waitFor(() => !readStats(e.window).host.alive, 2500), 'host end seen dead');
    assert.ok(readStats(e.window).dpu.peerUp, 'the DPU end still serves the link');
    await tcpIntegrity(1024 * 1024, 15043);
    // A new host end takes the device back (it still exists) instead of failing on its name.
    e.host = await startEnd(e.window, 'host', 'served');
    assert.ok(await waitFor(() => readStats(e.window).linkUp, 3000), 'link up with the new host end');
    await tcpIntegrity(1024 * 1024, 15044);

    // The DPU end dies: the host's device loses its carrier; a new DPU end serves it again.
    e.dpu.kill('SIGKILL');
    await exitOf(e.dpu, 3000);
    assert.ok(await waitFor(() => !readStats(e.window).host.peerUp, 2500), 'host end saw the DPU end die');
    const probe = await trafficIn(A, ['tcp-probe', DPU_IP, '15045', '1500'], 10_000).result;
    assert.is(probe.connected, false, 'nothing crosses without a DPU end');
    e.dpu = await startEnd(e.window, 'dpu', 'elastic', dpuCpu);
    addAddress(`/run/netns/${B}`, 'xpu0', `${DPU_IP}/30`); // its device is a new one
    assert.ok(await waitFor(() => readStats(e.window).linkUp, 3000), 'link up with the new DPU end');
    const lost = (t: XpuStats) => JSON.stringify([t.hostToDpu.drops, t.dpuToHost.drops, t.hostToDpu.tapErrors, t.dpuToHost.tapErrors]);
    const before = lost(readStats(e.window));
    await tcpIntegrity(1024 * 1024, 15046);
    assert.is(lost(readStats(e.window)), before, 'no frame lost on a served link that is up (drops and TAP errors, each way)');
  }, undefined, { hostMode: 'served', dpuCpu });
});

/** ns on a CPU so far of the libxpu threads (xpu-*) of pid, from their schedstat. */
function pumpCpuNs(pid: number): number {
  let ns = 0;
  for (const tid of xpuThreads(pid).keys()) {
    try {
      ns += Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // thread gone
    }
  }
  return ns;
}

test('elastic ends confined to one CPU never spin, the first frames after link-up cross, and an idle link costs no CPU', async () => {
  if (why) return skip('xpu one CPU', why);
  await withEnds('onecpu', async (e) => {
    // The pumps have waited in read(2) since before the link came up: the first
    // frames after it (the ARP request, its answer, the refusal) cross at once,
    // not after a retransmission a second later.
    const first = await trafficIn(A, ['tcp-probe', DPU_IP, '15030', '900'], 10_000).result;
    const crossed = readStats(e.window);
    assert.match(String(first.error), 'ECONNREFUSED', `the first exchange after link-up: ${JSON.stringify(first)}; drops ${crossed.hostToDpu.drops} and ${crossed.dpuToHost.drops}`);
    assert.equal([crossed.hostToDpu.drops, crossed.dpuToHost.drops], [0, 0], 'no frame dropped');
    await tcpIntegrity(4 * 1024 * 1024, 15031);
    await udpIntegrity(200, 15032);
    const s = readStats(e.window);
    assert.equal([s.host.mode, s.dpu.mode], ['elastic', 'elastic']);
    assert.ok(s.hostToDpu.frames > 0 && s.dpuToHost.frames > 0);
    // On one CPU spinning only delays what it waits for: every wait sleeps at once.
    assert.equal([s.hostToDpu.spins, s.dpuToHost.spins], [0, 0], 'no wait found work by spinning');
    assert.ok(s.hostToDpu.sleeps > 0 && s.dpuToHost.sleeps > 0);
    // Idle: the pumps sleep until a frame comes; the monitors tick. Over a
    // second both ends together stay under 2 ms of CPU (0.2% of a core; a
    // spinning pump would take most of the second).
    // A second in which a frame crossed (a late TCP segment) is not idle: it
    // is measured again, up to three times.
    await sleep(300);
    const pids = [e.host.pid!, e.dpu.pid!];
    const frames = () => {
      const t = readStats(e.window);
      return t.hostToDpu.frames + t.dpuToHost.frames;
    };
    let used: number[] = [];
    for (let round = 0; round < 3; round++) {
      const f0 = frames();
      const c0 = pids.map(pumpCpuNs);
      await sleep(1000);
      used = pids.map((p, i) => pumpCpuNs(p) - c0[i]);
      if (frames() === f0) break;
      used = [];
    }
    assert.ok(used.length > 0, 'frames crossed the link in each of three idle seconds');
    assert.ok(used[0] + used[1] < 2e6, `idle link used ${used.map((n) => (n / 1e6).toFixed(3)).join(' + ')} ms of CPU in 1 s`);
  }, 0);
});

test.after(async () => {
  for (const c of spawned) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await sleep(200);
  for (const f of listWindows().filter((f) => f.includes(tag))) removeWindow(f);
  delNetns(A);
  delNetns(B);
  // Leak check: no namespace, window or process of this test remains.
  assert.equal(listNetns(tag), [], 'network namespaces left behind');
  assert.equal(listWindows().filter((f) => f.includes(tag)), [], 'windows left behind');
  assert.equal(processesMatching(tag), [], 'processes left behind');
});

test.run();
