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
import { ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { addAddress } from '../src/xpu/link';
import { XpuMode, XpuWindow, listWindows, removeWindow, windowPath } from '../src/xpu/window';

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

main().catch((err) => {
  process.stderr.write(`bench-xpu: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
