import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { TtrpcServer, TtrpcClient, RpcError, Code, notFound, encodeFrame, toStatus, FrameDecoder, decodeResponse } from '../../src/ttrpc';
import { decode, encode } from '../../src/proto';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ttrpc-test-'));
const sock = path.join(dir, 's');
const TASK = 'containerd.task.v2.Task';
const errors: Error[] = [];
const server = new TtrpcServer({ onConnectionError: (e) => errors.push(e) });
let release: () => void = () => {};
const namespaces: (string | undefined)[] = [];

server.registerService(TASK, {
  async Wait(payload, call) {
    const req = decode<{ id: string }>('containerd.task.v2.WaitRequest', payload);
    if (req.id !== 'c1') throw notFound(`task ${req.id}`);
    await new Promise<void>((resolve) => { release = resolve; call.signal.addEventListener('abort', () => resolve()); });
    return encode('containerd.task.v2.WaitResponse', { exit_status: 3, exited_at: { seconds: 10, nanos: 5 } });
  },
  async State(payload, call) {
    namespaces.push(call.namespace);
    const req = decode<{ id: string }>('containerd.task.v2.StateRequest', payload);
    return encode('containerd.task.v2.StateResponse', { id: req.id, pid: 42, status: 2 });
  },
  async Kill() {
    throw Object.assign(new Error('kill: no such process'), { code: 'ESRCH' });
  },
  async Stats() {
    throw new Error('boom');
  },
});

test.before(async () => {
  await server.listen(sock);
});

test.after(async () => {
  await server.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('State answers while Wait is blocked on the same connection', async () => {
  const client = await TtrpcClient.connect(sock, { namespace: 'k8s.io' });
  const wait = client.call(TASK, 'Wait', encode('containerd.task.v2.WaitRequest', { id: 'c1' }));
  for (let i = 0; i < 5; i++) {
    const state = decode<{ id: string; pid: number; status: number }>('containerd.task.v2.StateResponse', await client.call(TASK, 'State', encode('containerd.task.v2.StateRequest', { id: 'c1' })));
    assert.equal([state.id, state.pid, state.status], ['c1', 42, 2]);
  }
  assert.equal(namespaces.at(-1), 'k8s.io');
  release();
  const waited = decode<{ exit_status: number; exited_at: { seconds: number } }>('containerd.task.v2.WaitResponse', await wait);
  assert.is(waited.exit_status, 3);
  assert.is(waited.exited_at.seconds, 10);
  client.close();
});

test('error codes: NOT_FOUND, UNIMPLEMENTED, mapped system errors, INTERNAL', async () => {
  const client = await TtrpcClient.connect(sock);
  const code = async (p: Promise<unknown>): Promise<number> => p.then(() => 0, (e: RpcError) => e.code);
  assert.is(await code(client.call(TASK, 'Wait', encode('containerd.task.v2.WaitRequest', { id: 'nope' }))), Code.NOT_FOUND);
  assert.is(await code(client.call(TASK, 'Checkpoint', Buffer.alloc(0))), Code.UNIMPLEMENTED);
  assert.is(await code(client.call('no.Such', 'Thing', Buffer.alloc(0))), Code.UNIMPLEMENTED);
  assert.is(await code(client.call(TASK, 'Kill', Buffer.alloc(0))), Code.NOT_FOUND);
  assert.is(await code(client.call(TASK, 'Stats', Buffer.alloc(0))), Code.INTERNAL);
  client.close();
});

test('status mapping lives in one place', () => {
  assert.equal(toStatus(new RpcError(Code.ALREADY_EXISTS, 'x')), { code: 6, message: 'x' });
  assert.is(toStatus(Object.assign(new Error('gone'), { code: 'ENOENT' })).code, Code.NOT_FOUND);
  assert.is(toStatus('weird').code, Code.INTERNAL);
  assert.is(toStatus(RpcError.wrap(new RpcError(Code.NOT_FOUND, 'task a: not found'), 'kill')).code, Code.NOT_FOUND);
});

function rawExchange(bytes: Buffer, wantFrames: number): Promise<{ frames: ReturnType<FrameDecoder['push']>; closed: boolean }> {
  return new Promise((resolve) => {
    const s = net.connect(sock);
    const d = new FrameDecoder();
    const frames: ReturnType<FrameDecoder['push']> = [];
    let done = false;
    const finish = (closed: boolean): void => { if (!done) { done = true; s.destroy(); resolve({ frames, closed }); } };
    s.on('data', (c) => { frames.push(...d.push(c)); if (frames.length >= wantFrames) finish(false); });
    s.on('close', () => finish(true));
    s.on('error', () => finish(true));
    s.write(bytes);
    setTimeout(() => finish(false), 1000);
  });
}

test('malformed envelope: INVALID_ARGUMENT on that stream, server lives on', async () => {
  const r = await rawExchange(encodeFrame(1, 1, Buffer.from([0xff, 0xff, 0xff])), 1);
  assert.is(r.frames.length, 1);
  const f = r.frames[0];
  assert.ok(f.kind === 'frame');
  if (f.kind === 'frame') assert.is(decodeResponse(f.frame.data).status?.code, Code.INVALID_ARGUMENT);
});

test('even stream id refused, unknown frame type closes the connection', async () => {
  const even = await rawExchange(encodeFrame(2, 1, Buffer.alloc(0)), 1);
  assert.is(even.frames.length, 1);
  const bad = await rawExchange(encodeFrame(1, 9, Buffer.alloc(0)), 1);
  assert.ok(bad.closed);
  assert.is(bad.frames.length, 0);
  assert.ok(errors.some((e) => /unexpected frame type 9/.test(e.message)));
});

test('oversized request answered with RESOURCE_EXHAUSTED, then the connection goes on', async () => {
  const header = Buffer.alloc(10);
  header.writeUInt32BE((4 << 20) + 1, 0);
  header.writeUInt32BE(1, 4);
  header.writeUInt8(1, 8);
  const next = encodeFrame(3, 1, encodeRequestFor('State', encode('containerd.task.v2.StateRequest', { id: 'x' })));
  const r = await rawExchange(Buffer.concat([header, Buffer.alloc((4 << 20) + 1), next]), 2);
  assert.is(r.frames.length, 2);
  const codes = r.frames.map((f) => (f.kind === 'frame' ? decodeResponse(f.frame.data).status?.code ?? 0 : -1));
  assert.equal(codes, [Code.RESOURCE_EXHAUSTED, 0]);
});

function encodeRequestFor(method: string, payload: Buffer): Buffer {
  return encode('ttrpc.Request', { service: TASK, method, payload, timeout_nano: 0, metadata: [] });
}

test('client: a closed connection fails pending calls with UNAVAILABLE', async () => {
  const client = await TtrpcClient.connect(sock);
  const wait = client.call(TASK, 'Wait', encode('containerd.task.v2.WaitRequest', { id: 'c1' }));
  setTimeout(() => client.close(), 20);
  const err = await wait.then(() => null, (e: RpcError) => e);
  assert.is(err?.code, Code.UNAVAILABLE);
  await assert.not.throws(() => client.call(TASK, 'State', Buffer.alloc(0)).catch(() => undefined));
});

test('client: calls time out with DEADLINE_EXCEEDED', async () => {
  const client = await TtrpcClient.connect(sock);
  const err = await client.call(TASK, 'Wait', encode('containerd.task.v2.WaitRequest', { id: 'c1' }), { timeoutMs: 50 }).then(() => null, (e: RpcError) => e);
  assert.is(err?.code, Code.DEADLINE_EXCEEDED);
  client.close();
});

test('client: an aborted signal is CANCELLED, a passed deadline DEADLINE_EXCEEDED', async () => {
  const client = await TtrpcClient.connect(sock);
  const wait = () => encode('containerd.task.v2.WaitRequest', { id: 'c1' });
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 20);
  const cancelled = await client.call(TASK, 'Wait', wait(), { signal: ac.signal }).then(() => null, (e: RpcError) => e);
  assert.is(cancelled?.code, Code.CANCELLED);
  const late = await client.call(TASK, 'Wait', wait(), { signal: AbortSignal.any([new AbortController().signal, AbortSignal.timeout(20)]) }).then(() => null, (e: RpcError) => e);
  assert.is(late?.code, Code.DEADLINE_EXCEEDED);
  client.close();
});

test.run();
