// The one place where the agent's failures become gRPC status codes. Handlers throw
// AgentError with the code that fits (NOT_FOUND for an unknown id, INVALID_ARGUMENT
// for bad input, ...); anything else is a bug or an environment failure and leaves
// as INTERNAL with its message, never as a bare UNKNOWN.
import * as grpc from '@grpc/grpc-js';

export class AgentError extends Error {
  constructor(readonly code: grpc.status, message: string) {
    super(message);
    this.name = 'AgentError';
  }
}

export function toServiceError(err: unknown): Partial<grpc.ServiceError> {
  if (err instanceof AgentError) return { code: err.code, details: err.message, message: err.message };
  const message = err instanceof Error ? err.message : String(err);
  return { code: grpc.status.INTERNAL, details: message, message };
}

export const trace = process.env.HETEROPOD_AGENT_DEBUG
  ? (line: string) => process.stderr.write(`${new Date().toISOString()} agent: ${line}\n`)
  : () => undefined;

/** Wraps an async unary handler: its result or its error, mapped, goes to the callback exactly once. */
export function unary<Req, Res>(method: string, fn: (request: Req) => Promise<Res> | Res): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    trace(`${method} from ${call.getPeer()}`);
    Promise.resolve()
      .then(() => fn(call.request))
      .then(
        (res) => callback(null, res),
        (err) => {
          const mapped = toServiceError(err);
          trace(`${method} failed: ${grpc.status[mapped.code ?? grpc.status.INTERNAL]} ${mapped.details}`);
          callback(mapped);
        },
      );
  };
}
