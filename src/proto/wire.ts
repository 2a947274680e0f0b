// Protocol buffers at the wire level, for the shim's hot path: the shim relays
// most messages untouched and reads or changes only a few fields (a task id, the
// runtime options of a Create, the pid of a Connect), so it decodes only those.
// The .proto files in cri-proto/ stay the specification; the unit tests check
// these encodings against protobufjs's.

export const enum WireType {
  Varint = 0,
  Fixed64 = 1,
  Bytes = 2,
  Fixed32 = 5,
}

export interface WireField {
  num: number;
  type: WireType;
  // Varint: the value (exact up to 2^53; larger values saturate); Bytes: the bytes.
  varint: number;
  exact: bigint;
  bytes: Buffer;
  // The field's encoding, tag included, as it appeared.
  raw: Buffer;
}

const EMPTY: Buffer = Buffer.alloc(0);

function malformed(why: string): Error {
  const err = new Error(`malformed protobuf: ${why}`);
  (err as NodeJS.ErrnoException).code = 'EINVAL';
  return err;
}

// Throws (code EINVAL) on truncated or invalid input.
export function readFields(buf: Uint8Array): WireField[] {
  const b = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.length);
  const out: WireField[] = [];
  let i = 0;
  let big = 0n;
  // Sets `big` to the exact value; returns it as a number (exact below 2^53).
  const varint = (): number => {
    let result = 0;
    let scale = 1;
    const start = i;
    for (let n = 0; ; n++) {
      if (i >= b.length) throw malformed('truncated varint');
      if (n >= 10) throw malformed('varint too long');
      const byte = b[i++];
      result += (byte & 0x7f) * scale;
      scale *= 128;
      if ((byte & 0x80) === 0) break;
    }
    if (i - start > 7) {
      big = 0n;
      for (let k = i - 1; k >= start; k--) big = (big << 7n) | BigInt(b[k] & 0x7f);
    } else {
      big = BigInt(result);
    }
    return result;
  };
  while (i < b.length) {
    const start = i;
    const tag = varint();
    const num = Math.floor(tag / 8);
    const type = tag % 8;
    if (num === 0) throw malformed('field number 0');
    let value = 0;
    let exact = 0n;
    let bytes = EMPTY;
    switch (type) {
      case WireType.Varint:
        value = varint();
        exact = big;
        break;
      case WireType.Fixed64:
        i += 8;
        break;
      case WireType.Fixed32:
        i += 4;
        break;
      case WireType.Bytes: {
        const len = varint();
        if (len > b.length - i) throw malformed(`field ${num} longer than the message`);
        bytes = b.subarray(i, i + len);
        i += len;
        break;
      }
      default:
        throw malformed(`wire type ${type}`);
    }
    if (i > b.length) throw malformed(`truncated field ${num}`);
    out.push({ num, type, varint: value, exact, bytes, raw: b.subarray(start, i) });
  }
  return out;
}

export function field(fields: WireField[], num: number): WireField | undefined {
  let found: WireField | undefined;
  for (const f of fields) if (f.num === num) found = f; // the last occurrence wins
  return found;
}

export const str = (fields: WireField[], num: number): string => field(fields, num)?.bytes.toString('utf8') ?? '';
export const bytes = (fields: WireField[], num: number): Buffer => field(fields, num)?.bytes ?? EMPTY;
export const uint = (fields: WireField[], num: number): number => field(fields, num)?.varint ?? 0;
export const bool = (fields: WireField[], num: number): boolean => uint(fields, num) !== 0;
export const repeated = (fields: WireField[], num: number): Buffer[] => fields.filter((f) => f.num === num).map((f) => f.bytes);

// Signed 64-bit varints (int64 fields such as Timestamp.seconds) as numbers.
export function int64(fields: WireField[], num: number): number {
  const f = field(fields, num);
  return f ? Number(BigInt.asIntN(64, f.exact)) : 0;
}

function varintBytes(n: number): number[] {
  let v = BigInt.asUintN(64, BigInt(Math.trunc(n)));
  const out: number[] = [];
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) byte |= 0x80;
    out.push(byte);
  } while (v > 0n);
  return out;
}

// Builds a message field by field; zero values are omitted, as proto3 does.
export class MessageWriter {
  private readonly parts: Buffer[] = [];

  varint(num: number, value: number | boolean): this {
    const v = typeof value === 'boolean' ? (value ? 1 : 0) : value;
    if (v !== 0) this.parts.push(Buffer.from([...varintBytes(num * 8 + WireType.Varint), ...varintBytes(v)]));
    return this;
  }

  bytes(num: number, value: Uint8Array | string, keepEmpty = false): this {
    const b = typeof value === 'string' ? Buffer.from(value, 'utf8') : Buffer.from(value.buffer, value.byteOffset, value.length);
    if (b.length > 0 || keepEmpty) this.parts.push(Buffer.from([...varintBytes(num * 8 + WireType.Bytes), ...varintBytes(b.length)]), b);
    return this;
  }

  // An embedded message, written even when empty (presence matters for messages).
  message(num: number, value: Uint8Array | null | undefined): this {
    if (value) this.bytes(num, value, true);
    return this;
  }

  raw(field: Buffer): this {
    this.parts.push(field);
    return this;
  }

  finish(): Buffer {
    return Buffer.concat(this.parts);
  }
}

// The message with every occurrence of field `num` removed, and `replacement`
// (an encoded field, or nothing) appended; the other fields keep their bytes.
export function replaceField(message: Uint8Array, num: number, replacement: Buffer | null): Buffer {
  const w = new MessageWriter();
  for (const f of readFields(message)) if (f.num !== num) w.raw(f.raw);
  if (replacement) w.raw(replacement);
  return w.finish();
}

export interface Timestamp {
  seconds: number;
  nanos: number;
}

export function encodeTimestamp(t: Timestamp): Buffer {
  return new MessageWriter().varint(1, t.seconds).varint(2, t.nanos).finish();
}

export function decodeTimestamp(b: Uint8Array): Timestamp {
  const f = readFields(b);
  return { seconds: int64(f, 1), nanos: uint(f, 2) };
}

export function encodeAny(typeUrl: string, value: Uint8Array): Buffer {
  return new MessageWriter().bytes(1, typeUrl).bytes(2, value).finish();
}
