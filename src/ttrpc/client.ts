// A ttrpc client on a unix socket: one connection, calls multiplexed on odd stream
// ids increasing by two; responses may come back in any order.
import * as net from 'node:net';
import { EventEmitter } from 'node:events';
import { FrameDecoder, FrameType, encodeFrame } from './frame';
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
}

export class TtrpcClient extends EventEmitter {
  private nextStreamId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly decoder = new FrameDecoder();
  private closedError: Error | null = null;

  private constructor(private readonly socket: net.Socket, private readonly namespace?: string) {
    super();
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
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

  get closed(): boolean {
    return this.closedError !== null;
  }

  call(service: string, method: string, payload: Uint8Array, opts: CallOptions = {}): Promise<Buffer> {
    if (this.closedError) return Promise.reject(this.closedError);
    const streamId = this.nextStreamId;
    this.nextStreamId = (this.nextStreamId + 2) >>> 0 || 1;
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
      if (!p || d.frame.type !== FrameType.Response) continue;
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
