// The shim's side of the management link: a DpuAgent client over mutual TLS.
// Every failure leaves as a DpuAgentError saying which of three things went wrong:
//   unreachable - nothing answers at the address (agent down, link down, timeout)
//   tls         - the TLS handshake failed: our certificate was refused, or the
//                 agent's certificate is not from our CA / not for that address
//   call        - the agent answered with an error status
import * as fs from 'node:fs';
import * as tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { Code, RpcError } from '../common/status';
import { CapacityResponse, dpuAgentService, HealthResponse } from './proto';

export interface DpuAgentClientOptions {
  /** host:port of the agent, e.g. 192.168.100.2:7443 */
  address: string;
  caFile: string;
  /** the client certificate and key; both or neither (neither is refused by a real agent) */
  certFile?: string;
  keyFile?: string;
  /** per-call deadline; default 5 s */
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
 * A failed call to the agent, as the one status type (common/status.ts), with
 * gRPC's code (gRPC's codes are its canonical codes): the agent's answer, or
 * UNAVAILABLE or DEADLINE_EXCEEDED for an agent that cannot be reached.
 */
export class DpuAgentError extends RpcError {
  constructor(readonly kind: DpuAgentErrorKind, message: string, code: Code = Code.UNAVAILABLE) {
    super(code, message);
    this.name = 'DpuAgentError';
  }
}

/** The one translation of a gRPC status into the status type: the same canonical numbers. */
export const fromGrpc = (code: grpc.status): Code => code as unknown as Code;

const TLS_FAILURE = /certificate|ssl|tls|alert|handshake|self.signed|unable to (verify|get)|ERR_SSL|altname|hostname/i;

/** Which kind a failed call is; exported for tests. */
export function classify(address: string, err: grpc.ServiceError): DpuAgentError {
  const details = err.details || err.message;
  if (err.code === grpc.status.UNAVAILABLE || err.code === grpc.status.DEADLINE_EXCEEDED) {
    if (TLS_FAILURE.test(details)) return new DpuAgentError('tls', `TLS with the DPU agent at ${address} failed (certificate refused or not trusted): ${details}`, fromGrpc(err.code));
    return new DpuAgentError('unreachable', `DPU agent at ${address} unreachable: ${details}`, fromGrpc(err.code));
  }
  return new DpuAgentError('call', `DPU agent at ${address}: ${grpc.status[err.code] ?? err.code}: ${details}`, fromGrpc(err.code));
}

/**
 * The agent's management address (192.168.100.0/30, BlueField's convention) is
 * only ever reached over the management link. Without that link the host would
 * route it like any private address, out of its default route to whoever answers
 * there; refuse to dial instead.
 */
export function assertManagementLink(address: string, sysClassNet = '/sys/class/net'): void {
  const host = address.slice(0, address.lastIndexOf(':'));
  if (!host.startsWith('192.168.100.')) return;
  if (!fs.existsSync(`${sysClassNet}/tmfifo_net0`)) {
    throw new DpuAgentError('unreachable', `DPU agent at ${address} unreachable: the management link tmfifo_net0 does not exist on this host (is the DPU up? heteropod dpu up)`);
  }
}

type Unary<Res> = (req: object, meta: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: Res) => void) => void;

interface TlsMaterial {
  ca: Buffer;
  cert?: Buffer;
  key?: Buffer;
  serverName: string;
}

/**
 * grpc-js reports a refused handshake as a bare "failed to connect" (with TLS 1.3
 * the server's refusal of our certificate even arrives after the client thinks
 * the handshake is done). When a call fails UNAVAILABLE, one plain TLS handshake
 * with the same material tells the two apart: the error it gets, if any.
 */
function probeTls(address: string, m: TlsMaterial, timeoutMs: number): Promise<{ kind: 'tls' | 'unreachable'; why: string } | undefined> {
  const idx = address.lastIndexOf(':');
  const host = address.slice(0, idx).replace(/^\[|\]$/g, '');
  const port = Number(address.slice(idx + 1));
  return new Promise((resolve) => {
    let settled = false;
    const done = (v: { kind: 'tls' | 'unreachable'; why: string } | undefined) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(v);
    };
    const socket = tls.connect({ host, port, ca: m.ca, cert: m.cert, key: m.key, servername: m.serverName, ALPNProtocols: ['h2'] });
    let secure = false;
    socket.on('secureConnect', () => {
      secure = true;
      // The server's verdict on our certificate comes as an alert after this point (TLS 1.3).
      setTimeout(() => done(undefined), Math.min(1000, timeoutMs));
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      const network = !secure && /^(ECONNREFUSED|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT|ECONNRESET|EADDRNOTAVAIL)$/.test(err.code ?? '');
      done({ kind: network ? 'unreachable' : 'tls', why: err.message });
    });
    socket.on('close', () => done(secure ? { kind: 'tls', why: 'the agent closed the connection after the handshake' } : undefined));
    const timer = setTimeout(() => done({ kind: 'unreachable', why: `no answer within ${timeoutMs} ms` }), timeoutMs);
  });
}

/** How long a healthy answer of the agent stands. */
export const HEALTH_FRESH_MS = 5000;

export class DpuAgentClient {
  private healthy: { at: number; answer: Promise<HealthResponse> } | null = null;

  private constructor(
    private readonly client: grpc.Client,
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
    const creds = grpc.credentials.createSsl(material.ca, material.key ?? null, material.cert ?? null);
    const Ctor = dpuAgentService();
    const client = new Ctor(opts.address, creds, {
      // The management link is direct: never through an HTTP proxy from the environment.
      'grpc.enable_http_proxy': 0,
      // Fail fast and retry per call rather than back off for minutes.
      'grpc.initial_reconnect_backoff_ms': 200,
      'grpc.max_reconnect_backoff_ms': 2000,
      'grpc.ssl_target_name_override': material.serverName,
      'grpc.default_authority': material.serverName,
    });
    return new DpuAgentClient(client, opts.address, opts.timeoutMs ?? 5000, material);
  }

  /**
   * One unary call. `timeoutMs` null: no deadline (Wait lasts as long as the
   * process); `signal` cancels the call.
   */
  call<Res>(method: string, request: object = {}, opts: { timeoutMs?: number | null; signal?: AbortSignal } = {}): Promise<Res> {
    const fn = (this.client as unknown as Record<string, Unary<Res>>)[method].bind(this.client);
    const timeoutMs = opts.timeoutMs === undefined ? this.timeoutMs : opts.timeoutMs;
    return new Promise((resolve, reject) => {
      const callOpts: grpc.CallOptions = timeoutMs === null ? {} : { deadline: Date.now() + timeoutMs };
      const call = (fn as unknown as (req: object, meta: grpc.Metadata, o: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: Res) => void) => grpc.ClientUnaryCall)(
        request,
        new grpc.Metadata(),
        callOpts,
        (err, res) => {
          opts.signal?.removeEventListener('abort', cancel);
          if (!err) return resolve(res as Res);
          const first = classify(this.address, err);
          if (first.kind === 'call') return reject(first);
          probeTls(this.address, this.material, Math.min(this.timeoutMs, 3000)).then((probe) => {
            if (!probe) return reject(first);
            reject(probe.kind === 'tls'
              ? new DpuAgentError('tls', `TLS with the DPU agent at ${this.address} refused: ${probe.why}`, fromGrpc(err.code))
              : new DpuAgentError('unreachable', `DPU agent at ${this.address} unreachable: ${probe.why}`, fromGrpc(err.code)));
          });
        },
      );
      const cancel = () => call.cancel();
      opts.signal?.addEventListener('abort', cancel, { once: true });
    });
  }

  /** A server-streamed call (Output, Events); no deadline. */
  serverStream<Res>(method: string, request: object): grpc.ClientReadableStream<Res> {
    const fn = (this.client as unknown as Record<string, (req: object) => grpc.ClientReadableStream<Res>>)[method].bind(this.client);
    return fn(request);
  }

  /** A client-streamed call (Input, PutLayer); the callback gets the one answer, errors classified. */
  clientStream<Req, Res>(method: string, done: (err: DpuAgentError | null, res?: Res) => void): grpc.ClientWritableStream<Req> {
    const fn = (this.client as unknown as Record<string, (cb: (err: grpc.ServiceError | null, res?: Res) => void) => grpc.ClientWritableStream<Req>>)[method].bind(this.client);
    return fn((err, res) => done(err ? classify(this.address, err) : null, res));
  }

  /**
   * The agent's health. A healthy answer stands for HEALTH_FRESH_MS, so pods
   * starting together ask once (an agent gone since is found by the next call
   * itself); an unhealthy answer or a failure is not kept.
   */
  health(): Promise<HealthResponse> {
    const now = Date.now();
    if (this.healthy && now - this.healthy.at < HEALTH_FRESH_MS) return this.healthy.answer;
    const answer = this.call<HealthResponse>('Health');
    const entry = { at: now, answer };
    this.healthy = entry;
    const forget = (): void => {
      if (this.healthy === entry) this.healthy = null;
    };
    answer.then((h) => h.ok || forget(), forget);
    return answer;
  }

  capacity(): Promise<CapacityResponse> {
    return this.call('Capacity');
  }

  close(): void {
    this.client.close();
  }
}
