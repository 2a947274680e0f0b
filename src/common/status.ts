// The one status type: gRPC's canonical codes, which ttrpc (containerd's shim
// API) and gRPC (the DPU agent's API) share, and the one place where an error
// becomes a google.rpc.Status. Every handler's failure, ttrpc or gRPC, passes
// through toStatus(); code elsewhere throws RpcError (or a plain Error, which is
// a bug or an unexpected failure: INTERNAL).

export enum Code {
  OK = 0,
  CANCELLED = 1,
  UNKNOWN = 2,
  INVALID_ARGUMENT = 3,
  DEADLINE_EXCEEDED = 4,
  NOT_FOUND = 5,
  ALREADY_EXISTS = 6,
  PERMISSION_DENIED = 7,
  RESOURCE_EXHAUSTED = 8,
  FAILED_PRECONDITION = 9,
  ABORTED = 10,
  OUT_OF_RANGE = 11,
  UNIMPLEMENTED = 12,
  INTERNAL = 13,
  UNAVAILABLE = 14,
  DATA_LOSS = 15,
  UNAUTHENTICATED = 16,
}

export interface RpcStatus {
  code: number;
  message: string;
}

export class RpcError extends Error {
  constructor(readonly code: Code, message: string) {
    super(message);
    this.name = 'RpcError';
  }

  // Keeps the code while adding context, the way errors rise through layers.
  static wrap(err: unknown, context: string): Error {
    if (err instanceof RpcError) return new RpcError(err.code, `${context}: ${err.message}`);
    const message = err instanceof Error ? err.message : String(err);
    const wrapped = new Error(`${context}: ${message}`);
    (wrapped as NodeJS.ErrnoException).code = (err as NodeJS.ErrnoException | undefined)?.code;
    return wrapped;
  }
}

export const notFound = (what: string): RpcError => new RpcError(Code.NOT_FOUND, `${what}: not found`);
export const alreadyExists = (what: string): RpcError => new RpcError(Code.ALREADY_EXISTS, `${what}: already exists`);
export const invalidArgument = (why: string): RpcError => new RpcError(Code.INVALID_ARGUMENT, why);
export const unimplemented = (what: string): RpcError => new RpcError(Code.UNIMPLEMENTED, `${what} not implemented`);
export const failedPrecondition = (why: string): RpcError => new RpcError(Code.FAILED_PRECONDITION, why);
export const unavailable = (why: string): RpcError => new RpcError(Code.UNAVAILABLE, why);

// The mapping. System errors keep a meaningful code where containerd acts on it.
export function toStatus(err: unknown): RpcStatus {
  if (err instanceof RpcError) return { code: err.code, message: err.message };
  const message = err instanceof Error ? err.message : String(err);
  switch ((err as NodeJS.ErrnoException | undefined)?.code) {
    case 'ENOENT':
    case 'ESRCH':
      return { code: Code.NOT_FOUND, message };
    case 'EEXIST':
      return { code: Code.ALREADY_EXISTS, message };
    case 'EINVAL':
      return { code: Code.INVALID_ARGUMENT, message };
    case 'ECONNREFUSED':
    case 'ECONNRESET':
    case 'EPIPE':
      return { code: Code.UNAVAILABLE, message };
    case 'ETIMEDOUT':
      return { code: Code.DEADLINE_EXCEEDED, message };
    default:
      return { code: Code.INTERNAL, message };
  }
}

export function fromStatus(status: RpcStatus): RpcError {
  return new RpcError(status.code as Code, status.message);
}
