// A ttrpc client on a unix socket, or on a connected socket handed to over() (the
// DPU agent's, over mutual TLS): one connection, calls multiplexed on odd stream
// ids increasing by two; responses may come back in any order. Streams (ttrpc
// 1.2) are opened `remote open`: the client may send data, and closing its side
// is how it ends a client stream or cancels a server stream (server.ts).
import * as net from 'node:net';
import { EventEmitter } from 'node:events';
import { FrameDecoder, FrameFlags, FrameType, encodeFrame } from './frame';
import { decodeResponse, encodeRequest, KeyValue, NAMESPACE_KEY } from './messages';
import { Code, RpcError, fromStatus } from '../common/status';

export interface CallOptions {
  metadata?: KeyValue[];
  timeoutMs?: number;
  signal?: AbortSignal;
}

interface Pending {
  resolve: (payload: Buffer) => void;
  reject: (err: Error) => void;
  // A stream's messages (data frames) before its end.
  data?: (payload: Buffer) => void;
}

/** What a stream's opener gets: sending on it, and its end. */
export interface StreamHandlers {
  data(payload: Buffer): void;
  /** Once: null for OK (the server's response, or its data frame `remote closed`); else an RpcError with the server's status, or the connection's error. */
  end(err: Error | null, payload: Buffer): void;
}

export interface StreamHandle {
  /** One message as a data frame; false: the socket is full (the client emits 'drain'). */
  send(payload: Uint8Array): boolean;
  /** Closes the client's side: the end of a client stream, the cancel of a server stream. */
  close(): void;
  /** Closes the client's side and drops whatever still comes. */
  cancel(): void;
}

export class TtrpcClient extends EventEmitter {
  private nextStreamId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly decoder = new FrameDecoder();
  private closedError: Error | null = null;

  private constructor(private readonly socket: net.Socket, private readonly namespace?: string) {
    super();
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('drain', () => this.emit('drain'));
    socket.on('error', (err) => this.fail(RpcError.wrap(err, 'ttrpc connection')));
    socket.on('close', () => this.fail(new RpcError(Code.UNAVAILABLE, 'ttrpc: connection closed')));
  }

  static connect(socketPath: string, opts: { namespace?: string; timeoutMs?: number } = {}): Promise<TtrpcClient> {
    const target = socketPath.replace(/^unix:\/\//, '');
    return new Promise((resolve, reject) => {
      const socket = net.connect(target);
      const timer = opts.timeoutMs ? setTimeout(() => { socket.destroy(); reject(new RpcError(Code.UNAVAILABLE, `connect ${target}: timed out`)); }, opts.timeoutMs) : null;
      socket.once('error', (err) => {
        if (timer) clearTimeout(timer);
        reject(RpcError.wrap(err, `connect ${target}`));
      });
      socket.once('connect', () => {
        if (timer) clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve(new TtrpcClient(socket, opts.namespace));
      });
    });
  }

  /** A client on a socket already connected (and, for TLS, past its handshake). */
  static over(socket: net.Socket, opts: { namespace?: string } = {}): TtrpcClient {
    return new TtrpcClient(socket, opts.namespace);
  }

  get closed(): boolean {
    return this.closedError !== null;
  }

  /**
   * Why the connection ended (null while open): the very error every call and
   * stream on it then fails with, so a caller can tell it from a status the peer sent.
   */
  get failure(): Error | null {
    return this.closedError;
  }

  // Client stream ids: odd, increasing by two.
  private newStreamId(): number {
    const id = this.nextStreamId;
    this.nextStreamId = (this.nextStreamId + 2) >>> 0 || 1;
    return id;
  }

  call(service: string, method: string, payload: Uint8Array, opts: CallOptions = {}): Promise<Buffer> {
    if (this.closedError) return Promise.reject(this.closedError);
    const streamId = this.newStreamId();
    const metadata = [...(opts.metadata ?? [])];
    if (this.namespace && !metadata.some((kv) => kv.key === NAMESPACE_KEY)) metadata.push({ key: NAMESPACE_KEY, value: this.namespace });
    const request = encodeRequest({
      service,
      method,
      payload: Buffer.from(payload),
      timeout_nano: opts.timeoutMs ? opts.timeoutMs * 1e6 : 0,
      metadata,
    });
    return new Promise<Buffer>((resolve, reject) => {
      let timer: NodeJS.Timeout | null = null;
      // A deadline passing (AbortSignal.timeout, also inside AbortSignal.any) is
      // DEADLINE_EXCEEDED; any other abort, such as the caller's peer leaving, CANCELLED.
      const onAbort = (): void => {
        const timedOut = (opts.signal?.reason as Error | undefined)?.name === 'TimeoutError';
        settle(new RpcError(timedOut ? Code.DEADLINE_EXCEEDED : Code.CANCELLED, `${service}.${method}: ${timedOut ? 'deadline exceeded' : 'cancelled'}`));
      };
      const settle = (err: Error | null, result?: Buffer): void => {
        if (!this.pending.delete(streamId)) return;
        if (timer) clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve(result!);
      };
      this.pending.set(streamId, { resolve: (p) => settle(null, p), reject: (e) => settle(e) });
      if (opts.timeoutMs) timer = setTimeout(() => settle(new RpcError(Code.DEADLINE_EXCEEDED, `${service}.${method}: timed out after ${opts.timeoutMs} ms`)), opts.timeoutMs);
      if (opts.signal) {
        if (opts.signal.aborted) return onAbort();
        opts.signal.addEventListener('abort', onAbort, { once: true });
      }
      this.socket.write(encodeFrame(streamId, FrameType.Request, request));
    });
  }

  /**
   * Opens a stream: `payload` is the request's (a server stream's argument; empty
   * for a client stream). No deadline: streams last until ended or cancelled.
   */
  openStream(service: string, method: string, payload: Uint8Array, handlers: StreamHandlers, opts: { metadata?: KeyValue[] } = {}): StreamHandle {
    const streamId = this.newStreamId();
    let localClosed = false;
    let dropped = false;
    const end = (err: Error | null, p: Buffer): void => {
      if (!this.pending.delete(streamId) || dropped) return;
      handlers.end(err, p);
    };
    const closeLocal = (): void => {
      if (localClosed || this.closedError) return;
      localClosed = true;
      this.socket.write(encodeFrame(streamId, FrameType.Data, Buffer.alloc(0), FrameFlags.RemoteClosed | FrameFlags.NoData));
    };
    const handle: StreamHandle = {
      send: (p) => {
        if (localClosed || this.closedError) return false;
        return this.socket.write(encodeFrame(streamId, FrameType.Data, p));
      },
      close: closeLocal,
      cancel: () => {
        closeLocal();
        dropped = true;
        this.pending.delete(streamId);
      },
    };
    if (this.closedError) {
      const err = this.closedError;
      queueMicrotask(() => handlers.end(err, Buffer.alloc(0)));
      localClosed = true;
      return handle;
    }
    this.pending.set(streamId, {
      resolve: (p) => end(null, p),
      reject: (e) => end(e, Buffer.alloc(0)),
      data: (p) => {
        if (!dropped) handlers.data(p);
      },
    });
    const request = encodeRequest({ service, method, payload: Buffer.from(payload), timeout_nano: 0, metadata: [...(opts.metadata ?? [])] });
    this.socket.write(encodeFrame(streamId, FrameType.Request, request, FrameFlags.RemoteOpen));
    return handle;
  }

  close(): void {
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    let decoded;
    try {
      decoded = this.decoder.push(chunk);
    } catch (err) {
      this.socket.destroy();
      this.fail(RpcError.wrap(err, 'ttrpc: bad frame'));
      return;
    }
    for (const d of decoded) {
      if (d.kind === 'oversized') {
        this.pending.get(d.streamId)?.reject(new RpcError(Code.RESOURCE_EXHAUSTED, `ttrpc: response of ${d.length} bytes too large`));
        continue;
      }
      const p = this.pending.get(d.frame.streamId);
      if (!p) continue;
      if (d.frame.type === FrameType.Data) {
        if (!(d.frame.flags & FrameFlags.NoData)) p.data?.(d.frame.data);
        if (d.frame.flags & FrameFlags.RemoteClosed) p.resolve(Buffer.alloc(0));
        continue;
      }
      if (d.frame.type !== FrameType.Response) continue;
      try {
        const response = decodeResponse(d.frame.data);
        if (response.status && response.status.code !== Code.OK) p.reject(fromStatus(response.status));
        else p.resolve(response.payload);
      } catch (err) {
        p.reject(new RpcError(Code.INTERNAL, `ttrpc: malformed response: ${(err as Error).message}`));
      }
    }
  }

  private fail(err: Error): void {
    if (this.closedError) return;
    this.closedError = err;
    for (const p of [...this.pending.values()]) p.reject(err);
    this.pending.clear();
    this.emit('close', err);
  }
}
