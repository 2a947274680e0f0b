// The fields of the task API (cri-proto/containerd/task/v2/shim.proto) and of
// events that the shim reads or writes, at the wire level. Everything else it
// relays as received. Field numbers are containerd 1.6's; the unit tests check
// each encoding against protobufjs and the .proto files.
import type { OciSpec } from '../oci/spec';
import { MessageWriter, readFields, str, bool, uint, field, repeated, decodeTimestamp, encodeTimestamp, encodeAny, replaceField, Timestamp } from '../proto/wire';

// Requests whose field 2 is exec_id; for the others field 2 is something else.
const HAS_EXEC_ID = new Set(['State', 'Start', 'Delete', 'Kill', 'Exec', 'ResizePty', 'CloseIO', 'Wait']);

export interface TaskRef {
  id: string;
  execId: string;
}

// The task (and process) a request names.
export function taskRef(method: string, payload: Uint8Array): TaskRef {
  const f = readFields(payload);
  return { id: str(f, 1), execId: HAS_EXEC_ID.has(method) ? str(f, 2) : '' };
}

/**
 * One call of a containerd.task.v2.Task method as it goes down the layers: the
 * request's bytes, relayed as containerd encoded them, and the task it names,
 * parsed once where the call came in. No layer below reads the ids again.
 */
export interface TaskCall {
  readonly method: string;
  readonly payload: Buffer;
  readonly ref: TaskRef;
}

/** Throws on a malformed request (the caller says INVALID_ARGUMENT). */
export function taskCall(method: string, payload: Buffer): TaskCall {
  return { method, payload, ref: taskRef(method, payload) };
}

// CreateTaskRequest { id = 1; bundle = 2; rootfs = 3 (containerd.types.Mount
// { type = 1; source = 2; options = 4; }); terminal = 4; stdin/stdout/stderr =
// 5/6/7; options = 10; }
export interface CreateTask {
  id: string;
  bundle: string;
  rootfs: { type: string; source: string; options: string[] }[];
  terminal: boolean;
  stdin: string;
  stdout: string;
  stderr: string;
  hasOptions: boolean;
}

// Read at the wire level: protobufjs and the .proto files cost a fresh shim ~10 ms to load.
export function createTask(payload: Uint8Array): CreateTask {
  const f = readFields(payload);
  const rootfs = repeated(f, 3).map((b) => {
    const m = readFields(b);
    return { type: str(m, 1), source: str(m, 2), options: repeated(m, 4).map((o) => o.toString('utf8')) };
  });
  return { id: str(f, 1), bundle: str(f, 2), rootfs, terminal: bool(f, 4), stdin: str(f, 5), stdout: str(f, 6), stderr: str(f, 7), hasOptions: field(f, 10) !== undefined };
}

// A bundle's config.json as read once at Create (shim/bundle.ts): the bytes as
// written, which go to the DPU agent unchanged, and the object they parse to.
export interface BundleSpecFile {
  raw: Buffer;
  parsed: OciSpec;
}

/**
 * A Create with its request decoded and its bundle's spec read, once, by the task
 * service: the router places the task from them and the runtime creates it from
 * them. The spec is as it was then; a sandbox's config.json may be rewritten
 * after (the router's clean-up hook), which only runc, reading the file, sees.
 */
export interface CreateCall extends TaskCall {
  readonly method: 'Create';
  readonly create: CreateTask;
  readonly spec: BundleSpecFile;
}

export function createCall(payload: Buffer, create: CreateTask, spec: BundleSpecFile): CreateCall {
  return { method: 'Create', payload, ref: { id: create.id, execId: '' }, create, spec };
}

export const isCreateCall = (call: TaskCall): call is CreateCall => call.method === 'Create' && 'create' in call && 'spec' in call;

/** The same Create with its options replaced by `options` (an encoded Any) or removed; parsed parts kept. */
export function withCreateOptions(call: CreateCall, options: Buffer | null): CreateCall {
  return { ...call, payload: replaceCreateOptions(call.payload, options), create: { ...call.create, hasOptions: options !== null } };
}

// The same request with its options replaced by `options` (an encoded Any) or removed.
function replaceCreateOptions(payload: Uint8Array, options: Buffer | null): Buffer {
  return replaceField(payload, 10, options ? new MessageWriter().message(10, options).finish() : null);
}

// CreateTaskResponse { pid = 1; }
export const createTaskPid = (payload: Uint8Array): number => uint(readFields(payload), 1);

// ShutdownRequest { id = 1; now = 2; }
export function shutdownRequest(payload: Uint8Array): { id: string; now: boolean } {
  const f = readFields(payload);
  return { id: str(f, 1), now: bool(f, 2) };
}

export const encodeShutdownRequest = (id: string, now = false): Buffer => new MessageWriter().bytes(1, id).varint(2, now).finish();

// ConnectResponse { shim_pid = 1; task_pid = 2; version = 3; }
export const connectTaskPid = (payload: Uint8Array): number => uint(readFields(payload), 2);
export const encodeConnectResponse = (shimPid: number, taskPid: number): Buffer => new MessageWriter().varint(1, shimPid).varint(2, taskPid).finish();

// KillRequest { id = 1; exec_id = 2; signal = 3; all = 4; }
export const encodeKillRequest = (id: string, signal: number, all: boolean): Buffer => new MessageWriter().bytes(1, id).varint(3, signal).varint(4, all).finish();

// WaitRequest and DeleteRequest { id = 1; exec_id = 2; }
export const encodeIdRequest = (id: string, execId = ''): Buffer => new MessageWriter().bytes(1, id).bytes(2, execId).finish();

// DeleteResponse { pid = 1; exit_status = 2; exited_at = 3; }
export interface DeleteResult {
  pid: number;
  exitStatus: number;
  exitedAt: Timestamp | null;
}

export function decodeDeleteResponse(payload: Uint8Array): DeleteResult {
  const f = readFields(payload);
  const at = field(f, 3);
  return { pid: uint(f, 1), exitStatus: uint(f, 2), exitedAt: at ? decodeTimestamp(at.bytes) : null };
}

export function encodeDeleteResponse(pid: number, exitStatus: number, exitedAt: Timestamp): Buffer {
  return new MessageWriter().varint(1, pid).varint(2, exitStatus).message(3, encodeTimestamp(exitedAt)).finish();
}

// containerd.runc.v1.Options { binary_name = 6; root = 7; systemd_cgroup = 9; } as an Any.
export function runcOptions(o: { root: string; binaryName: string; systemdCgroup: boolean }): Buffer {
  return encodeAny('containerd.runc.v1.Options', new MessageWriter().bytes(6, o.binaryName).bytes(7, o.root).varint(9, o.systemdCgroup).finish());
}

// ForwardRequest { Envelope envelope = 1 }, Envelope { timestamp = 1; namespace = 2; topic = 3; Any event = 4; }
export interface ForwardedEvent {
  topic: string;
  typeUrl: string;
  value: Buffer;
}

export function forwardedEvent(payload: Uint8Array): ForwardedEvent {
  const envelope = field(readFields(payload), 1);
  if (!envelope) return { topic: '', typeUrl: '', value: Buffer.alloc(0) };
  const e = readFields(envelope.bytes);
  const any = field(e, 4);
  const a = any ? readFields(any.bytes) : [];
  return { topic: str(e, 3), typeUrl: str(a, 1), value: field(a, 2)?.bytes ?? Buffer.alloc(0) };
}

// TaskExit { container_id = 1; id = 2; pid = 3; exit_status = 4; exited_at = 5; }
export function taskExit(value: Uint8Array): { containerId: string; id: string } {
  const f = readFields(value);
  return { containerId: str(f, 1), id: str(f, 2) };
}

/** A ForwardRequest carrying a TaskExit, as a runc shim publishes one. */
export function encodeTaskExitForward(namespace: string, exit: { containerId: string; id: string; pid: number; exitStatus: number; exitedAt: Timestamp }): Buffer {
  const event = new MessageWriter().bytes(1, exit.containerId).bytes(2, exit.id).varint(3, exit.pid).varint(4, exit.exitStatus).message(5, encodeTimestamp(exit.exitedAt)).finish();
  const envelope = new MessageWriter()
    .message(1, encodeTimestamp(exit.exitedAt))
    .bytes(2, namespace)
    .bytes(3, '/tasks/exit')
    .message(4, encodeAny('containerd.events.TaskExit', event))
    .finish();
  return new MessageWriter().message(1, envelope).finish();
}

// StateResponse { id = 1; bundle = 2; pid = 3; status = 4; stdin = 5; stdout = 6;
// stderr = 7; terminal = 8; exit_status = 9; exited_at = 10; exec_id = 11 }, and
// containerd.v1.types.Status STOPPED.
export const STATUS_STOPPED = 3;

/** The State of a process that has exited. */
export function encodeStoppedState(s: { id: string; execId: string; bundle: string; exitStatus: number; exitedAt: Timestamp }): Buffer {
  return new MessageWriter()
    .bytes(1, s.id)
    .bytes(2, s.bundle)
    .varint(4, STATUS_STOPPED)
    .varint(9, s.exitStatus)
    .message(10, encodeTimestamp(s.exitedAt))
    .bytes(11, s.execId)
    .finish();
}

// WaitResponse { exit_status = 1; exited_at = 2; }
export const encodeWaitResponse = (exitStatus: number, exitedAt: Timestamp): Buffer => new MessageWriter().varint(1, exitStatus).message(2, encodeTimestamp(exitedAt)).finish();
