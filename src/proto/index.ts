// The project's .proto files (cri-proto/), loaded once at run time with protobufjs.
// Nothing is generated: each message type is looked up by its full name and
// converted to and from plain objects (64-bit integers as numbers, bytes as Buffer).
import * as path from 'node:path';
import type * as Protobuf from 'protobufjs';

const PROTO_ROOT = path.resolve(__dirname, '../../../cri-proto');
const FILES = [
  'ttrpc/request.proto',
  'containerd/task/v2/shim.proto',
  'containerd/events/task.proto',
  'containerd/services/events/v1/events.proto',
  'containerd/runtimeoptions/v1/options.proto',
  'containerd/runc/v1/options.proto',
];

let root: Protobuf.Root | null = null;
const types = new Map<string, Protobuf.Type>();

function load(): Protobuf.Root {
  if (root) return root;
  // Required lazily: `start` never decodes a message and must stay quick.
  const protobuf = require('protobufjs') as typeof Protobuf;
  const r = new protobuf.Root();
  // Imports are relative to cri-proto/; google/protobuf/* come bundled with protobufjs.
  r.resolvePath = (_origin: string, target: string) =>
    target.startsWith('google/protobuf/') || path.isAbsolute(target) ? target : path.join(PROTO_ROOT, target);
  r.loadSync(FILES.map((f) => path.join(PROTO_ROOT, f)), { keepCase: true });
  r.resolveAll();
  root = r;
  return r;
}

export function messageType(name: string): Protobuf.Type {
  let t = types.get(name);
  if (!t) {
    t = load().lookupType(name);
    types.set(name, t);
  }
  return t;
}

const TO_OBJECT = { longs: Number, enums: Number, bytes: Buffer, defaults: true, arrays: true, objects: true } as const;

// Throws on malformed input; callers turn that into INVALID_ARGUMENT.
export function decode<T = Record<string, unknown>>(name: string, bytes: Uint8Array): T {
  const t = messageType(name);
  // protobufjs's plain reader, not its Buffer reader: the Buffer reader does not
  // bounds-check strings, so a truncated message would decode instead of throwing.
  const protobuf = require('protobufjs') as typeof Protobuf;
  return t.toObject(t.decode(new protobuf.Reader(bytes)), TO_OBJECT) as T;
}

export function encode(name: string, value: object): Buffer {
  const t = messageType(name);
  const err = t.verify(value);
  if (err) throw new TypeError(`encode ${name}: ${err}`);
  const bytes = t.encode(t.fromObject(value as Record<string, unknown>)).finish();
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
}

// google.protobuf.Any as a plain object.
export interface AnyMessage {
  type_url: string;
  value: Buffer;
}

export interface Timestamp {
  seconds: number;
  nanos: number;
}

export function timestampOf(date: Date): Timestamp {
  const ms = date.getTime();
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}
