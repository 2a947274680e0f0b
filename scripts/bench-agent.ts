// What one call to the DPU agent costs the host: the node daemon's client (ttrpc
// over mutual TLS, src/agentapi) against a gRPC baseline (grpc-js over the same
// mutual TLS, the agent API's Health message), both served by one server process
// as the agent serves, each client in a process with the node daemon's flags; and
// the agent's API from C (src/agentapi/agent-conn.c, through
// build/heteropod-agent-call --repeat), what a node daemon in C would pay.
// Sequential Health calls; rounds alternate between the clients; medians of rounds.
//
//   node dist/scripts/bench-agent.js [--calls 1000] [--rounds 4]
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { arg, median, stats } from './bench-lib';
import { ensurePki, pkiIn } from '../src/dpu/pki';
import { NODE_DAEMON_FLAGS } from '../src/shim/install';

type Result = { transport: string; medianMs: number; p90Ms: number; cpuMsPerCall: number };

const role = process.argv[2];

// agent.proto's service as grpc-js loads it (the baseline's both ends).
async function grpcAgentService(): Promise<any> {
  const grpc = await import('@grpc/grpc-js');
  const protoLoader = await import('@grpc/proto-loader');
  const { AGENT_PROTO } = await import('../src/agentapi/proto');
  const def = protoLoader.loadSync(AGENT_PROTO, { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true });
  return (grpc.loadPackageDefinition(def) as any).heteropod.agent.v1.DpuAgent;
}

async function serve(pkiDir: string): Promise<void> {
  const { startAgentServer } = await import('../src/agent/server');
  const { DpuAgentService } = await import('../src/agent/service');
  const grpc = await import('@grpc/grpc-js');
  const api = new DpuAgentService({ version: 'bench', listenAddress: '127.0.0.1:0', resources: () => ({ cpus: [0], memoryTotalBytes: 1 << 30, memoryUsedBytes: 0 }) });
  const files = { caFile: `${pkiDir}/ca.crt`, certFile: `${pkiDir}/agent.crt`, keyFile: `${pkiDir}/agent.key` };
  const ttrpc = await startAgentServer('127.0.0.1:0', files, api);
  // The baseline: the same message over gRPC.
  const server = new grpc.Server();
  server.addService((await grpcAgentService()).service, { Health: (_call: unknown, cb: (e: null, r: object) => void) => void api.health().then((h) => cb(null, h)) });
  const read = (f: string) => fs.readFileSync(f);
  const creds = grpc.ServerCredentials.createSsl(read(files.caFile), [{ cert_chain: read(files.certFile), private_key: read(files.keyFile) }], true);
  const grpcPort = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', creds, (e, p) => (e ? reject(e) : resolve(p))));
  process.stdout.write(`${JSON.stringify({ ttrpc: ttrpc.port, grpc: grpcPort })}\n`);
  process.stdin.resume();
  process.stdin.on('end', () => process.exit(0));
}

async function client(pkiDir: string, transport: string, port: number, calls: number): Promise<void> {
  let call: () => Promise<unknown>;
  let close: () => void;
  if (transport === 'ttrpc') {
    const { DpuAgentClient } = await import('../src/agentapi/client');
    const c = DpuAgentClient.connect({ address: `127.0.0.1:${port}`, caFile: `${pkiDir}/ca.crt`, certFile: `${pkiDir}/shim.crt`, keyFile: `${pkiDir}/shim.key` });
    call = () => c.call('Health');
    close = () => c.close();
  } else {
    const grpc = await import('@grpc/grpc-js');
    const Ctor = await grpcAgentService();
    const read = (f: string) => fs.readFileSync(`${pkiDir}/${f}`);
    const c = new Ctor(`127.0.0.1:${port}`, grpc.credentials.createSsl(read('ca.crt'), read('shim.key'), read('shim.crt')), { 'grpc.ssl_target_name_override': 'heteropod-dpu-agent', 'grpc.default_authority': 'heteropod-dpu-agent' });
    call = () => new Promise((resolve, reject) => c.Health({}, (e: Error | null, r: unknown) => (e ? reject(e) : resolve(r))));
    close = () => c.close();
  }
  for (let i = 0; i < 100; i++) await call();
  const times: number[] = [];
  const cpu0 = process.cpuUsage();
  for (let i = 0; i < calls; i++) {
    const t0 = process.hrtime.bigint();
    await call();
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  const cpu = process.cpuUsage(cpu0);
  close();
  const result: Result = { transport, medianMs: median(times), p90Ms: stats(times).p90, cpuMsPerCall: (cpu.user + cpu.system) / 1000 / calls };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

const AGENT_CALL = path.resolve(__dirname, '..', '..', 'build', 'heteropod-agent-call');

function runClient(pkiDir: string, transport: string, port: number, calls: number): Result {
  if (transport === 'c') {
    const tls = ['--ca', `${pkiDir}/ca.crt`, '--cert', `${pkiDir}/shim.crt`, '--key', `${pkiDir}/shim.key`];
    const line = execFileSync(AGENT_CALL, ['--address', `127.0.0.1:${port}`, ...tls, '--repeat', String(calls), 'Health'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
    const m = /p50_ms ([\d.]+) p90_ms ([\d.]+) cpu_ms ([\d.]+)/.exec(line);
    if (!m) throw new Error(`heteropod-agent-call said: ${line}`);
    return { transport, medianMs: Number(m[1]), p90Ms: Number(m[2]), cpuMsPerCall: Number(m[3]) };
  }
  const out = execFileSync(process.execPath, [...NODE_DAEMON_FLAGS, __filename, 'client', pkiDir, transport, String(port), String(calls)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  return JSON.parse(out.trim().split('\n').pop()!) as Result;
}

async function main(): Promise<void> {
  const calls = Number(arg('calls', '1000'));
  const rounds = Number(arg('rounds', '4'));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-bench-agent-'));
  const p = path.join(dir, 'pki');
  const pki = pkiIn(p);
  await ensurePki(pki, '127.0.0.1');
  const server = spawn(process.execPath, [__filename, 'serve', p], { stdio: ['pipe', 'pipe', 'inherit'] });
  try {
    const ports = await new Promise<{ ttrpc: number; grpc: number }>((resolve, reject) => {
      let buf = '';
      server.stdout!.on('data', (d: Buffer) => {
        buf += d.toString();
        if (buf.includes('\n')) resolve(JSON.parse(buf.split('\n')[0]));
      });
      server.once('exit', (code) => reject(new Error(`the server exited (${code})`)));
    });
    if (!fs.existsSync(AGENT_CALL)) throw new Error(`${AGENT_CALL} is missing: run "make build"`);
    const results: Record<string, Result[]> = { ttrpc: [], grpc: [], c: [] };
    const order = ['ttrpc', 'grpc', 'c'];
    for (let r = 0; r < rounds; r++) {
      // Each client first, second and last in turn.
      for (const t of order.map((_, k) => order[(r + k) % order.length])) results[t].push(runClient(p, t, t === 'grpc' ? ports.grpc : ports.ttrpc, calls));
    }
    const sum = (t: string) => ({
      medianMs: median(results[t].map((x) => x.medianMs)),
      p90Ms: median(results[t].map((x) => x.p90Ms)),
      cpuMsPerCall: median(results[t].map((x) => x.cpuMsPerCall)),
    });
    const a = sum('ttrpc');
    const b = sum('grpc');
    const c = sum('c');
    console.log(`one Health call to the agent's server over mutual TLS on loopback, ${calls} calls a round, ${rounds} rounds alternating; ${new Date().toISOString().slice(0, 16)}Z`);
    console.log('| client | latency median ms | latency p90 ms | client CPU per call ms |');
    console.log('| --- | ---: | ---: | ---: |');
    console.log(`| ttrpc (the node daemon's) | ${a.medianMs.toFixed(3)} | ${a.p90Ms.toFixed(3)} | ${a.cpuMsPerCall.toFixed(3)} |`);
    console.log(`| gRPC, grpc-js (baseline) | ${b.medianMs.toFixed(3)} | ${b.p90Ms.toFixed(3)} | ${b.cpuMsPerCall.toFixed(3)} |`);
    console.log(`| ttrpc from C (agent-conn.c) | ${c.medianMs.toFixed(3)} | ${c.p90Ms.toFixed(3)} | ${c.cpuMsPerCall.toFixed(3)} |`);
    console.log(`ratio ttrpc/gRPC: latency ${(a.medianMs / b.medianMs).toFixed(2)}x, client CPU per call ${(a.cpuMsPerCall / b.cpuMsPerCall).toFixed(2)}x`);
    console.log(`ratio C/ttrpc (the node daemon's): latency ${(c.medianMs / a.medianMs).toFixed(2)}x, client CPU per call ${(c.cpuMsPerCall / a.cpuMsPerCall).toFixed(2)}x`);
  } finally {
    server.stdin!.end();
    server.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (role === 'serve') void serve(process.argv[3]);
else if (role === 'client') void client(process.argv[3], process.argv[4], Number(process.argv[5]), Number(process.argv[6]));
else main().catch((err) => {
  console.error(`bench-agent: ${(err as Error).message}`);
  process.exit(1);
});
