// A ttrpc server on a unix socket. Each connection decodes frames and runs every
// request concurrently (a Wait may stay open for the life of a task while State
// and Kill calls come and go on the same connection); responses go back in
// completion order, each with its request's stream id. A broken frame or envelope
// costs only that stream or that connection, never the process.
import * as net from 'node:net';
import { FrameDecoder, FrameType, encodeFrame, MAX_DATA } from './frame';
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

export interface ServerHooks {
  // Told about every connection-level fault (bad frame, socket error), for the log.
  onConnectionError?: (err: Error) => void;
  // Told about every finished call, for debug tracing.
  onCall?: (call: CallContext, status: RpcStatus | null, ms: number) => void;
}

export class TtrpcServer {
  private readonly handlers = new Map<string, Handler>();
  private readonly sockets = new Set<net.Socket>();
  private server: net.Server | null = null;

  constructor(private readonly hooks: ServerHooks = {}) {}

  register(service: string, method: string, handler: Handler): void {
    this.handlers.set(`${service}/${method}`, handler);
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

  // Serves one connection; exported for tests that use a socket pair.
  serve(socket: net.Socket): void {
    this.sockets.add(socket);
    const decoder = new FrameDecoder();
    const closed = new AbortController();
    const state: ConnectionState = { closed: closed.signal };
    const send = (streamId: number, status: RpcStatus | null, payload: Uint8Array, trailer?: Uint8Array): void => {
      if (socket.destroyed) return;
      let data = encodeResponse({ status, payload: Buffer.from(payload) });
      if (trailer?.length) data = Buffer.concat([data, trailer]);
      if (data.length > MAX_DATA) {
        data = encodeResponse({ status: { code: Code.RESOURCE_EXHAUSTED, message: `response of ${data.length} bytes exceeds ${MAX_DATA}` }, payload: Buffer.alloc(0) });
      }
      socket.write(encodeFrame(streamId, FrameType.Response, data));
    };
    socket.on('data', (chunk: Buffer) => {
      for (const d of decoder.push(chunk)) {
        if (d.kind === 'oversized') {
          send(d.streamId, { code: Code.RESOURCE_EXHAUSTED, message: `message of ${d.length} bytes exceeds ${MAX_DATA}` }, Buffer.alloc(0));
          continue;
        }
        const { frame } = d;
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
        void this.dispatch(request, closed.signal, state).then(({ status, payload, trailer }) => send(frame.streamId, status, payload, trailer));
      }
    });
    socket.on('error', (err) => this.hooks.onConnectionError?.(err));
    socket.on('close', () => {
      this.sockets.delete(socket);
      closed.abort();
    });
  }

  private async dispatch(request: RequestEnvelope, connectionClosed: AbortSignal, connection: ConnectionState): Promise<{ status: RpcStatus | null; payload: Uint8Array; trailer?: Uint8Array }> {
    const signals = [connectionClosed];
    if (request.timeout_nano > 0) signals.push(AbortSignal.timeout(Math.ceil(request.timeout_nano / 1e6)));
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
      const handler = this.handlers.get(`${request.service}/${request.method}`);
      if (!handler) throw unimplemented(`${request.service}.${request.method}`);
      result = { status: null, payload: await handler(request.payload, call), trailer: call.trailer };
    } catch (err) {
      result = { status: toStatus(err), payload: Buffer.alloc(0), trailer: call.trailer };
    }
    this.hooks.onCall?.(call, result.status, Date.now() - started);
    return result;
  }
}

export { RpcError };
