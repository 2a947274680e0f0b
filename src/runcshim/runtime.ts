// One interface per layer: the task service routes each task to a Runtime. The
// host runtime delegates to containerd's runc shim (RuncShimRuntime); the DPU
// issues add a runtime that calls the DPU agent.
import type { TaskCall } from '../taskapi/messages';

export const TASK_SERVICE = 'containerd.task.v2.Task';
export const EVENTS_SERVICE = 'containerd.services.events.ttrpc.v1.Events';

export interface FirstTask {
  id: string;
  bundle: string;
}

export interface Runtime {
  readonly name: string;
  // Whether the daemon keeps only the task's Create and Delete: the proxy sends
  // every other call for it straight to runc's shim (a sandbox wrapped by the
  // daemon for the split network, whose other calls are runc's as they are).
  readonly createAndDeleteOnly?: boolean;
  // Makes the runtime ready for the pod; `first` is the task that caused it.
  // Idempotent and safe to call concurrently.
  prepare(first: FirstTask): Promise<void>;
  // The options a Create for this runtime carries in place of containerd's (which
  // are ours): an encoded google.protobuf.Any, or null for none.
  taskOptions(): Buffer | null;
  // Calls a containerd.task.v2.Task method: the request's bytes, with the task
  // they name parsed once (and a Create's request and spec: a CreateCall);
  // resolves to the encoded response. Errors keep the runtime's gRPC code.
  call(call: TaskCall, signal?: AbortSignal): Promise<Buffer>;
  // Stops the runtime once no task is left; resolves when it has gone.
  shutdown(): Promise<void>;
}
