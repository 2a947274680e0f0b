// Benchmark of the XPU transport against a veth pair, in one run, on the same kind
// of network namespaces:
//   node dist/scripts/bench-xpu.js [--out FILE] [--quick]
// (or `make bench-xpu`). For veth, an XPU link in elastic mode and one in poll
// mode it measures: TCP throughput (iperf3, 10 s), request/response latency p50
// and p99 (sockperf ping-pong, TCP and UDP), CPU used by the transport while idle
// (10 s), and UDP latency with 1, 4 and 16 links busy at once. It prints a table
// and writes the figures as JSON. Namespaces are named hpx-bench-*, windows
// /dev/shm/heteropod/hpx-bench-*.xpu; all are removed at the end. Traffic goes only
// between namespaces this script made.
//
//   node dist/scripts/bench-xpu.js --cpu-per-frame [--base CHECKOUT] [--quick]
//       [--rounds 3] [--seconds 5] [--idle 5] [--host-mode veth,sleep,served] [--dpu-mode elastic]
// measures instead what each end's pump threads cost per frame (see cpuPerFrame).
import { ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { addAddress } from '../src/xpu/link';
import { cpuSecondsBetween, cpuTicks, threadNames } from './bench-lib';
import { MODES, XpuMode, XpuWindow, listWindows, readStats, removeWindow, windowPath } from '../src/xpu/window';

type Transport = 'veth' | XpuMode;
const TRANSPORTS: Transport[] = ['veth', 'elastic', 'poll'];
const A_IP = '169.254.77.1';
const B_IP = '169.254.77.2';
const PREFIX = 'hpx-bench';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const outIdx = args.indexOf('--out');
const outFile = outIdx >= 0 ? args[outIdx + 1] : path.resolve(__dirname, '..', '..', 'build', 'bench-xpu.json');
const THROUGHPUT_S = quick ? 3 : 10;
const LATENCY_S = quick ? 2 : 5;
const IDLE_S = quick ? 3 : 10;
const BUSY_S = quick ? 2 : 5;
const BUSY_COUNTS = [1, 4, 16];
const ROUNDS = quick ? 1 : 3;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const log = (s: string) => process.stderr.write(`bench: ${s}\n`);

function sh(cmd: string, argv: string[]): string {
  return execFileSync(cmd, argv, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** A set of namespace pairs joined by one transport. */
class Pairs {
  private child: ChildProcess | null = null;
  private windows: XpuWindow[] = [];
  readonly names: Array<[string, string]> = [];

  private constructor(readonly transport: Transport, readonly count: number) {}

  static async make(transport: Transport, count: number): Promise<Pairs> {
    const p = new Pairs(transport, count);
    try {
      await p.setUp();
    } catch (err) {
      await p.tearDown();
      throw err;
    }
    return p;
  }

  private async setUp(): Promise<void> {
    const dpuSpecs: string[] = [];
    for (let i = 0; i < this.count; i++) {
      const a = `${PREFIX}-${this.transport}-${i}-a`;
      const b = `${PREFIX}-${this.transport}-${i}-b`;
      this.names.push([a, b]);
      for (const n of [a, b]) {
        sh('ip', ['netns', 'add', n]);
        sh('ip', ['-n', n, 'link', 'set', 'lo', 'up']);
      }
      if (this.transport === 'veth') {
        sh('ip', ['link', 'add', 'hpx-bench-va', 'netns', a, 'type', 'veth', 'peer', 'name', 'hpx-bench-vb', 'netns', b]);
        sh('ip', ['-n', a, 'link', 'set', 'hpx-bench-va', 'name', 'xpu0']);
        sh('ip', ['-n', b, 'link', 'set', 'hpx-bench-vb', 'name', 'xpu0']);
        sh('ip', ['-n', a, 'link', 'set', 'xpu0', 'up']);
        sh('ip', ['-n', b, 'link', 'set', 'xpu0', 'up']);
      } else {
        const file = windowPath(`${PREFIX}-${this.transport}-${i}`);
        removeWindow(file);
        const w = XpuWindow.create(file);
        this.windows.push(w);
        w.openPort('host', `/run/netns/${a}`, 'xpu0', this.transport);
        dpuSpecs.push(file, 'dpu', `/run/netns/${b}`, 'xpu0', this.transport);
      }
    }
    if (dpuSpecs.length > 0) {
      // All DPU ends in one other process, as the agent holds them.
      const child = spawn(process.execPath, [path.resolve(__dirname, '..', 'src', 'xpu', 'port-process.js'), ...dpuSpecs], {
        stdio: ['pipe', 'pipe', 'inherit'],
      });
      this.child = child;
      await new Promise<void>((resolve, reject) => {
        child.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
        child.once('exit', (code) => reject(new Error(`DPU ends exited (${code})`)));
      });
    }
    for (const [a, b] of this.names) {
      addAddress(`/run/netns/${a}`, 'xpu0', `${A_IP}/30`);
      addAddress(`/run/netns/${b}`, 'xpu0', `${B_IP}/30`);
    }
    // Wait until every XPU link is up (a veth pair is up at once).
    const end = Date.now() + 20_000;
    while (!this.windows.every((w) => w.stats().linkUp)) {
      if (Date.now() > end) throw new Error(`${this.transport} links did not come up`);
      await sleep(100);
    }
  }

  /** Processes whose threads carry the transport (none for veth: it is in the kernel). */
  transportPids(): number[] {
    return this.child?.pid ? [process.pid, this.child.pid] : [];
  }

  async tearDown(): Promise<void> {
    for (const w of this.windows.splice(0)) {
      w.close();
      removeWindow(w.path);
    }
    if (this.child && this.child.exitCode === null) {
      const c = this.child;
      c.kill('SIGTERM');
      await new Promise((r) => c.once('exit', r));
    }
    this.child = null;
    for (const [a, b] of this.names) {
      spawnSync('ip', ['netns', 'del', a]);
      spawnSync('ip', ['netns', 'del', b]);
    }
  }
}

/** CPU seconds used so far by the libxpu threads (named xpu-*) of pids, from
 * each thread's schedstat (nanoseconds on a CPU). */
function transportCpuSeconds(pids: number[]): number {
  let ns = 0;
  for (const pid of pids) {
    let tids: string[] = [];
    try {
      tids = fs.readdirSync(`/proc/${pid}/task`);
    } catch {
      continue;
    }
    for (const tid of tids) {
      try {
        const comm = fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
        if (!comm.startsWith('xpu-')) continue;
        ns += Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
      } catch {
        // thread gone
      }
    }
  }
  return ns / 1e9;
}

function startServer(ns: string, argv: string[]): ChildProcess {
  return spawn('ip', ['netns', 'exec', ns, ...argv], { stdio: 'ignore' });
}

async function stopServer(c: ChildProcess): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  c.kill('SIGTERM');
  const t = setTimeout(() => c.kill('SIGKILL'), 3000);
  await new Promise((r) => c.once('exit', r));
  clearTimeout(t);
}

async function throughput(p: Pairs): Promise<number> {
  const [a, b] = p.names[0];
  const srv = startServer(b, ['iperf3', '-s', '-1', '-B', B_IP, '-p', '15201']);
  await sleep(400);
  const r = spawnSync('ip', ['netns', 'exec', a, 'iperf3', '-c', B_IP, '-p', '15201', '-t', String(THROUGHPUT_S), '-J'], {
    encoding: 'utf8',
    timeout: (THROUGHPUT_S + 30) * 1000,
  });
  await stopServer(srv);
  if (r.status !== 0) throw new Error(`iperf3 failed: ${r.stderr || r.stdout}`);
  return JSON.parse(r.stdout).end.sum_received.bits_per_second / 1e9;
}

interface Lat {
  p50: number;
  p99: number;
}

function parseSockperf(out: string): Lat {
  const pick = (pct: string) => {
    const m = out.match(new RegExp(`percentile ${pct} =\\s+([0-9.]+)`));
    return m ? Number(m[1]) : NaN;
  };
  return { p50: pick('50.000'), p99: pick('99.000') };
}

/** sockperf ping-pong on each given pair at once; one result per pair. */
async function pingPong(p: Pairs, pairs: number, tcp: boolean, seconds: number): Promise<Lat[]> {
  const servers: ChildProcess[] = [];
  for (let i = 0; i < pairs; i++) {
    servers.push(startServer(p.names[i][1], ['sockperf', 'server', '-i', B_IP, '-p', '15301', ...(tcp ? ['--tcp'] : [])]));
  }
  await sleep(500 + pairs * 50);
  const clients = [];
  for (let i = 0; i < pairs; i++) {
    const argv = ['netns', 'exec', p.names[i][0], 'sockperf', 'ping-pong', '-i', B_IP, '-p', '15301', '-t', String(seconds), ...(tcp ? ['--tcp'] : [])];
    clients.push(
      new Promise<string>((resolve) => {
        const c = spawn('ip', argv, { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
        c.stderr!.on('data', (d: Buffer) => (out += d.toString()));
        const t = setTimeout(() => c.kill('SIGKILL'), (seconds + 60) * 1000);
        c.on('exit', () => {
          clearTimeout(t);
          resolve(out);
        });
      }),
    );
  }
  const outs = await Promise.all(clients);
  for (const s of servers) await stopServer(s);
  return outs.map(parseSockperf);
}

const mean = (xs: number[]) => {
  const v = xs.filter((x) => Number.isFinite(x));
  return v.length ? v.reduce((s, x) => s + x, 0) / v.length : NaN;
};

interface Result {
  tcpGbps: number;
  tcp: Lat;
  udp: Lat;
  idleCpuPercent: number | null; // % of one core, per link
  busy: Record<string, Lat & { perLink: Lat[] }>;
}

const median = (xs: number[]) => {
  const v = xs.filter((x) => Number.isFinite(x)).sort((x, y) => x - y);
  return v.length ? v[Math.floor(v.length / 2)] : NaN;
};
const medianLat = (ls: Lat[]): Lat => ({ p50: median(ls.map((l) => l.p50)), p99: median(ls.map((l) => l.p99)) });

/** CPU of the transport's threads over IDLE_S seconds with no traffic, % of a core. */
async function idleCpu(p: Pairs): Promise<number | null> {
  const pids = p.transportPids();
  if (pids.length === 0) return null;
  await sleep(1000); // let the adaptive spin settle
  const c0 = transportCpuSeconds(pids);
  await sleep(IDLE_S * 1000);
  return ((transportCpuSeconds(pids) - c0) / IDLE_S) * 100;
}

/** Single-link figures. Transports measured together (veth and elastic: both
 * idle at no cost) alternate round by round, so that a change in the machine's
 * load during the run does not favour one of them; the median round counts. */
async function singleLink(ts: Transport[], rounds: number, res: Partial<Record<Transport, Result>>): Promise<void> {
  const pairs: Pairs[] = [];
  try {
    for (const t of ts) pairs.push(await Pairs.make(t, 1));
    const tcp = new Map<Transport, Lat[]>(ts.map((t) => [t, []]));
    const udp = new Map<Transport, Lat[]>(ts.map((t) => [t, []]));
    const gbps = new Map<Transport, number>();
    for (const p of pairs) {
      gbps.set(p.transport, await throughput(p));
      log(`${p.transport}: TCP ${gbps.get(p.transport)!.toFixed(2)} Gbit/s`);
    }
    for (let r = 0; r < rounds; r++) {
      for (const p of pairs) {
        const [t1] = await pingPong(p, 1, true, LATENCY_S);
        const [u1] = await pingPong(p, 1, false, LATENCY_S);
        tcp.get(p.transport)!.push(t1);
        udp.get(p.transport)!.push(u1);
        log(`${p.transport} round ${r + 1}: TCP p50 ${t1.p50} p99 ${t1.p99}; UDP p50 ${u1.p50} p99 ${u1.p99}`);
      }
    }
    for (const p of pairs) {
      const idle = await idleCpu(p);
      if (idle !== null) log(`${p.transport}: idle CPU ${idle.toFixed(3)}% of a core`);
      res[p.transport] = {
        tcpGbps: gbps.get(p.transport)!,
        tcp: medianLat(tcp.get(p.transport)!),
        udp: medianLat(udp.get(p.transport)!),
        idleCpuPercent: idle,
        busy: {},
      };
    }
  } finally {
    for (const p of pairs) await p.tearDown();
  }
}

async function busyLinks(t: Transport, r: Result): Promise<void> {
  for (const n of BUSY_COUNTS) {
    log(`${t}: ${n} busy link(s)`);
    const many = await Pairs.make(t, n);
    try {
      const lats = await pingPong(many, n, false, BUSY_S);
      r.busy[String(n)] = { p50: mean(lats.map((l) => l.p50)), p99: mean(lats.map((l) => l.p99)), perLink: lats };
      log(`${t}: ${n} busy: p50 ${r.busy[String(n)].p50.toFixed(1)} p99 ${r.busy[String(n)].p99.toFixed(1)}`);
    } finally {
      await many.tearDown();
    }
  }
}

function cleanLeftovers(): void {
  const list = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout ?? '';
  for (const line of list.split('\n')) {
    const n = line.split(' ')[0];
    if (n.startsWith(`${PREFIX}-`)) spawnSync('ip', ['netns', 'del', n]);
  }
  for (const f of listWindows()) if (path.basename(f).startsWith(PREFIX)) removeWindow(f);
}

function fmt(x: number | null, digits = 1): string {
  return x === null || !Number.isFinite(x) ? 'n/a' : x.toFixed(digits);
}

function table(res: Record<Transport, Result>): string {
  const v = res.veth;
  const rows: Array<[string, (r: Result) => number | null, number]> = [
    ['TCP throughput, Gbit/s (iperf3)', (r) => r.tcpGbps, 2],
    ['TCP latency p50, us (sockperf)', (r) => r.tcp.p50, 1],
    ['TCP latency p99, us', (r) => r.tcp.p99, 1],
    ['UDP latency p50, us', (r) => r.udp.p50, 1],
    ['UDP latency p99, us', (r) => r.udp.p99, 1],
    ['idle CPU, % of a core per link', (r) => r.idleCpuPercent, 3],
    ...BUSY_COUNTS.flatMap((n): Array<[string, (r: Result) => number | null, number]> => [
      [`${n} busy link${n > 1 ? 's' : ''}: UDP p50, us`, (r) => r.busy[String(n)].p50, 1],
      [`${n} busy link${n > 1 ? 's' : ''}: UDP p99, us`, (r) => r.busy[String(n)].p99, 1],
    ]),
  ];
  const head = `| metric | veth | elastic | elastic / veth | poll | poll / veth |`;
  const sep = `| --- | ---: | ---: | ---: | ---: | ---: |`;
  const body = rows.map(([name, f, d]) => {
    const ratio = (r: Result) => {
      const a = f(r);
      const b = f(v);
      return a === null || b === null || !b ? 'n/a' : `${(a / b).toFixed(2)}x`;
    };
    return `| ${name} | ${fmt(f(v), d)} | ${fmt(f(res.elastic), d)} | ${ratio(res.elastic)} | ${fmt(f(res.poll), d)} | ${ratio(res.poll)} |`;
  });
  return [head, sep, ...body].join('\n');
}

function targets(res: Record<Transport, Result>): Array<{ target: string; value: string; met: boolean }> {
  const e = res.elastic;
  const v = res.veth;
  const p = res.poll;
  return [
    { target: 'elastic TCP throughput >= 0.6x veth', value: `${(e.tcpGbps / v.tcpGbps).toFixed(2)}x`, met: e.tcpGbps >= 0.6 * v.tcpGbps },
    { target: 'elastic TCP p50 <= 1.5x veth', value: `${(e.tcp.p50 / v.tcp.p50).toFixed(2)}x`, met: e.tcp.p50 <= 1.5 * v.tcp.p50 },
    { target: 'elastic UDP p50 <= 1.5x veth', value: `${(e.udp.p50 / v.udp.p50).toFixed(2)}x`, met: e.udp.p50 <= 1.5 * v.udp.p50 },
    { target: 'elastic idle CPU <= 1% of a core per link', value: `${fmt(e.idleCpuPercent, 3)}% (poll ${fmt(p.idleCpuPercent, 0)}%)`, met: (e.idleCpuPercent ?? 100) <= 1 },
    {
      target: '16 busy links: elastic p99 <= 0.1x poll',
      value: `${(e.busy['16'].p99 / p.busy['16'].p99).toFixed(3)}x`,
      met: e.busy['16'].p99 <= 0.1 * p.busy['16'].p99,
    },
  ];
}

// ---- --cpu-per-frame: what each end's pump threads cost per frame moved ----
//
// One link per libxpu build under test (this checkout's, and with --base FILE an
// older build to compare with in the same run) and host end mode (--host-mode, a
// comma-separated list, default veth,sleep,served: a veth pair instead of a link
// as the baseline, the host end's pumps, and the shim's default, served by the
// DPU end), its two ends in two port processes as
// in production: the host end pinned to cpu0 and the DPU end (--dpu-mode,
// default elastic, the agent's) pinned to cpu1, when the machine has two CPUs.
// Beside the pump threads, the busy time of each of the two CPUs per frame
// (/proc/stat), which counts everything: the clients and the server, the pumps,
// and the kernel's work wherever it ran (a served host end has no pump; its
// frames cost the host's CPU in the clients' own system calls and in the
// receive work steered to it); less the same figure over the veth pair (each
// side's receive work steered to its own CPU with RPS), it is what the end
// costs its CPU beyond a wire the kernel serves. Request/response load:
// sockperf ping-pong over TCP, the server in the DPU half on cpu1 (where haproxy
// runs), 1 and 4 clients at once in the host half on cpu0. For each end: CPU of
// its pump threads per frame crossing the link (both directions; from each
// thread's schedstat), system calls of those threads per frame (perf stat,
// counted in a separate phase so that counting does not add to the CPU figures),
// and the CPU they use over IDLE seconds without traffic. The ring->tap thread's
// figure includes the kernel's receive work for the frames it writes (TCP/IP,
// waking the receiver), which no transport can avoid; the tap->ring thread's is
// the transport's own.

interface CpfSample {
  frames: number;
  writeShare: Record<'host' | 'dpu', number>; // share of the end's pump CPU inside write(2) into the TAP (perf samples), NaN without perf
  hostWorkShare: number; // share of the DPU end's pump CPU that a host's driver would spend (served; perf samples), NaN without perf
  seconds: number;
  cpuNs: Record<string, number>; // "host/xpu-tap2ring" -> ns
  syscalls: Record<string, number>; // same keys, from the perf phase
  syscallFrames: number;
  busyNs: Record<'host' | 'dpu', number>; // the host end's CPU and the DPU end's, all of it (/proc/stat)
}

/** A built checkout: its port process (dist/) and its libxpu (build/). */
interface CpfVariant {
  name: string;
  root: string;
}

/** A host end's mode, or a veth pair in place of the link (the baseline: a wire the kernel serves). */
type CpfMode = XpuMode | 'veth';
const CPF_VETH = ['cpfv0', 'cpfv1'] as const;

/** A device's CPU mask for sysfs (rps_cpus): one CPU. */
const cpuMask = (cpu: number) => (1n << BigInt(cpu)).toString(16);

class CpfLink {
  private host: ChildProcess | null = null;
  private dpu: ChildProcess | null = null;
  readonly a: string;
  readonly b: string;
  readonly file: string;
  /** The variant and the host end's mode, as the tables name them. */
  readonly name: string;

  constructor(readonly variant: CpfVariant, readonly hostMode: CpfMode, readonly dpuMode: XpuMode) {
    this.name = `${variant.name}-${hostMode}`;
    this.a = `${PREFIX}-cpf-${this.name}-a`;
    this.b = `${PREFIX}-cpf-${this.name}-b`;
    this.file = windowPath(`${PREFIX}-cpf-${this.name}`);
  }

  pids(): Record<'host' | 'dpu', number> {
    return { host: this.host?.pid ?? 0, dpu: this.dpu?.pid ?? 0 };
  }

  async setUp(): Promise<void> {
    for (const n of [this.a, this.b]) {
      sh('ip', ['netns', 'add', n]);
      sh('ip', ['-n', n, 'link', 'set', 'lo', 'up']);
    }
    if (this.hostMode === 'veth') {
      // Each side's receive work on its own CPU (RPS), as the served link's host
      // device and its DPU end's writes have it.
      sh('ip', ['link', 'add', CPF_VETH[0], 'netns', this.a, 'type', 'veth', 'peer', 'name', CPF_VETH[1], 'netns', this.b]);
      const n = os.cpus().length;
      for (const [ns, dev, ip, cpu] of [[this.a, CPF_VETH[0], A_IP, 0], [this.b, CPF_VETH[1], B_IP, n - 1]] as const) {
        sh('ip', ['-n', ns, 'addr', 'add', `${ip}/30`, 'dev', dev]);
        sh('ip', ['-n', ns, 'link', 'set', dev, 'up']);
        if (n > 1) sh('ip', ['netns', 'exec', ns, 'sh', '-c', `echo ${cpuMask(cpu)} > /sys/class/net/${dev}/queues/rx-0/rps_cpus`]);
      }
      return;
    }
    removeWindow(this.file);
    XpuWindow.create(this.file).close();
    const portProcess = path.join(this.variant.root, 'dist', 'src', 'xpu', 'port-process.js');
    const start = async (side: 'host' | 'dpu', ns: string, mode: XpuMode) => {
      const argv = [...pin(side), process.execPath, portProcess, this.file, side, `/run/netns/${ns}`, 'xpu0', mode];
      const c = spawn(argv[0], argv.slice(1), {
        stdio: ['pipe', 'pipe', 'inherit'],
        env: { ...process.env, HETEROPOD_LIBXPU: path.join(this.variant.root, 'build', 'libxpu.so') },
      });
      await new Promise<void>((resolve, reject) => {
        c.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
        c.once('exit', (code) => reject(new Error(`${this.variant.name}: ${side} end exited (${code})`)));
      });
      return c;
    };
    this.host = await start('host', this.a, this.hostMode);
    this.dpu = await start('dpu', this.b, this.dpuMode);
    addAddress(`/run/netns/${this.a}`, 'xpu0', `${A_IP}/30`);
    addAddress(`/run/netns/${this.b}`, 'xpu0', `${B_IP}/30`);
    const end = Date.now() + 10_000;
    while (!readStats(this.file).linkUp) {
      if (Date.now() > end) throw new Error(`${this.variant.name}: link did not come up`);
      await sleep(50);
    }
  }

  frames(): number {
    if (this.hostMode === 'veth') {
      const [dev] = JSON.parse(sh('ip', ['-n', this.a, '-s', '-j', 'link', 'show', CPF_VETH[0]])) as Array<{ stats64: Record<'rx' | 'tx', { packets: number }> }>;
      return dev.stats64.rx.packets + dev.stats64.tx.packets;
    }
    const s = readStats(this.file);
    return s.hostToDpu.frames + s.dpuToHost.frames;
  }

  async tearDown(): Promise<void> {
    for (const c of [this.host, this.dpu]) {
      if (c && c.exitCode === null && c.signalCode === null) {
        c.kill('SIGTERM');
        await new Promise((r) => c.once('exit', r));
      }
    }
    this.host = this.dpu = null;
    removeWindow(this.file);
    for (const n of [this.a, this.b]) spawnSync('ip', ['netns', 'del', n]);
  }
}

/** taskset prefix: the host end and its clients on cpu0, the DPU end and its server on the last CPU. */
function pin(side: 'host' | 'dpu'): string[] {
  const n = os.cpus().length;
  if (n < 2) return [];
  return ['taskset', '-c', side === 'host' ? '0' : String(n - 1)];
}

/** The libxpu threads (xpu-*) of pid: tid -> name. */
function pumpThreads(pid: number): Map<number, string> {
  return new Map([...threadNames(pid)].filter(([, comm]) => comm.startsWith('xpu-')));
}

/** ns on a CPU so far of each end's pump threads, by "end/thread name". */
function pumpCpuNs(link: CpfLink): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [end, pid] of Object.entries(link.pids())) {
    if (!pid) continue; // veth: no process
    for (const [tid, comm] of pumpThreads(pid)) {
      try {
        const ns = Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
        out[`${end}/${comm}`] = (out[`${end}/${comm}`] ?? 0) + ns;
      } catch {
        // thread gone
      }
    }
  }
  return out;
}

const diff = (a: Record<string, number>, b: Record<string, number>) =>
  Object.fromEntries(Object.keys(b).map((k) => [k, b[k] - (a[k] ?? 0)]));

/** sockperf TCP ping-pong: clients in the host half, each with its own server
 * in the DPU half (a sockperf server serves one TCP connection at a time). */
async function rrLoad(link: CpfLink, clients: number, seconds: number, during?: () => Promise<void>): Promise<void> {
  const port = (i: number) => String(15401 + i);
  const srvs: ChildProcess[] = [];
  for (let i = 0; i < clients; i++) {
    srvs.push(spawn('ip', ['netns', 'exec', link.b, ...pin('dpu'), 'sockperf', 'server', '--tcp', '-i', B_IP, '-p', port(i)], { stdio: 'ignore' }));
  }
  await sleep(400 + 50 * clients);
  const cs: Array<Promise<void>> = [];
  for (let i = 0; i < clients; i++) {
    const argv = ['netns', 'exec', link.a, ...pin('host'), 'sockperf', 'ping-pong', '--tcp', '-i', B_IP, '-p', port(i), '-t', String(seconds + 2)];
    cs.push(
      new Promise<void>((resolve) => {
        const c = spawn('ip', argv, { stdio: 'ignore' });
        const t = setTimeout(() => c.kill('SIGKILL'), (seconds + 60) * 1000);
        c.on('exit', () => {
          clearTimeout(t);
          resolve();
        });
      }),
    );
  }
  await sleep(1000); // connections made, warm-up messages gone
  if (during) await during();
  await Promise.all(cs);
  for (const srv of srvs) await stopServer(srv);
}

/** System calls of the given threads over `seconds`, by thread (perf stat). null without perf. */
async function countSyscalls(threads: Map<number, string>, seconds: number): Promise<Map<number, number> | null> {
  if (threads.size === 0 || spawnSync('sh', ['-c', 'command -v perf']).status !== 0) return null;
  const r = await new Promise<{ code: number | null; err: string }>((resolve) => {
    const c = spawn('perf', ['stat', '-x', ',', '--per-thread', '-e', 'raw_syscalls:sys_enter', '-t', [...threads.keys()].join(','), '--', 'sleep', String(seconds)], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    c.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    c.on('exit', (code) => resolve({ code, err }));
  });
  if (r.code !== 0) {
    log(`perf stat failed: ${r.err.trim()}`);
    return null;
  }
  // Lines: "<comm>-<tid>,<count>,,raw_syscalls:sys_enter,..."
  const out = new Map<number, number>();
  for (const line of r.err.split('\n')) {
    const m = line.match(/^\s*\S*?-(\d+),(\d+),/);
    if (m) out.set(Number(m[1]), Number(m[2]));
  }
  return out;
}

// A served DPU end does two things a host's driver would do on its own CPU on
// real hardware: it allocates the buffer of each frame it writes into the host's
// device (tap->ring's write(2)), and frees each one it reads from it (the served
// pump's read(2)). Samples inside these, by call chain:
const HOST_ALLOC = /\b(__alloc_skb|alloc_skb_with_frags|sock_alloc_send_pskb|tun_alloc_skb|build_skb)\b/;
const HOST_FREE = /\b(consume_skb|kfree_skb\w*|__kfree_skb|skb_release_\w+|sk_skb_reason_drop|napi_consume_skb)\b/;

/** Share of each end's pump CPU spent inside write(2) into the TAP device,
 * from perf's CPU-clock samples of the threads (a sample counts when its call
 * chain holds ksys_write), and (hostWork) the share of the DPU end's inside the
 * host driver's work above. null without perf. */
async function writeShares(
  threads: Map<number, string>,
  seconds: number,
): Promise<(Record<'host' | 'dpu', number> & { hostWork: number }) | null> {
  if (threads.size === 0 || spawnSync('sh', ['-c', 'command -v perf']).status !== 0) return null;
  const file = path.join(os.tmpdir(), `bench-xpu-perf-${process.pid}.data`);
  try {
    const rec = await new Promise<number | null>((resolve) => {
      const c = spawn('perf', ['record', '-q', '-F', '4999', '-g', '-o', file, '-t', [...threads.keys()].join(','), '--', 'sleep', String(seconds)], { stdio: 'ignore' });
      c.on('exit', (code) => resolve(code));
    });
    if (rec !== 0) return null;
    const out = spawnSync('perf', ['script', '-i', file, '-F', 'tid,ip,sym'], { encoding: 'utf8', maxBuffer: 1 << 30 }).stdout ?? '';
    const all = { host: 0, dpu: 0 };
    const inWrite = { host: 0, dpu: 0 };
    let hostWork = 0;
    for (const sample of out.split(/\n\s*\n/)) {
      const m = sample.match(/^\s*(\d+)/);
      const name = m ? threads.get(Number(m[1])) : undefined;
      if (!name) continue;
      const end = name.startsWith('host/') ? 'host' : 'dpu';
      all[end]++;
      const writes = /\bksys_write\b/.test(sample);
      if (writes) inWrite[end]++;
      if (name === 'dpu/xpu-tap2ring' && writes && HOST_ALLOC.test(sample)) hostWork++;
      if (name === 'dpu/xpu-served' && /\bksys_read\b/.test(sample) && HOST_FREE.test(sample)) hostWork++;
    }
    return { host: all.host ? inWrite.host / all.host : NaN, dpu: all.dpu ? inWrite.dpu / all.dpu : NaN, hostWork: all.dpu ? hostWork / all.dpu : NaN };
  } finally {
    fs.rmSync(file, { force: true });
  }
}

async function cpfSample(link: CpfLink, clients: number, seconds: number): Promise<CpfSample> {
  let cpu: Record<string, number> = {};
  let busyNs = { host: NaN, dpu: NaN };
  let frames = 0;
  let t = 0;
  await rrLoad(link, clients, seconds, async () => {
    const c0 = pumpCpuNs(link);
    const b0 = cpuTicks();
    const f0 = link.frames();
    const t0 = process.hrtime.bigint();
    await sleep(seconds * 1000);
    cpu = diff(c0, pumpCpuNs(link));
    // Busy time of the CPU each end is pinned to (cpu0, the last CPU).
    const b1 = cpuTicks();
    const n = os.cpus().length;
    if (n > 1) busyNs = { host: cpuSecondsBetween(b0, b1, [0], 'busy') * 1e9, dpu: cpuSecondsBetween(b0, b1, [n - 1], 'busy') * 1e9 };
    frames = link.frames() - f0;
    t = Number(process.hrtime.bigint() - t0) / 1e9;
  });
  // Second phase, counted by perf: system calls per frame, and where the CPU goes.
  const syscalls: Record<string, number> = {};
  const writeShare = { host: NaN, dpu: NaN };
  let hostWorkShare = NaN;
  let syscallFrames = 0;
  const perfS = Math.max(2, Math.round(seconds / 2));
  await rrLoad(link, clients, 2 * perfS, async () => {
    const names = new Map<number, string>();
    for (const [end, pid] of Object.entries(link.pids())) for (const [tid, comm] of pumpThreads(pid)) names.set(tid, `${end}/${comm}`);
    const f0 = link.frames();
    // One after the other: perf record's sampling is left out of the count.
    const counts = await countSyscalls(names, perfS);
    syscallFrames = link.frames() - f0;
    const shares = await writeShares(names, perfS);
    if (counts) for (const [tid, n] of counts) syscalls[names.get(tid)!] = (syscalls[names.get(tid)!] ?? 0) + n;
    if (shares) {
      writeShare.host = shares.host;
      writeShare.dpu = shares.dpu;
      hostWorkShare = shares.hostWork;
    }
  });
  return { frames, writeShare, hostWorkShare, seconds: t, cpuNs: cpu, syscalls, syscallFrames, busyNs };
}

async function cpfIdle(link: CpfLink, seconds: number): Promise<Record<string, number>> {
  await sleep(1000);
  const c0 = pumpCpuNs(link);
  await sleep(seconds * 1000);
  return diff(c0, pumpCpuNs(link));
}

const sumEnd = (r: Record<string, number>, end: string) =>
  Object.entries(r).filter(([k]) => k.startsWith(`${end}/`)).reduce((s, [, v]) => s + v, 0);

async function cpuPerFrame(): Promise<void> {
  const baseIdx = args.indexOf('--base');
  const opt = (name: string, dflt: string) => (args.indexOf(name) >= 0 ? args[args.indexOf(name) + 1] : dflt);
  const hostModes = opt('--host-mode', 'veth,sleep,served').split(',') as CpfMode[];
  for (const m of hostModes) if (m !== 'veth' && !MODES.includes(m)) throw new Error(`--host-mode: ${m} is not veth or one of ${MODES.join(', ')}`);
  const dpuMode = opt('--dpu-mode', 'elastic') as XpuMode;
  const seconds = Number(opt('--seconds', quick ? '3' : '5'));
  const rounds = Number(opt('--rounds', quick ? '1' : '3'));
  const idleS = Number(opt('--idle', quick ? '2' : '5'));
  const loads = [1, 4, 16];
  const variants: CpfVariant[] = [];
  if (baseIdx >= 0) variants.push({ name: 'base', root: path.resolve(args[baseIdx + 1]) });
  variants.push({ name: 'this', root: path.resolve(__dirname, '..', '..') });
  for (const v of variants) {
    for (const f of ['dist/src/xpu/port-process.js', 'build/libxpu.so']) {
      if (!fs.existsSync(path.join(v.root, f))) throw new Error(`${path.join(v.root, f)} does not exist (--base takes a built checkout)`);
    }
  }

  cleanLeftovers();
  const started = new Date().toISOString();
  const links: CpfLink[] = [];
  const samples = new Map<string, CpfSample[]>(); // `${variant}/${clients}`
  const idle = new Map<string, Record<string, number>>();
  try {
    for (const v of variants) {
      for (const m of hostModes) {
        if (m === 'veth' && v.name === 'base') continue; // the kernel's: once
        const l = new CpfLink(v, m, dpuMode);
        links.push(l);
        await l.setUp();
      }
    }
    // Variants alternate within each round, so a change in the machine's load
    // during the run does not favour one of them.
    for (let r = 0; r < rounds; r++) {
      for (const clients of loads) {
        for (const l of links) {
          const s = await cpfSample(l, clients, seconds);
          const key = `${l.name}/${clients}`;
          samples.set(key, [...(samples.get(key) ?? []), s]);
          const us = (end: 'host' | 'dpu') =>
            `${(sumEnd(s.cpuNs, end) / 1000 / s.frames).toFixed(2)} (own ${((sumEnd(s.cpuNs, end) * (1 - s.writeShare[end])) / 1000 / s.frames).toFixed(2)})`;
          const sc = (end: string) => (sumEnd(s.syscalls, end) / s.syscallFrames).toFixed(2);
          const busy = (end: 'host' | 'dpu') => (s.busyNs[end] / 1000 / s.frames).toFixed(2);
          log(`round ${r + 1} ${key}: ${(s.frames / s.seconds / 1000).toFixed(1)}K frames/s; host end ${us('host')} us/frame, ${sc('host')} syscalls/frame; DPU end ${us('dpu')} us/frame, ${sc('dpu')} syscalls/frame; host CPU ${busy('host')}, DPU CPU ${busy('dpu')} us/frame`);
        }
      }
    }
    for (const l of links) {
      idle.set(l.name, await cpfIdle(l, idleS));
      log(`${l.name}: idle ${((sumEnd(idle.get(l.name)!, 'host') + sumEnd(idle.get(l.name)!, 'dpu')) / 1e6 / idleS).toFixed(3)} ms of CPU per second`);
    }
  } finally {
    for (const l of links) await l.tearDown();
    cleanLeftovers();
  }

  const command = `node dist/scripts/bench-xpu.js --cpu-per-frame ${args.filter((a) => a !== '--cpu-per-frame').join(' ')}`.trim();
  const lines: string[] = [
    `XPU link: pump CPU per frame (${command}), ${started}, ${os.cpus().length} CPUs, kernel ${os.release()}`,
    `host end (mode per row)${pin('host').length ? ' on cpu0' : ''}, DPU end mode ${dpuMode}${pin('dpu').length ? ` on cpu${os.cpus().length - 1}` : ''}; ` +
      `sockperf TCP ping-pong, server in the DPU half; median of ${rounds} round(s) of ${seconds} s; frames counted in both directions`,
    '',
    '| clients | libxpu | host end | K frames/s | host end us/frame: all (tap2ring + ring2tap) | host: own | host syscalls/frame | DPU end us/frame: all (tap2ring + ring2tap) | DPU: own | DPU syscalls/frame | host CPU us/frame (all of it) | DPU CPU us/frame (all of it) |',
    '| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  const json: Record<string, unknown> = {};
  for (const clients of loads) {
    for (const l of links) {
      const v = l.variant;
      const ss = samples.get(`${l.name}/${clients}`) ?? [];
      const med = (f: (s: CpfSample) => number) => median(ss.map(f));
      const perFrame = (end: string, thread?: string) =>
        med((s) => (thread ? s.cpuNs[`${end}/${thread}`] ?? 0 : sumEnd(s.cpuNs, end)) / 1000 / s.frames);
      const sys = (end: string) => med((s) => sumEnd(s.syscalls, end) / s.syscallFrames);
      // own: the pump threads' CPU less their share inside write(2), the
      // kernel's receive work for the frames (n/a without perf)
      const own = (end: 'host' | 'dpu') => med((s) => (sumEnd(s.cpuNs, end) * (1 - s.writeShare[end])) / 1000 / s.frames);
      const row = {
        kFramesPerS: med((s) => s.frames / s.seconds / 1000),
        host: { us: perFrame('host'), tap2ring: perFrame('host', 'xpu-tap2ring'), ring2tap: perFrame('host', 'xpu-ring2tap'), own: own('host'), syscalls: sys('host') },
        dpu: { us: perFrame('dpu'), tap2ring: perFrame('dpu', 'xpu-tap2ring'), ring2tap: perFrame('dpu', 'xpu-ring2tap'), served: perFrame('dpu', 'xpu-served'), own: own('dpu'), syscalls: sys('dpu') },
        hostCpu: med((s) => s.busyNs.host / 1000 / s.frames),
        hostWorkOnDpu: med((s) => (sumEnd(s.cpuNs, 'dpu') * s.hostWorkShare) / 1000 / s.frames),
        dpuCpu: med((s) => s.busyNs.dpu / 1000 / s.frames),
      };
      json[`${l.name}/${clients}`] = row;
      // A served DPU end's third pump (host TAP -> DPU TAP) is added to its ring->tap column.
      lines.push(
        `| ${clients} | ${v.name} (${v.root}) | ${l.hostMode} | ${fmt(row.kFramesPerS)} | ${fmt(row.host.us, 2)} (${fmt(row.host.tap2ring, 2)} + ${fmt(row.host.ring2tap, 2)}) | ${fmt(row.host.own, 2)} | ${fmt(row.host.syscalls, 2)} | ` +
          `${fmt(row.dpu.us, 2)} (${fmt(row.dpu.tap2ring, 2)} + ${fmt(row.dpu.ring2tap + row.dpu.served, 2)}) | ${fmt(row.dpu.own, 2)} | ${fmt(row.dpu.syscalls, 2)} | ${fmt(row.hostCpu, 2)} | ${fmt(row.dpuCpu, 2)} |`,
      );
    }
  }
  // What each end costs beyond a wire the kernel serves: the CPU's busy time per
  // frame over the veth pair's, the same load and pinning in the same run.
  const veth = links.find((l) => l.hostMode === 'veth');
  if (veth) {
    lines.push('', 'each end over the veth pair (µs of that end\'s CPU per frame, all of it, less the veth case\'s):');
    for (const clients of loads) {
      const base = json[`${veth.name}/${clients}`] as { hostCpu: number; dpuCpu: number };
      const parts = links
        .filter((l) => l !== veth)
        .map((l) => {
          const r = json[`${l.name}/${clients}`] as { hostCpu: number; dpuCpu: number };
          json[`${l.name}/${clients}/overVeth`] = { host: r.hostCpu - base.hostCpu, dpu: r.dpuCpu - base.dpuCpu };
          return `${l.name}: host ${fmt(r.hostCpu - base.hostCpu, 2)}, DPU ${fmt(r.dpuCpu - base.dpuCpu, 2)}`;
        });
      lines.push(`  ${clients} client(s): ${parts.join('; ')}`);
    }
  }
  const served = links.filter((l) => l.hostMode === 'served');
  if (served.length) {
    lines.push('', "the host driver's work a served DPU end does (µs of its CPU per frame: the buffers of the frames it writes into the host's device, and the freeing of those it reads; perf samples):");
    for (const l of served) {
      lines.push(`  ${l.name}: ${loads.map((c) => `${c} client(s) ${fmt((json[`${l.name}/${c}`] as { hostWorkOnDpu: number }).hostWorkOnDpu, 2)}`).join(', ')}`);
    }
  }
  lines.push('', `idle, ${idleS} s without traffic (ms of CPU per second, all pump and monitor threads):`);
  for (const l of links) {
    const i = idle.get(l.name)!;
    json[`${l.name}/idle`] = i;
    lines.push(`  ${l.name}: host end ${fmt(sumEnd(i, 'host') / 1e6 / idleS, 3)}, DPU end ${fmt(sumEnd(i, 'dpu') / 1e6 / idleS, 3)}`);
  }
  process.stdout.write(lines.join('\n') + '\n');
  const out = outIdx >= 0 ? outFile : path.resolve(__dirname, '..', '..', 'build', 'bench-xpu-cpf.json');
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, JSON.stringify({ command, started, hostModes, dpuMode, seconds, rounds, results: json }, null, 2) + '\n');
  log(`figures written to ${out}`);
}

async function main(): Promise<void> {
  if (process.getuid && process.getuid() !== 0) throw new Error('the benchmark needs root (network namespaces, TAP devices)');
  for (const tool of ['iperf3', 'sockperf', 'ip']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) throw new Error(`${tool} is not installed (make deps)`);
  }
  cleanLeftovers();
  const started = new Date().toISOString();
  const res = {} as Record<Transport, Result>;
  const stop = () => {
    cleanLeftovers();
    process.exit(130);
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    // poll burns every core it can while it exists: measured on its own.
    await singleLink(['veth', 'elastic'], ROUNDS, res);
    await singleLink(['poll'], 1, res);
    for (const t of TRANSPORTS) await busyLinks(t, res[t]);
  } finally {
    cleanLeftovers();
  }
  const tgt = targets(res);
  const command = `node dist/scripts/bench-xpu.js${quick ? ' --quick' : ''}`;
  const machine = { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? '', kernel: os.release(), memGiB: Math.round(os.totalmem() / 2 ** 30) };
  const text =
    `XPU transport benchmark (${command}), ${started}, ${machine.cpus} CPUs (${machine.cpuModel}), kernel ${machine.kernel}\n` +
    `latency: sockperf ping-pong, half round trip in microseconds (veth and elastic: median of ${ROUNDS} alternating rounds); busy links: mean over links\n\n` +
    table(res) +
    '\n\ntargets:\n' +
    tgt.map((t) => `  [${t.met ? 'met' : 'NOT met'}] ${t.target}: ${t.value}`).join('\n') +
    '\n';
  process.stdout.write(text);
  fs.mkdirSync(path.dirname(outFile), { recursive: true });
  fs.writeFileSync(outFile, JSON.stringify({ command, started, machine, seconds: { throughput: THROUGHPUT_S, latency: LATENCY_S, idle: IDLE_S, busy: BUSY_S }, results: res, targets: tgt }, null, 2) + '\n');
  log(`figures written to ${outFile}`);
}

(args.includes('--cpu-per-frame') ? cpuPerFrame() : main()).catch((err) => {
  process.stderr.write(`bench-xpu: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
