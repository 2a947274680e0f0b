// The shim's side of the management link: a DpuAgent client, ttrpc over mutual
// TLS. One connection, made on first use and again on the first call after it
// breaks; every call and stream of the node daemon shares it.
// Every failure leaves as a DpuAgentError saying which of three things went wrong:
//   unreachable - nothing answers at the address (agent down, link down, timeout)
//   tls         - the TLS handshake failed: our certificate was refused, or the
//                 agent's certificate is not from our CA / not for that address
//   call        - the agent answered with an error status
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as tls from 'node:tls';
import { Code, RpcError } from '../common/status';
import { OneConnection } from '../common/sockets';
import { TtrpcClient, StreamHandle } from '../ttrpc/client';
import { AGENT_SERVICE, AgentMethod, agentMethod, CapacityResponse, HealthResponse } from './proto';

export interface DpuAgentClientOptions {
  /** host:port of the agent, e.g. 192.168.100.2:7443 */
  address: string;
  caFile: string;
  /** the client certificate and key; both or neither (neither is refused by a real agent) */
  certFile?: string;
  keyFile?: string;
  /** per-call deadline, and the connection's; default 5 s */
  timeoutMs?: number;
  /**
   * the name the agent's certificate must carry (a DNS SAN); default
   * heteropod-dpu-agent. Checked instead of the address so that TLS never sends
   * an IP address as server name (RFC 6066).
   */
  serverName?: string;
}

export const AGENT_SERVER_NAME = 'heteropod-dpu-agent';

export type DpuAgentErrorKind = 'unreachable' | 'tls' | 'call';

/**
 * A failed call to the agent, as the one status type (common/status.ts): the
 * agent's answer, or UNAVAILABLE or DEADLINE_EXCEEDED for an agent that cannot be
 * reached.
 */
export class DpuAgentError extends RpcError {
  constructor(readonly kind: DpuAgentErrorKind, message: string, code: Code = Code.UNAVAILABLE) {
    super(code, message);
    this.name = 'DpuAgentError';
  }
}

// What a TLS failure looks like in Node's errors: OpenSSL's codes (ERR_SSL_*),
// Node's own (ERR_TLS_*), and certificate checks (their codes name the certificate).
const TLS_FAILURE = /certificate|ssl|tls|alert|handshake|self.signed|unable to (verify|get)|altname|hostname/i;
const NETWORK_CODES = /^(ECONNREFUSED|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT|ECONNRESET|EADDRNOTAVAIL|EPIPE)$/;

/** Whether a socket's error is TLS's (a refused or untrusted certificate), not the network's. */
function isTlsFailure(err: NodeJS.ErrnoException): boolean {
  const code = err.code ?? '';
  if (NETWORK_CODES.test(code)) return false;
  return /^ERR_(SSL|TLS)_/.test(code) || /CERT|SIGNATURE|ISSUER/.test(code) || TLS_FAILURE.test(err.message);
}

/**
 * The agent's management address (192.168.100.0/30, BlueField's convention) is
 * only ever reached over the management link. Without that link the host would
 * route it like any private address, out of its default route to whoever answers
 * there; refuse to dial instead.
 */
/** "host:port" (an IPv6 host in brackets) as its parts; the port is NaN when there is none. */
export function splitHostPort(address: string): { host: string; port: number } {
  const idx = address.lastIndexOf(':');
  if (idx < 0) return { host: address, port: NaN };
  return { host: address.slice(0, idx).replace(/^\[|\]$/g, ''), port: Number(address.slice(idx + 1)) };
}

export function assertManagementLink(address: string, sysClassNet = '/sys/class/net'): void {
  const { host } = splitHostPort(address);
  if (!host.startsWith('192.168.100.')) return;
  if (!fs.existsSync(`${sysClassNet}/tmfifo_net0`)) {
    throw new DpuAgentError('unreachable', `DPU agent at ${address} unreachable: the management link tmfifo_net0 does not exist on this host (is the DPU up? heteropod dpu up)`);
  }
}

interface TlsMaterial {
  ca: Buffer;
  cert?: Buffer;
  key?: Buffer;
  serverName: string;
}

/** How long a healthy answer of the agent stands. */
export const HEALTH_FRESH_MS = 5000;
/**
 * How long a Capacity answer stands. The DPU's free memory is a moment's reading
 * either way (a container uses its memory once it runs, not at its Create), so
 * a second's reading places a container as well as a new one would.
 */
export const CAPACITY_FRESH_MS = 1000;

// After a connection attempt fails, calls within this long fail with its error
// instead of each trying again (pods' streams retry every 500 ms).
const RECONNECT_MS = 200;

/**
 * A server stream (Output, Events, WatchPorts) as its users read it: 'data' with
 * each message; at the end 'status' ({ code, details }), preceded by 'error' (a
 * DpuAgentError) when not OK and followed by 'end' when OK, once every message
 * held back by pause() is out. Nothing is emitted after cancel().
 */
export class AgentReadStream<T> extends EventEmitter {
  private held: T[] = [];
  private paused = false;
  private ended: { err: DpuAgentError | null } | null = null;
  private cancelled = false;
  private handle: StreamHandle | null = null;

  /** @internal the client's: where the stream went once the connection was there */
  attach(handle: StreamHandle): void {
    if (this.cancelled) handle.cancel();
    else this.handle = handle;
  }

  /** @internal */
  push(message: T): void {
    if (this.cancelled) return;
    if (this.paused || this.held.length) this.held.push(message);
    else this.emit('data', message);
  }

  /** @internal */
  finish(err: DpuAgentError | null): void {
    if (this.cancelled || this.ended) return;
    this.ended = { err };
    this.flush();
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    this.flush();
  }

  /** Ends the call on the agent too; nothing more is emitted. */
  cancel(): void {
    if (this.cancelled) return;
    this.cancelled = true;
    this.held = [];
    this.handle?.cancel();
  }

  private flush(): void {
    while (!this.paused && this.held.length && !this.cancelled) this.emit('data', this.held.shift()!);
    if (this.paused || this.held.length || !this.ended || this.cancelled) return;
    const { err } = this.ended;
    this.cancelled = true; // ended: once
    if (err) {
      this.emit('error', err);
      this.emit('status', { code: err.code, details: err.message });
    } else {
      this.emit('status', { code: Code.OK, details: '' });
      this.emit('end');
    }
  }
}

/** A client stream (PutLayer, Input): write() and end(), 'drain' when a full connection has room again. */
export class AgentWriteStream<T> extends EventEmitter {
  private queue: T[] = [];
  private handle: StreamHandle | null = null;
  private ending = false;
  private cancelled = false;

  constructor(
    private readonly encode: (m: T) => Uint8Array,
    // A message that cannot be sent (larger than a frame holds): the stream is cancelled and its answer is this error.
    private readonly failed: (err: Error) => void,
  ) {
    super();
  }

  /** @internal */
  attach(handle: StreamHandle): void {
    if (this.cancelled) return handle.cancel();
    this.handle = handle;
    const queued = this.queue;
    this.queue = [];
    for (const m of queued) if (!this.cancelled) this.send(handle, m);
    if (this.ending && !this.cancelled) handle.close();
  }

  /** false: wait for 'drain' before the next. */
  write(message: T): boolean {
    if (this.cancelled || this.ending) return false;
    if (!this.handle) {
      this.queue.push(message);
      return true;
    }
    return this.send(this.handle, message);
  }

  private send(handle: StreamHandle, message: T): boolean {
    try {
      return handle.send(this.encode(message));
    } catch (err) {
      this.cancel();
      this.failed(err as Error);
      return false;
    }
  }

  end(): void {
    if (this.ending || this.cancelled) return;
    this.ending = true;
    this.handle?.close();
  }

  cancel(): void {
    if (this.cancelled) return;
    this.cancelled = true;
    this.queue = [];
    this.handle?.cancel();
  }
}

/** One TLS connection to the agent, and what telling its failures apart needs. */
class AgentConnection {
  // The last error of its socket: a TLS alert after the handshake (the agent
  // refusing our certificate, TLS 1.3) arrives as one, failing the calls in flight.
  socketError: NodeJS.ErrnoException | null = null;
  // Whether it has carried any answer. An agent that refuses our certificate
  // closes the connection after the handshake without a word (Node's TLS server
  // checks the certificate once the handshake is done).
  answered = false;
  readonly ttrpc: TtrpcClient;

  constructor(socket: tls.TLSSocket, onDrain: () => void) {
    socket.on('error', (err: NodeJS.ErrnoException) => (this.socketError = err));
    socket.once('data', () => (this.answered = true));
    this.ttrpc = TtrpcClient.over(socket);
    this.ttrpc.on('drain', onDrain);
  }

  get closed(): boolean {
    return this.ttrpc.closed;
  }

  close(): void {
    this.ttrpc.close();
  }
}

export class DpuAgentClient {
  private readonly kept = new Map<string, { at: number; answer: Promise<unknown> }>();
  private readonly conn = new OneConnection<AgentConnection>();
  private failed: { at: number; err: DpuAgentError } | null = null;
  private closed = false;
  private readonly drains = new Set<() => void>();

  private constructor(
    readonly address: string,
    private readonly timeoutMs: number,
    private readonly material: TlsMaterial,
  ) {}

  static connect(opts: DpuAgentClientOptions): DpuAgentClient {
    assertManagementLink(opts.address);
    const read = (what: string, file: string) => {
      try {
        return fs.readFileSync(file);
      } catch (err) {
        throw new Error(`DPU agent client: read ${what} ${file}: ${(err as Error).message}`);
      }
    };
    if ((opts.certFile === undefined) !== (opts.keyFile === undefined)) throw new Error('DPU agent client: give both a certificate and a key, or neither');
    const material: TlsMaterial = {
      ca: read('CA certificate', opts.caFile),
      key: opts.keyFile ? read('client key', opts.keyFile) : undefined,
      cert: opts.certFile ? read('client certificate', opts.certFile) : undefined,
      serverName: opts.serverName ?? AGENT_SERVER_NAME,
    };
    return new DpuAgentClient(opts.address, opts.timeoutMs ?? 5000, material);
  }

  /**
   * One unary call. `timeoutMs` null: no deadline (Wait lasts as long as the
   * process); `signal` cancels the call.
   */
  async call<Res>(method: string, request: object = {}, opts: { timeoutMs?: number | null; signal?: AbortSignal } = {}): Promise<Res> {
    const m = agentMethod(method);
    const timeoutMs = opts.timeoutMs === undefined ? this.timeoutMs : opts.timeoutMs;
    const payload = m.encodeRequest(request);
    const started = Date.now();
    const conn = await this.connection(timeoutMs === null ? this.timeoutMs : Math.min(timeoutMs, this.timeoutMs));
    const left = timeoutMs === null ? undefined : Math.max(1, timeoutMs - (Date.now() - started));
    try {
      return m.decodeResponse(await conn.ttrpc.call(AGENT_SERVICE, method, payload, { timeoutMs: left, signal: opts.signal })) as Res;
    } catch (err) {
      throw this.classify(err as Error, method, conn);
    }
  }

  /** A server-streamed call (Output, Events, WatchPorts); no deadline. */
  serverStream<Res>(method: string, request: object): AgentReadStream<Res> {
    const m = agentMethod(method);
    const stream = new AgentReadStream<Res>();
    const payload = m.encodeRequest(request);
    this.connection(this.timeoutMs).then(
      (conn) => {
        stream.attach(conn.ttrpc.openStream(AGENT_SERVICE, method, payload, {
          data: (p) => {
            const message = this.decoded<Res>(m, method, p);
            if (message instanceof DpuAgentError) stream.finish(message);
            else stream.push(message);
          },
          end: (err) => stream.finish(err ? this.classify(err, method, conn) : null),
        }));
      },
      (err: DpuAgentError) => stream.finish(err),
    );
    return stream;
  }

  /** A client-streamed call (Input, PutLayer); the callback gets the one answer, errors classified. */
  clientStream<Req, Res>(method: string, done: (err: DpuAgentError | null, res?: Res) => void): AgentWriteStream<Req> {
    const m = agentMethod(method);
    let finished = false;
    const finish = (err: DpuAgentError | null, res?: Res) => {
      if (finished) return;
      finished = true;
      this.drains.delete(drain);
      done(err, res);
    };
    const stream = new AgentWriteStream<Req>(
      (msg) => m.encodeRequest(msg as object),
      (err) => finish(new DpuAgentError('call', `DPU agent at ${this.address}: ${method}: ${err.message}`, Code.INVALID_ARGUMENT)),
    );
    const drain = () => stream.emit('drain');
    this.drains.add(drain);
    this.connection(this.timeoutMs).then(
      (conn) => {
        stream.attach(conn.ttrpc.openStream(AGENT_SERVICE, method, new Uint8Array(0), {
          data: () => undefined,
          end: (err, p) => {
            if (err) return finish(this.classify(err, method, conn));
            const res = this.decoded<Res>(m, method, p);
            if (res instanceof DpuAgentError) finish(res);
            else finish(null, res);
          },
        }));
      },
      (err: DpuAgentError) => finish(err),
    );
    return stream;
  }

  /**
   * The agent's health. A healthy answer stands for HEALTH_FRESH_MS, so pods
   * starting together ask once (an agent gone since is found by the next call
   * itself); an unhealthy answer or a failure is not kept.
   */
  health(): Promise<HealthResponse> {
    return this.keptFor('Health', HEALTH_FRESH_MS, (h: HealthResponse) => h.ok);
  }

  /** The DPU's CPUs and memory; an answer stands for CAPACITY_FRESH_MS, so pods starting together ask once. */
  capacity(): Promise<CapacityResponse> {
    return this.keptFor('Capacity', CAPACITY_FRESH_MS, () => true);
  }

  // A call whose answer stands for `ms` while `keep` says so; a failure is not kept.
  private keptFor<Res>(method: string, ms: number, keep: (res: Res) => boolean): Promise<Res> {
    const now = Date.now();
    const kept = this.kept.get(method);
    if (kept && now - kept.at < ms) return kept.answer as Promise<Res>;
    const answer = this.call<Res>(method);
    const entry = { at: now, answer };
    this.kept.set(method, entry);
    const forget = (): void => {
      if (this.kept.get(method) === entry) this.kept.delete(method);
    };
    answer.then((r) => keep(r) || forget(), forget);
    return answer;
  }

  close(): void {
    this.closed = true;
    void this.conn.close();
  }

  // The open connection, or one made now (or being made). A dial that failed
  // within RECONNECT_MS stands for this one.
  private connection(timeoutMs: number): Promise<AgentConnection> {
    if (this.closed) return Promise.reject(new DpuAgentError('unreachable', `DPU agent at ${this.address}: the client is closed`));
    const open = this.conn.pending();
    if (open) return open;
    if (this.failed && Date.now() - this.failed.at < RECONNECT_MS) return Promise.reject(this.failed.err);
    const made = this.conn.get(() => this.dial(timeoutMs));
    made.then(
      () => (this.failed = null),
      (err: DpuAgentError) => (this.failed = { at: Date.now(), err }),
    );
    return made;
  }

  private dial(timeoutMs: number): Promise<AgentConnection> {
    const { host, port } = splitHostPort(this.address);
    const m = this.material;
    return new Promise((resolve, reject) => {
      const socket = tls.connect({ host, port, ca: m.ca, cert: m.cert, key: m.key, servername: m.serverName });
      socket.setNoDelay(true);
      // A DPU that stops answering (power, PCIe) is found by TCP, not by a call that waits for ever.
      socket.setKeepAlive(true, 5000);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new DpuAgentError('unreachable', `DPU agent at ${this.address} unreachable: no answer within ${timeoutMs} ms`, Code.DEADLINE_EXCEEDED));
      }, timeoutMs);
      socket.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(isTlsFailure(err)
          ? new DpuAgentError('tls', `TLS with the DPU agent at ${this.address} failed (certificate refused or not trusted): ${err.message}`)
          : new DpuAgentError('unreachable', `DPU agent at ${this.address} unreachable: ${err.message}`));
      });
      socket.once('secureConnect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve(new AgentConnection(socket, () => this.drains.forEach((fn) => fn())));
      });
    });
  }

  // A message from the agent, or why it could not be read.
  private decoded<T>(m: AgentMethod, method: string, bytes: Buffer): T | DpuAgentError {
    try {
      return m.decodeResponse(bytes) as T;
    } catch (err) {
      return new DpuAgentError('call', `DPU agent at ${this.address}: ${method}: malformed message: ${(err as Error).message}`, Code.INTERNAL);
    }
  }

  // A call's failure on `conn` as one of the three kinds: the connection's own
  // failure is the network's or TLS's; any other error is the agent's answer, a
  // deadline or a cancel.
  private classify(err: Error, method: string, conn: AgentConnection): DpuAgentError {
    if (err instanceof DpuAgentError) return err;
    if (err !== conn.ttrpc.failure && err instanceof RpcError) {
      if (err.code === Code.DEADLINE_EXCEEDED) return new DpuAgentError('unreachable', `DPU agent at ${this.address} unreachable: ${method}: ${err.message}`, err.code);
      return new DpuAgentError('call', `DPU agent at ${this.address}: ${Code[err.code] ?? err.code}: ${err.message}`, err.code);
    }
    const cause = conn.socketError;
    if (cause && isTlsFailure(cause)) return new DpuAgentError('tls', `TLS with the DPU agent at ${this.address} refused: ${cause.message}`);
    if (!conn.answered) return new DpuAgentError('tls', `TLS with the DPU agent at ${this.address} refused: it closed the connection after the handshake, before any answer (our certificate not accepted)`);
    return new DpuAgentError('unreachable', `DPU agent at ${this.address} unreachable: ${method}: ${(cause ?? err).message}`);
  }
}
