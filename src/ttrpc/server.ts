// A ttrpc server on a unix socket, or on any connected socket handed to serve()
// (the DPU agent's, over mutual TLS). Each connection decodes frames and runs every
// request concurrently (a Wait may stay open for the life of a task while State
// and Kill calls come and go on the same connection); responses go back in
// completion order, each with its request's stream id. A broken frame or envelope
// costs only that stream or that connection, never the process.
//
// Streams (ttrpc 1.2): a server-streaming method sends data frames, then ends
// with a response carrying the status; its client opens the request `remote open`
// and closing its side (a data frame `remote closed`) cancels the call. A
// client-streaming method reads the client's data frames up to the one marked
// `remote closed`, then answers once. The connection has no flow control of its
// own: a sender learns of a full socket from send()'s false and 'drain', and a
// client stream read more slowly than it comes pauses the connection's reading.
import * as net from 'node:net';
import { FrameDecoder, FrameFlags, FrameType, encodeFrame, MAX_DATA } from './frame';
import { decodeRequest, encodeResponse, KeyValue, NAMESPACE_KEY, RequestEnvelope } from './messages';
import { Code, RpcError, RpcStatus, toStatus, unimplemented } from '../common/status';

export interface CallContext {
  service: string;
  method: string;
  metadata: KeyValue[];
  // containerd's namespace for this call, from the request metadata.
  namespace: string | undefined;
  // Aborted when the peer goes away or the request's deadline passes.
  signal: AbortSignal;
  // What the service keeps for the connection this call came on (e.g. who is on
  // the other end), the same object for every call of that connection.
  connection: ConnectionState;
  // Encoded fields appended to this call's Response message after status and
  // payload, for a peer that reads them (the node daemon's `placed`).
  trailer?: Uint8Array;
}

export interface ConnectionState {
  value?: unknown;
  // Aborted when the connection closes.
  readonly closed: AbortSignal;
}

export type Handler = (payload: Buffer, call: CallContext) => Promise<Uint8Array>;

/** Where a server-streaming handler sends its messages. */
export interface StreamSink {
  /** One message as a data frame; false: the socket is full, wait for onDrain. */
  send(payload: Uint8Array): boolean;
  /** Told each time the socket has room again, until the call ends. */
  onDrain(fn: () => void): void;
}

/** Sends messages until it resolves (the stream's end, OK) or rejects (its status). call.signal: cancelled. */
export type ServerStreamHandler = (payload: Buffer, sink: StreamSink, call: CallContext) => Promise<void>;

/** Reads the client's messages (every data frame up to `remote closed`), then answers once. */
export type ClientStreamHandler = (messages: AsyncIterable<Buffer>, call: CallContext) => Promise<Uint8Array>;

type Registered =
  | { kind: 'unary'; fn: Handler }
  | { kind: 'server'; fn: ServerStreamHandler }
  | { kind: 'client'; fn: ClientStreamHandler };

// A client stream's messages not yet read past this pause the connection's reading.
const CLIENT_STREAM_HIGH_WATER = 4 << 20;

/** The messages of one client stream, as the handler reads them. */
class Inbox implements AsyncIterable<Buffer> {
  private readonly queue: Buffer[] = [];
  private bytes = 0;
  private ended: Error | null | undefined;
  private wake: (() => void) | null = null;

  constructor(private readonly full: (full: boolean) => void) {}

  push(b: Buffer): void {
    this.queue.push(b);
    this.bytes += b.length;
    if (this.bytes > CLIENT_STREAM_HIGH_WATER) this.full(true);
    this.wake?.();
  }

  end(err: Error | null = null): void {
    if (this.ended === undefined) this.ended = err;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Buffer> {
    for (;;) {
      const next = this.queue.shift();
      if (next) {
        this.bytes -= next.length;
        if (this.bytes <= CLIENT_STREAM_HIGH_WATER / 4) this.full(false);
        yield next;
        continue;
      }
      if (this.ended !== undefined) {
        if (this.ended) throw this.ended;
        return;
      }
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = null;
    }
  }
}

export interface ServerHooks {
  // Told about every connection-level fault (bad frame, socket error), for the log.
  onConnectionError?: (err: Error) => void;
  // Told about every finished call, for debug tracing.
  onCall?: (call: CallContext, status: RpcStatus | null, ms: number) => void;
}

export class TtrpcServer {
  private readonly handlers = new Map<string, Registered>();
  private readonly sockets = new Set<net.Socket>();
  private server: net.Server | null = null;

  constructor(private readonly hooks: ServerHooks = {}) {}

  register(service: string, method: string, handler: Handler): void {
    this.handlers.set(`${service}/${method}`, { kind: 'unary', fn: handler });
  }

  registerServerStream(service: string, method: string, handler: ServerStreamHandler): void {
    this.handlers.set(`${service}/${method}`, { kind: 'server', fn: handler });
  }

  registerClientStream(service: string, method: string, handler: ClientStreamHandler): void {
    this.handlers.set(`${service}/${method}`, { kind: 'client', fn: handler });
  }

  registerService(service: string, methods: Record<string, Handler>): void {
    for (const [method, handler] of Object.entries(methods)) this.register(service, method, handler);
  }

  // A socket path, or an already listening socket passed as a descriptor.
  listen(socketPath: string | { fd: number }): Promise<void> {
    return new Promise((resolve, reject) => {
      const server = net.createServer((socket) => this.serve(socket));
      server.once('error', reject);
      server.listen(socketPath, () => {
        server.off('error', reject);
        server.on('error', (err) => this.hooks.onConnectionError?.(err));
        this.server = server;
        resolve();
      });
    });
  }

  // Stops accepting and drops every connection.
  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    const server = this.server;
    this.server = null;
    if (!server) return Promise.resolve();
    return new Promise((resolve) => server.close(() => resolve()));
  }

  get connections(): number {
    return this.sockets.size;
  }

  // Serves one connection: a unix socket's, or one made elsewhere (TLS), or one of a socket pair in tests.
  serve(socket: net.Socket): void {
    this.sockets.add(socket);
    const decoder = new FrameDecoder();
    const closed = new AbortController();
    const state: ConnectionState = { closed: closed.signal };
    // Open streams: their inbox (client streams) or their cancel (server streams).
    const streams = new Map<number, { inbox?: Inbox; cancel?: AbortController }>();
    const full = new Set<number>();
    // The server streams waiting for room: one 'drain' listener for all of them.
    const drainWaiters = new Set<() => void>();
    socket.on('drain', () => drainWaiters.forEach((fn) => fn()));
    const send = (streamId: number, status: RpcStatus | null, payload: Uint8Array, trailer?: Uint8Array): void => {
      if (socket.destroyed) return;
      let data = encodeResponse({ status, payload: Buffer.from(payload) });
      if (trailer?.length) data = Buffer.concat([data, trailer]);
      if (data.length > MAX_DATA) {
        data = encodeResponse({ status: { code: Code.RESOURCE_EXHAUSTED, message: `response of ${data.length} bytes exceeds ${MAX_DATA}` }, payload: Buffer.alloc(0) });
      }
      socket.write(encodeFrame(streamId, FrameType.Response, data));
    };
    const backpressure = (streamId: number, isFull: boolean): void => {
      if (isFull) full.add(streamId);
      else full.delete(streamId);
      if (full.size > 0) socket.pause();
      else socket.resume();
    };
    const onData = (frame: { streamId: number; flags: number; data: Buffer }): void => {
      const s = streams.get(frame.streamId);
      if (!s) return; // a stream that ended here already
      if (s.inbox && !(frame.flags & FrameFlags.NoData)) s.inbox.push(frame.data);
      if (frame.flags & FrameFlags.RemoteClosed) {
        s.inbox?.end();
        s.cancel?.abort();
      }
    };
    socket.on('data', (chunk: Buffer) => {
      for (const d of decoder.push(chunk)) {
        if (d.kind === 'oversized') {
          send(d.streamId, { code: Code.RESOURCE_EXHAUSTED, message: `message of ${d.length} bytes exceeds ${MAX_DATA}` }, Buffer.alloc(0));
          streams.get(d.streamId)?.inbox?.end(new RpcError(Code.RESOURCE_EXHAUSTED, `message of ${d.length} bytes exceeds ${MAX_DATA}`));
          continue;
        }
        const { frame } = d;
        if (frame.type === FrameType.Data) {
          onData(frame);
          continue;
        }
        if (frame.type !== FrameType.Request) {
          this.hooks.onConnectionError?.(new Error(`ttrpc: unexpected frame type ${frame.type} on stream ${frame.streamId}; closing connection`));
          socket.destroy();
          return;
        }
        if (frame.streamId % 2 !== 1) {
          send(frame.streamId, { code: Code.INVALID_ARGUMENT, message: 'ttrpc: client stream ids must be odd' }, Buffer.alloc(0));
          continue;
        }
        let request: RequestEnvelope;
        try {
          request = decodeRequest(frame.data);
        } catch (err) {
          send(frame.streamId, { code: Code.INVALID_ARGUMENT, message: `ttrpc: malformed request: ${(err as Error).message}` }, Buffer.alloc(0));
          continue;
        }
        const streamId = frame.streamId;
        const registered = this.handlers.get(`${request.service}/${request.method}`);
        const remoteClosed = (frame.flags & FrameFlags.RemoteOpen) === 0;
        let run: (call: CallContext) => Promise<Uint8Array>;
        let cancel: AbortController | undefined;
        if (registered?.kind === 'server') {
          cancel = new AbortController();
          const drains: (() => void)[] = [];
          const onDrain = () => drains.forEach((fn) => fn());
          drainWaiters.add(onDrain);
          const sink: StreamSink = {
            send: (payload) => {
              if (socket.destroyed || !streams.has(streamId)) return false;
              return socket.write(encodeFrame(streamId, FrameType.Data, payload));
            },
            onDrain: (fn) => drains.push(fn),
          };
          streams.set(streamId, { cancel });
          run = (call) => registered.fn(request.payload, sink, call).then(() => new Uint8Array(0)).finally(() => drainWaiters.delete(onDrain));
        } else if (registered?.kind === 'client') {
          const inbox = new Inbox((isFull) => backpressure(streamId, isFull));
          if (remoteClosed) inbox.end();
          else streams.set(streamId, { inbox });
          run = (call) => registered.fn(inbox, call);
        } else {
          const fn = registered?.fn;
          run = (call) => (fn ? fn(request.payload, call) : Promise.reject(unimplemented(`${request.service}.${request.method}`)));
        }
        void this.dispatch(request, closed.signal, state, run, cancel?.signal).then(({ status, payload, trailer }) => {
          streams.delete(streamId);
          if (full.delete(streamId) && full.size === 0) socket.resume();
          send(streamId, status, payload, trailer);
        });
      }
    });
    socket.on('error', (err) => this.hooks.onConnectionError?.(err));
    socket.on('close', () => {
      this.sockets.delete(socket);
      for (const s of streams.values()) s.inbox?.end(new RpcError(Code.CANCELLED, 'ttrpc: connection closed'));
      streams.clear();
      closed.abort();
    });
  }

  private async dispatch(
    request: RequestEnvelope,
    connectionClosed: AbortSignal,
    connection: ConnectionState,
    run: (call: CallContext) => Promise<Uint8Array>,
    cancelled?: AbortSignal,
  ): Promise<{ status: RpcStatus | null; payload: Uint8Array; trailer?: Uint8Array }> {
    const signals = [connectionClosed];
    if (request.timeout_nano > 0) signals.push(AbortSignal.timeout(Math.ceil(request.timeout_nano / 1e6)));
    if (cancelled) signals.push(cancelled);
    const call: CallContext = {
      service: request.service,
      method: request.method,
      metadata: request.metadata,
      namespace: request.metadata.find((kv) => kv.key === NAMESPACE_KEY)?.value,
      signal: signals.length === 1 ? connectionClosed : AbortSignal.any(signals),
      connection,
    };
    const started = Date.now();
    let result: { status: RpcStatus | null; payload: Uint8Array; trailer?: Uint8Array };
    try {
      result = { status: null, payload: await run(call), trailer: call.trailer };
    } catch (err) {
      result = { status: toStatus(err), payload: Buffer.alloc(0), trailer: call.trailer };
    }
    this.hooks.onCall?.(call, result.status, Date.now() - started);
    return result;
  }
}

export { RpcError };
