// ttrpc 1.2 streams between the server and the client (src/ttrpc) on a socket
// pair: a server stream's messages then its end, a cancel that reaches the
// handler, a client stream read to its end and answered once, a stream that
// fails with a status, a connection that closes under a stream, and a client
// stream read slowly, which pauses the connection instead of buffering without end.
import * as net from 'node:net';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Code, RpcError, TtrpcClient, TtrpcServer } from '../../src/ttrpc';
import { aborted } from '../../src/agent/errors';

const S = 'test.Streams';

async function pair(server: TtrpcServer): Promise<{ client: TtrpcClient; serverSide: net.Socket; close: () => void }> {
  const listener = net.createServer();
  const accepted = new Promise<net.Socket>((resolve) => listener.once('connection', resolve));
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
  const socket = net.connect((listener.address() as net.AddressInfo).port, '127.0.0.1');
  await new Promise((resolve) => socket.once('connect', resolve));
  const serverSide = await accepted;
  server.serve(serverSide);
  listener.close();
  const client = TtrpcClient.over(socket);
  return { client, serverSide, close: () => client.close() };
}

function collect(client: TtrpcClient, method: string, payload: Buffer): { messages: string[]; ended: Promise<Error | null>; handle: ReturnType<TtrpcClient['openStream']> } {
  const messages: string[] = [];
  let end!: (err: Error | null) => void;
  const ended = new Promise<Error | null>((resolve) => (end = resolve));
  const handle = client.openStream(S, method, payload, { data: (p) => messages.push(p.toString()), end: (err) => end(err) });
  return { messages, ended, handle };
}

test('a server stream: its messages in order (an empty one too), then its end', async () => {
  const server = new TtrpcServer();
  server.registerServerStream(S, 'Count', async (payload, sink) => {
    for (let i = 1; i <= Number(payload.toString()); i++) sink.send(Buffer.from(`m${i}`));
    sink.send(Buffer.alloc(0));
  });
  const { client, close } = await pair(server);
  try {
    const s = collect(client, 'Count', Buffer.from('3'));
    assert.is(await s.ended, null);
    assert.equal(s.messages, ['m1', 'm2', 'm3', '']);
  } finally {
    close();
  }
});

test('cancelling a server stream aborts its handler, and nothing more arrives', async () => {
  const server = new TtrpcServer();
  let sawAbort!: () => void;
  const handlerAborted = new Promise<void>((resolve) => (sawAbort = resolve));
  server.registerServerStream(S, 'Forever', async (_p, sink, call) => {
    const timer = setInterval(() => sink.send(Buffer.from('tick')), 5);
    await aborted(call.signal);
    clearInterval(timer);
    sawAbort();
  });
  const { client, close } = await pair(server);
  try {
    const s = collect(client, 'Forever', Buffer.alloc(0));
    while (s.messages.length < 3) await new Promise((r) => setTimeout(r, 5));
    s.handle.cancel();
    await handlerAborted;
    const seen = s.messages.length;
    await new Promise((r) => setTimeout(r, 30));
    assert.is(s.messages.length, seen, 'nothing after the cancel');
    // The connection still serves.
    server.registerServerStream(S, 'One', async (_p, sink) => void sink.send(Buffer.from('x')));
    const again = collect(client, 'One', Buffer.alloc(0));
    assert.is(await again.ended, null);
    assert.equal(again.messages, ['x']);
  } finally {
    close();
  }
});

test('a client stream: every message up to the close, then one answer', async () => {
  const server = new TtrpcServer();
  server.registerClientStream(S, 'Join', async (messages) => {
    const parts: string[] = [];
    for await (const m of messages) parts.push(m.toString());
    return Buffer.from(parts.join('+'));
  });
  const { client, close } = await pair(server);
  try {
    let answer!: (v: { err: Error | null; payload: Buffer }) => void;
    const answered = new Promise<{ err: Error | null; payload: Buffer }>((resolve) => (answer = resolve));
    const h = client.openStream(S, 'Join', Buffer.alloc(0), { data: () => undefined, end: (err, payload) => answer({ err, payload }) });
    for (const w of ['a', 'b', 'c']) assert.ok(h.send(Buffer.from(w)));
    h.close();
    const { err, payload } = await answered;
    assert.is(err, null);
    assert.is(payload.toString(), 'a+b+c');
  } finally {
    close();
  }
});

test('a stream that fails ends with its status; an unknown one is UNIMPLEMENTED', async () => {
  const server = new TtrpcServer();
  server.registerServerStream(S, 'Fail', async (_p, sink) => {
    sink.send(Buffer.from('first'));
    throw new RpcError(Code.NOT_FOUND, 'no such process');
  });
  const { client, close } = await pair(server);
  try {
    const s = collect(client, 'Fail', Buffer.alloc(0));
    const err = (await s.ended) as RpcError;
    assert.equal(s.messages, ['first']);
    assert.is(err.code, Code.NOT_FOUND);
    assert.match(err.message, 'no such process');
    const u = collect(client, 'Nothing', Buffer.alloc(0));
    assert.is(((await u.ended) as RpcError).code, Code.UNIMPLEMENTED);
  } finally {
    close();
  }
});

test('a connection that closes ends its streams with an error, and the server handler is aborted', async () => {
  const server = new TtrpcServer();
  let handlerSignal: AbortSignal | null = null;
  server.registerServerStream(S, 'Hold', async (_p, sink, call) => {
    handlerSignal = call.signal;
    sink.send(Buffer.from('held'));
    await aborted(call.signal);
  });
  const { client, serverSide } = await pair(server);
  const s = collect(client, 'Hold', Buffer.alloc(0));
  while (!s.messages.length) await new Promise((r) => setTimeout(r, 5));
  serverSide.destroy();
  const err = await s.ended;
  assert.ok(err, 'ended with an error');
  await new Promise((r) => setTimeout(r, 10));
  assert.ok(handlerSignal!.aborted);
  client.close();
});

test('a client stream read slowly pauses the connection: the server holds a bounded amount', async () => {
  const server = new TtrpcServer();
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  let total = 0;
  server.registerClientStream(S, 'Slow', async (messages) => {
    await released;
    for await (const m of messages) total += m.length;
    return Buffer.from(String(total));
  });
  const { client, serverSide, close } = await pair(server);
  try {
    let answer!: (p: Buffer) => void;
    const answered = new Promise<Buffer>((resolve) => (answer = resolve));
    const h = client.openStream(S, 'Slow', Buffer.alloc(0), { data: () => undefined, end: (_e, p) => answer(p) });
    const chunk = Buffer.alloc(1 << 20, 7);
    const chunks = 24;
    let sent = 0;
    const pump = async () => {
      while (sent < chunks) {
        sent++;
        if (!h.send(chunk)) await new Promise((r) => client.once('drain', r));
      }
      h.close();
    };
    const pumping = pump();
    await new Promise((r) => setTimeout(r, 300));
    // 4 MiB queued pauses reading; the kernel's and the sockets' buffers hold some more.
    assert.ok(serverSide.isPaused(), 'the server stopped reading');
    assert.ok(sent < chunks, `the client was held back (sent ${sent} of ${chunks} MiB)`);
    release();
    await pumping;
    assert.is((await answered).toString(), String(chunks << 20));
  } finally {
    close();
  }
});

test('many server streams on one connection (a node of pods) add no listener per stream', async () => {
  const server = new TtrpcServer();
  server.registerServerStream(S, 'Hold', async (_p, sink, call) => {
    sink.send(Buffer.from('open'));
    await aborted(call.signal);
  });
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(w.name);
  process.on('warning', onWarning);
  const { client, serverSide, close } = await pair(server);
  try {
    const streams = Array.from({ length: 150 }, () => collect(client, 'Hold', Buffer.alloc(0)));
    while (streams.some((s) => s.messages.length === 0)) await new Promise((r) => setTimeout(r, 5));
    assert.ok(serverSide.listenerCount('drain') <= 1, `drain listeners: ${serverSide.listenerCount('drain')}`);
    for (const s of streams) s.handle.cancel();
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(warnings, []);
  } finally {
    process.off('warning', onWarning);
    close();
  }
});

test.run();
