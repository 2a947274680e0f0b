// The agent's API from C (src/agentapi/agent-conn.c) through its command,
// build/heteropod-agent-call, plain and under the sanitizers, against the
// agent's real TLS server (src/agent/server.ts) on loopback: the answers'
// fields, the node's shim config read for the address and files, a status the
// agent answers with, a server stream (Events: followed to its end, failed,
// and cancelled, the agent seeing the cancel), and each way the connection can
// fail (an agent whose certificate another CA signed, a client certificate the
// agent refuses, nothing listening), each named in one line on stderr.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { startAgentServer, RunningServer } from '../../src/agent/server';
import { AgentError, aborted, serverStream } from '../../src/agent/errors';
import { Code } from '../../src/common/status';
import { DpuAgentService } from '../../src/agent/service';
import { ensurePki, makeCa, makeLeaf, pkiIn, PkiFiles } from '../../src/dpu/pki';

const build = path.resolve(__dirname, '..', '..', '..', 'build');
const BUILDS = ['heteropod-agent-call', 'heteropod-agent-call-asan'].map((b) => path.join(build, b));
const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

let dir: string;
let pki: PkiFiles;
let server: RunningServer;
let address: string;
let broken = false;
// Each Events stream the agent saw cancelled, by pod id.
const cancelled: string[] = [];

test.before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-agent-call-'));
  const p = path.join(dir, 'pki');
  pki = pkiIn(p);
  assert.is(await ensurePki(pki, '127.0.0.1'), 'made');
  const api = new DpuAgentService({
    version: 'test-c',
    listenAddress: '127.0.0.1:0',
    resources: () => {
      if (broken) throw new Error('cgroup gone');
      return { cpus: [2, 3], memoryTotalBytes: GiB, memoryUsedBytes: 100 * MiB };
    },
  });
  server = await startAgentServer('127.0.0.1:0', { caFile: pki.caCert, certFile: pki.agentCert, keyFile: pki.agentKey }, api, {
    // Three events after `after`; then the end ('ends'), or until cancelled.
    Events: serverStream('Events', async (req: { pod_id: string; after: number }, out, signal) => {
      if (req.pod_id === 'missing') throw new AgentError(Code.NOT_FOUND, 'pod missing: not found');
      for (let i = 1; i <= 3; i++) out.write({ sequence: req.after + i, topic: '/tasks/start', forward: Buffer.alloc(i) });
      if (req.pod_id === 'ends') return;
      await aborted(signal);
      cancelled.push(req.pod_id);
    }),
  });
  address = `127.0.0.1:${server.port}`;
});

test.after(async () => {
  await server?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

// Run as a child the test waits for: the agent's server answers from this process.
function call(bin: string, args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  assert.ok(fs.existsSync(bin), `${bin} is missing: run "make build"`);
  return new Promise((resolve) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: 20_000 });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ status: code ?? -1, stdout, stderr }));
  });
}

const fields = (out: string): Record<string, string> => Object.fromEntries(out.trim().split('\n').map((l) => [l.split(' ')[0], l.slice(l.indexOf(' ') + 1)]));
const tlsArgs = (): string[] => ['--address', address, '--ca', pki.caCert, '--cert', pki.shimCert, '--key', pki.shimKey];

for (const bin of BUILDS) {
  const name = path.basename(bin);

  test(`${name}: Health and Capacity, every field`, async () => {
    const h = await call(bin, [...tlsArgs(), 'Health']);
    assert.is(h.stderr, '');
    assert.is(h.status, 0);
    const hf = fields(h.stdout);
    assert.equal([hf.ok, hf.version, hf.problem, hf.listen_address], ['true', 'test-c', '', '127.0.0.1:0']);
    assert.ok(Number(hf.uptime_seconds) >= 0 && Number(hf.uptime_seconds) < 600, `uptime ${hf.uptime_seconds}`);
    const c = await call(bin, [...tlsArgs(), 'Capacity']);
    assert.is(c.status, 0);
    assert.equal(fields(c.stdout), { cpus: '2', cpuset: '2-3', memory_total_bytes: String(GiB), memory_free_bytes: String(GiB - 100 * MiB), running_containers: '0' });
  });

  test(`${name}: the address and files from the shim config; a status the agent answers with`, async () => {
    const config = path.join(dir, 'shim.toml');
    fs.writeFileSync(config, `[dpu]\n  address = "${address}"\n  ca = "${pki.caCert}"\n  cert = "${pki.shimCert}"\n  key = "${pki.shimKey}"\n`);
    assert.is(fields((await call(bin, ['--config', config, 'Health'])).stdout).ok, 'true');
    broken = true;
    try {
      const r = await call(bin, ['--config', config, 'Capacity']);
      assert.is(r.status, 1);
      assert.match(r.stderr, `DPU agent at ${address}: Capacity: `);
      assert.match(r.stderr, 'cgroup gone');
    } finally {
      broken = false;
    }
    fs.writeFileSync(config, '[dpu]\n  timeout_ms = 100\n');
    const none = await call(bin, ['--config', config, 'Health']);
    assert.is(none.status, 1);
    assert.match(none.stderr, 'no DPU agent is configured');
  });

  test(`${name}: 300 calls on one connection`, async () => {
    const r = await call(bin, [...tlsArgs(), '--repeat', '300', 'Health']);
    assert.is(r.status, 0, r.stderr);
    const m = /^calls 300 wall_ms ([\d.]+) p50_ms ([\d.]+) p90_ms ([\d.]+) cpu_ms ([\d.]+)$/.exec(r.stdout.trim());
    assert.ok(m, r.stdout);
    const [mean, p50, p90, cpu] = m.slice(1).map(Number);
    assert.ok(mean > 0 && p50 > 0 && p50 <= p90 && cpu > 0, r.stdout);
  });

  test(`${name}: refused both ways, and nothing listening, each said`, async () => {
    const other = path.join(dir, `other-${name}`);
    fs.mkdirSync(other, { recursive: true });
    await makeCa(`${other}/ca.key`, `${other}/ca.crt`, 'some other CA');
    await makeLeaf({ key: `${other}/ca.key`, cert: `${other}/ca.crt` }, `${other}/c.key`, `${other}/c.crt`, 'heteropod-shim', ['extendedKeyUsage=clientAuth']);
    // The agent's certificate is not from the CA we trust.
    const untrusted = await call(bin, ['--address', address, '--ca', `${other}/ca.crt`, '--cert', pki.shimCert, '--key', pki.shimKey, 'Health']);
    assert.is(untrusted.status, 1);
    assert.match(untrusted.stderr, `TLS with the DPU agent at ${address} failed`);
    assert.match(untrusted.stderr, 'certificate');
    // Our certificate is not from the agent's CA: refused at the handshake or at the first answer.
    const refused = await call(bin, ['--address', address, '--ca', pki.caCert, '--cert', `${other}/c.crt`, '--key', `${other}/c.key`, 'Health']);
    assert.is(refused.status, 1);
    assert.match(refused.stderr, `TLS with the DPU agent at ${address} failed (certificate refused or not trusted)`);
    assert.is(refused.stdout, '');
    // A port nobody listens on.
    const port = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    const nobody = await call(bin, ['--address', `127.0.0.1:${port}`, '--ca', pki.caCert, '--cert', pki.shimCert, '--key', pki.shimKey, '--timeout-ms', '2000', 'Health']);
    assert.is(nobody.status, 1);
    assert.match(nobody.stderr, `DPU agent at 127.0.0.1:${port} unreachable: Connection refused`);
  });

  test(`${name}: Events followed to the agent's end, failed with its status, and cancelled after --count`, async () => {
    const ends = await call(bin, [...tlsArgs(), '--after', '10', 'Events', 'ends']);
    assert.is(ends.status, 0, ends.stderr);
    assert.is(ends.stdout, [1, 2, 3].map((i) => `sequence ${10 + i} topic /tasks/start forward_bytes ${i}\n`).join(''));
    const missing = await call(bin, [...tlsArgs(), 'Events', 'missing']);
    assert.is(missing.status, 1);
    assert.match(missing.stderr, `DPU agent at ${address}: Events: pod missing: not found`);
    const pod = `forever-${name}`;
    const two = await call(bin, [...tlsArgs(), '--count', '2', 'Events', pod]);
    assert.is(two.status, 0, two.stderr);
    assert.is(two.stdout.trim().split('\n').length, 2);
    for (let i = 0; i < 50 && !cancelled.includes(pod); i++) await new Promise((r) => setTimeout(r, 100));
    assert.ok(cancelled.includes(pod), 'the agent saw the stream cancelled');
  });

  test(`${name}: a bad command line`, async () => {
    for (const args of [['Stats'], [], ['--repeat', '0', 'Health'], ['--bogus', 'x', 'Health'], ['Events'], ['Health', 'extra']]) {
      const r = await call(bin, args);
      assert.is(r.status, 2, args.join(' '));
      assert.match(r.stderr, 'usage: heteropod-agent-call');
    }
    const r = await call(bin, ['--address', 'no-port', '--ca', pki.caCert, '--cert', pki.shimCert, '--key', pki.shimKey, 'Health']);
    assert.is(r.status, 1);
    assert.match(r.stderr, 'DPU agent address no-port: not host:port');
  });
}

test.run();
