// Where the agent's failures leave as statuses. Handlers throw AgentError (the one
// status type, common/status.ts) with the code that fits (NOT_FOUND for an unknown
// id, INVALID_ARGUMENT for bad input, ...); anything else is mapped by the ttrpc
// server's toStatus, as on the shim's side, and never leaves as a bare UNKNOWN.
// The handler kinds below are what server.ts serves, each checked against the .proto.
import { Code, RpcError, toStatus } from '../common/status';

export class AgentError extends RpcError {
  constructor(code: RpcError['code'], message: string) {
    super(code, message);
    this.name = 'AgentError';
  }
}

export const trace = process.env.HETEROPOD_AGENT_DEBUG
  ? (line: string) => process.stderr.write(`${new Date().toISOString()} agent: ${line}\n`)
  : () => undefined;

/** Where a server-streaming handler writes its messages. */
export interface AgentSink<T> {
  /** false: the connection is full; onDrain tells when it has room. */
  write(message: T): boolean;
  onDrain(fn: () => void): void;
}

export type AgentHandler =
  | { kind: 'unary'; fn: (request: any) => Promise<object> }
  // Resolves when the stream ends; `signal`: the host cancelled it, or went away.
  | { kind: 'server'; fn: (request: any, out: AgentSink<object>, signal: AbortSignal) => Promise<void> }
  // Reads the host's messages to their end, then answers once.
  | { kind: 'client'; fn: (messages: AsyncIterable<any>, signal: AbortSignal) => Promise<object> };

export type AgentHandlers = Record<string, AgentHandler>;

function traced<T>(method: string, run: () => Promise<T>): Promise<T> {
  trace(method);
  return run().catch((err: unknown) => {
    const { code, message } = toStatus(err);
    trace(`${method} failed: ${Code[code] ?? code} ${message}`);
    throw err;
  });
}

/** A unary handler: its result, or its error as the call's status. */
export function unary<Req>(method: string, fn: (request: Req) => Promise<object> | object): AgentHandler {
  return { kind: 'unary', fn: (request: Req) => traced(method, async () => fn(request)) };
}

export function serverStream<Req, Res extends object>(method: string, fn: (request: Req, out: AgentSink<Res>, signal: AbortSignal) => Promise<void>): AgentHandler {
  return { kind: 'server', fn: (request: Req, out, signal) => traced(method, () => fn(request, out as AgentSink<Res>, signal)) };
}

export function clientStream<Req>(method: string, fn: (messages: AsyncIterable<Req>, signal: AbortSignal) => Promise<object>): AgentHandler {
  return { kind: 'client', fn: (messages: AsyncIterable<Req>, signal) => traced(method, () => fn(messages, signal)) };
}

/** Resolves once `signal` is aborted (at once if it is already). */
export function aborted(signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
}
