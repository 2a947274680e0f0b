// The agent's server and client (ttrpc over mutual TLS) on loopback, with
// certificates made the way `dpu up` makes them: the right client is served, a
// client from another CA or without a certificate is refused, a dead address is
// "unreachable", streams both ways carry agent.proto's messages (a server stream's
// pause holds them back, its cancel reaches the agent), an agent that restarts is
// dialled again, and the resource parsers read cgroup files right.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { assertManagementLink, CAPACITY_FRESH_MS, DpuAgentClient, DpuAgentError } from '../../src/agentapi/client';
import { startAgentServer, RunningServer } from '../../src/agent/server';
import { AgentError, aborted, clientStream, serverStream } from '../../src/agent/errors';
import { Code } from '../../src/common/status';
import type { LayerChunk, TaskEventMessage } from '../../src/agentapi/proto';
import { DpuAgentService } from '../../src/agent/service';
import { capacityOf, effectiveMemoryLimit, parseMemTotal, parseProcCgroup } from '../../src/agent/resources';
import { ensurePki, makeCa, makeLeaf, pkiIn, PkiFiles } from '../../src/dpu/pki';

let dir: string;
let pki: PkiFiles;
let server: RunningServer;
let address: string;
const GiB = 1024 ** 3;

test.before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-agent-unit-'));
  const p = path.join(dir, 'pki');
  pki = pkiIn(p);
  assert.is(await ensurePki(pki, '127.0.0.1'), 'made');
  const api = new DpuAgentService({
    version: 'test',
    listenAddress: '127.0.0.1:0',
    resources: () => ({ cpus: [3], memoryTotalBytes: GiB, memoryUsedBytes: 100 * 1024 * 1024 }),
  });
  server = await startAgentServer('127.0.0.1:0', { caFile: pki.caCert, certFile: pki.agentCert, keyFile: pki.agentKey }, api);
  address = `127.0.0.1:${server.port}`;
});

test.after(async () => {
  await server?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a second ensurePki keeps the set', async () => {
  const ca = fs.readFileSync(pki.caCert, 'utf8');
  assert.is(await ensurePki(pki, '127.0.0.1'), 'kept');
  assert.is(fs.readFileSync(pki.caCert, 'utf8'), ca);
  assert.is(fs.statSync(pki.caKey).mode & 0o777, 0o600);
});

test('the shim certificate gets Health and Capacity', async () => {
  const c = DpuAgentClient.connect({ address, caFile: pki.caCert, certFile: pki.shimCert, keyFile: pki.shimKey });
  try {
    const h = await c.health();
    assert.is(h.ok, true);
    assert.is(h.version, 'test');
    assert.ok(h.uptime_seconds >= 0);
    const cap = await c.capacity();
    assert.equal(cap, { cpus: 1, cpuset: '3', memory_total_bytes: GiB, memory_free_bytes: GiB - 100 * 1024 * 1024, running_containers: 0 });
  } finally {
    c.close();
  }
});

/** An agent of its own whose resources are counted as they are read (and fail while `count.broken`), and a client. */
async function countingAgent(used: (asked: number) => number): Promise<{ own: RunningServer; count: { asked: number; broken: boolean }; c: DpuAgentClient }> {
  const count = { asked: 0, broken: false };
  const api = new DpuAgentService({
    version: 'test',
    listenAddress: '127.0.0.1:0',
    resources: () => {
      count.asked++;
      if (count.broken) throw new Error('cgroup gone');
      return { cpus: [3], memoryTotalBytes: GiB, memoryUsedBytes: used(count.asked) };
    },
  });
  const own = await startAgentServer('127.0.0.1:0', { caFile: pki.caCert, certFile: pki.agentCert, keyFile: pki.agentKey }, api);
  const c = DpuAgentClient.connect({ address: `127.0.0.1:${own.port}`, caFile: pki.caCert, certFile: pki.shimCert, keyFile: pki.shimKey });
  return { own, count, c };
}

test('a healthy answer stands a while, so pods starting together ask once; an unhealthy one is asked again', async () => {
  const { own, count, c } = await countingAgent(() => 0);
  try {
    const answers = await Promise.all([c.health(), c.health(), c.health()]);
    assert.ok(answers.every((h) => h.ok));
    assert.is(count.asked, 1, 'three pods at once: one Health');
    await c.health();
    assert.is(count.asked, 1, 'still fresh');
    // A new connection (another daemon) asks for itself.
    const other = DpuAgentClient.connect({ address: `127.0.0.1:${own.port}`, caFile: pki.caCert, certFile: pki.shimCert, keyFile: pki.shimKey });
    await other.health().finally(() => other.close());
    assert.is(count.asked, 2);
  } finally {
    c.close();
  }
  // Unhealthy: not kept, the next call asks again (and sees it healthy once it is).
  const d = DpuAgentClient.connect({ address: `127.0.0.1:${own.port}`, caFile: pki.caCert, certFile: pki.shimCert, keyFile: pki.shimKey });
  try {
    count.broken = true;
    const bad = await d.health();
    assert.is(bad.ok, false);
    assert.match(bad.problem, /cgroup gone/);
    count.broken = false;
    assert.is((await d.health()).ok, true);
    assert.is(count.asked, 4);
  } finally {
    d.close();
    await own.stop();
  }
});

test('a Capacity answer stands a second, so pods starting together ask once; then, or after a failure, it is asked again', async () => {
  const MiB = 1024 * 1024;
  const { own, count, c } = await countingAgent((asked) => asked * MiB);
  const later = () => new Promise((r) => setTimeout(r, CAPACITY_FRESH_MS + 50));
  try {
    const answers = await Promise.all([c.capacity(), c.capacity(), c.capacity()]);
    assert.is(count.asked, 1, 'three pods at once: one Capacity');
    assert.ok(answers.every((a) => a.memory_free_bytes === GiB - MiB));
    await later();
    assert.is((await c.capacity()).memory_free_bytes, GiB - 2 * MiB, 'asked again once a second has passed');
    assert.is(count.asked, 2);
    await later();
    count.broken = true;
    await c.capacity().then(
      () => assert.unreachable('a failed Capacity'),
      (err: DpuAgentError) => assert.match(err.message, /cgroup gone/),
    );
    count.broken = false;
    assert.is((await c.capacity()).memory_free_bytes, GiB - 4 * MiB, 'a failure is not kept');
    assert.is(count.asked, 4);
  } finally {
    c.close();
    await own.stop();
  }
});

async function refusal(c: DpuAgentClient): Promise<DpuAgentError> {
  try {
    await c.health();
  } catch (err) {
    return err as DpuAgentError;
  } finally {
    c.close();
  }
  throw new Error('the call was served');
}

test('a client certificate from another CA is refused', async () => {
  const other = path.join(dir, 'other');
  fs.mkdirSync(other);
  await makeCa(`${other}/ca.key`, `${other}/ca.crt`, 'some other CA');
  await makeLeaf({ key: `${other}/ca.key`, cert: `${other}/ca.crt` }, `${other}/c.key`, `${other}/c.crt`, 'heteropod-shim', ['extendedKeyUsage=clientAuth']);
  const err = await refusal(DpuAgentClient.connect({ address, caFile: pki.caCert, certFile: `${other}/c.crt`, keyFile: `${other}/c.key`, timeoutMs: 3000 }));
  assert.instance(err, DpuAgentError);
  assert.is(err.kind, 'tls', err.message);
});

test('a client without a certificate is refused', async () => {
  const err = await refusal(DpuAgentClient.connect({ address, caFile: pki.caCert, timeoutMs: 3000 }));
  assert.is(err.kind, 'tls', err.message);
});

test('an agent from another CA is not trusted by the client', async () => {
  const err = await refusal(DpuAgentClient.connect({ address, caFile: path.join(dir, 'other', 'ca.crt'), certFile: pki.shimCert, keyFile: pki.shimKey, timeoutMs: 3000 }));
  assert.is(err.kind, 'tls', err.message);
});

test('nothing listening is unreachable', async () => {
  const err = await refusal(DpuAgentClient.connect({ address: '127.0.0.1:1', caFile: pki.caCert, certFile: pki.shimCert, keyFile: pki.shimKey, timeoutMs: 1500 }));
  assert.is(err.kind, 'unreachable', err.message);
  assert.match(err.message, 'DPU agent at 127.0.0.1:1 unreachable');
});

test('streams both ways: messages in order, pause holds them back, cancel reaches the agent, an error ends one with its code', async () => {
  let cancelled!: () => void;
  const agentSawCancel = new Promise<void>((resolve) => (cancelled = resolve));
  const api = new DpuAgentService({ version: 'test', listenAddress: '127.0.0.1:0', resources: () => ({ cpus: [3], memoryTotalBytes: GiB, memoryUsedBytes: 0 }) });
  const own = await startAgentServer('127.0.0.1:0', { caFile: pki.caCert, certFile: pki.agentCert, keyFile: pki.agentKey }, api, {
    Events: serverStream('Events', async (req: { pod_id: string; after: number }, out, signal) => {
      if (req.pod_id === 'missing') throw new AgentError(Code.NOT_FOUND, 'pod missing: not found');
      for (let i = 1; i <= 3; i++) out.write({ sequence: req.after + i, topic: '/tasks/start', forward: Buffer.from([i]) });
      if (req.pod_id === 'ends') return;
      await aborted(signal);
      cancelled();
    }),
    PutLayer: clientStream('PutLayer', async (messages: AsyncIterable<LayerChunk>) => {
      let digest = '';
      let bytes = 0;
      for await (const m of messages) {
        digest ||= m.digest;
        bytes += m.data.length;
      }
      return { digest, bytes_received: bytes, already_present: false };
    }),
  });
  const c = DpuAgentClient.connect({ address: `127.0.0.1:${own.port}`, caFile: pki.caCert, certFile: pki.shimCert, keyFile: pki.shimKey });
  try {
    // Ends by itself: three messages, held back by a pause, then 'status' OK and 'end'.
    const ends = c.serverStream<TaskEventMessage>('Events', { pod_id: 'ends', after: 10 });
    ends.pause();
    const got: number[] = [];
    const order: string[] = [];
    ends.on('data', (e: TaskEventMessage) => got.push(e.sequence));
    ends.on('status', (s: { code: number }) => order.push(`status ${s.code}`));
    const ended = new Promise<void>((resolve) => ends.on('end', () => resolve()));
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(got, [], 'held back while paused');
    ends.resume();
    await ended;
    assert.equal(got, [11, 12, 13]);
    assert.equal(order, ['status 0']);
    // Cancelled by the host: the agent's handler sees it.
    const open = c.serverStream<TaskEventMessage>('Events', { pod_id: 'open', after: 0 });
    const first = new Promise<void>((resolve) => open.once('data', () => resolve()));
    await first;
    open.cancel();
    await agentSawCancel;
    // An error: 'error' with the agent's code, then 'status'.
    const missing = c.serverStream<TaskEventMessage>('Events', { pod_id: 'missing', after: 0 });
    const err = await new Promise<DpuAgentError>((resolve) => missing.on('error', resolve));
    assert.is(err.kind, 'call');
    assert.is(err.code, Code.NOT_FOUND);
    // A client stream: every chunk, then the one answer.
    const answer = await new Promise<{ digest: string; bytes_received: number }>((resolve, reject) => {
      const up = c.clientStream<LayerChunk, { digest: string; bytes_received: number }>('PutLayer', (e, res) => (e ? reject(e) : resolve(res!)));
      up.write({ digest: 'sha256:abc', size: 6, data: Buffer.alloc(0) });
      up.write({ digest: '', size: 0, data: Buffer.from('abc') });
      up.write({ digest: '', size: 0, data: Buffer.from('def') });
      up.end();
    });
    assert.equal(answer, { digest: 'sha256:abc', bytes_received: 6, already_present: false });
    // A message larger than a frame holds (4 MiB) fails its stream, and only it.
    const tooBig = await new Promise<DpuAgentError>((resolve) => {
      const up = c.clientStream<LayerChunk, object>('PutLayer', (e) => resolve(e!));
      up.write({ digest: 'sha256:big', size: 5 << 20, data: Buffer.alloc(0) });
      up.write({ digest: '', size: 0, data: Buffer.alloc(5 << 20) });
    });
    assert.is(tooBig.code, Code.INVALID_ARGUMENT);
    assert.match(tooBig.message, /PutLayer: ttrpc frame of \d+ bytes exceeds/);
    assert.is((await c.capacity()).cpus, 1, 'the connection still serves');
  } finally {
    c.close();
    await own.stop();
  }
});

test('an agent that restarts: calls in flight fail unreachable, the next call dials again', async () => {
  const api = new DpuAgentService({ version: 'test', listenAddress: '127.0.0.1:0', resources: () => ({ cpus: [3], memoryTotalBytes: GiB, memoryUsedBytes: 0 }) });
  const files = { caFile: pki.caCert, certFile: pki.agentCert, keyFile: pki.agentKey };
  const first = await startAgentServer('127.0.0.1:0', files, api, {
    Events: serverStream('Events', async (_req: unknown, _out, signal) => aborted(signal)),
  });
  const port = first.port;
  const c = DpuAgentClient.connect({ address: `127.0.0.1:${port}`, caFile: pki.caCert, certFile: pki.shimCert, keyFile: pki.shimKey, timeoutMs: 2000 });
  try {
    assert.is((await c.capacity()).cpus, 1);
    const stream = c.serverStream<TaskEventMessage>('Events', { pod_id: 'p', after: 0 });
    const broken = new Promise<DpuAgentError>((resolve) => stream.on('error', resolve));
    await new Promise((r) => setTimeout(r, 50));
    await first.stop();
    const err = await broken;
    assert.is(err.kind, 'unreachable', err.message);
    const second = await startAgentServer(`127.0.0.1:${port}`, files, api);
    try {
      // The failed dial just now may stand for a moment (RECONNECT_MS); then it dials again.
      let cap;
      for (let i = 0; i < 20 && !cap; i++) cap = await c.capacity().catch(() => new Promise((r) => setTimeout(r, 50)).then(() => undefined));
      assert.ok(cap, 'the client dialled the new agent');
    } finally {
      await second.stop();
    }
  } finally {
    c.close();
  }
});

test('a missing certificate file is named', () => {
  assert.throws(() => DpuAgentClient.connect({ address, caFile: '/nonexistent/ca.crt' }), /read CA certificate \/nonexistent\/ca.crt/);
});

test('resource parsers', () => {
  const cg = parseProcCgroup('12:pids:/heteropod-dpu\n4:cpu,cpuacct:/x\n3:cpuset:/heteropod-dpu\n0::/\n');
  assert.is(cg.get('cpuset'), '/heteropod-dpu');
  assert.is(cg.get('cpuacct'), '/x');
  assert.is(cg.get('cpu'), '/x');
  assert.is(parseMemTotal('MemTotal:        4000000 kB\nMemFree: 1 kB\n'), 4_096_000_000);
  assert.is(effectiveMemoryLimit(GiB, 4 * GiB), GiB);
  assert.is(effectiveMemoryLimit(9223372036854771712, 4 * GiB), 4 * GiB);
  assert.equal(capacityOf({ cpus: [2, 3], memoryTotalBytes: GiB, memoryUsedBytes: 2 * GiB }, 0), { cpus: 2, cpuset: '2-3', memory_total_bytes: GiB, memory_free_bytes: 0, running_containers: 0 });
});


test('the management address is never dialed without the management link', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-net-'));
  try {
    assert.throws(() => assertManagementLink('192.168.100.2:7443', dir), /management link tmfifo_net0 does not exist/);
    fs.mkdirSync(path.join(dir, 'tmfifo_net0'));
    assertManagementLink('192.168.100.2:7443', dir);
    assertManagementLink('127.0.0.1:7443', path.join(dir, 'none'));
  } finally {
    fs.rmSync(dir, { recursive: true });
  }
});

test.run();
