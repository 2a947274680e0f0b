// Where the agent's failures leave as gRPC statuses. Handlers throw AgentError
// (the one status type, common/status.ts) with the code that fits (NOT_FOUND for
// an unknown id, INVALID_ARGUMENT for bad input, ...); anything else is mapped by
// toStatus, as on the shim's side, and never leaves as a bare UNKNOWN.
import type * as grpc from '@grpc/grpc-js';
import { Code, RpcError, toStatus } from '../common/status';

export class AgentError extends RpcError {
  constructor(code: RpcError['code'], message: string) {
    super(code, message);
    this.name = 'AgentError';
  }
}

export function toServiceError(err: unknown): Partial<grpc.ServiceError> {
  // gRPC's status codes are the canonical codes of Code: the same numbers.
  const { code, message } = toStatus(err);
  return { code, details: message, message };
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
          trace(`${method} failed: ${Code[mapped.code ?? Code.INTERNAL]} ${mapped.details}`);
          callback(mapped);
        },
      );
  };
}
