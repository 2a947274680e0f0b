// The ttrpc envelope (package ttrpc, cri-proto/ttrpc/request.proto), encoded at
// the wire level: it wraps every call, so it stays off protobufjs.
import { MessageWriter, readFields, repeated, str, bytes, int64, uint, field } from '../proto/wire';
import type { RpcStatus } from '../common/status';

export interface KeyValue {
  key: string;
  value: string;
}

export interface RequestEnvelope {
  service: string;
  method: string;
  payload: Buffer;
  timeout_nano: number;
  metadata: KeyValue[];
}

export interface ResponseEnvelope {
  status?: RpcStatus | null;
  payload: Buffer;
}

// The metadata key through which containerd names the namespace of a call.
export const NAMESPACE_KEY = 'containerd-namespace-ttrpc';

export function decodeRequest(b: Uint8Array): RequestEnvelope {
  const f = readFields(b);
  return {
    service: str(f, 1),
    method: str(f, 2),
    payload: bytes(f, 3),
    timeout_nano: int64(f, 4),
    metadata: repeated(f, 5).map((kv) => {
      const k = readFields(kv);
      return { key: str(k, 1), value: str(k, 2) };
    }),
  };
}

export function encodeRequest(r: RequestEnvelope): Buffer {
  const w = new MessageWriter().bytes(1, r.service).bytes(2, r.method).bytes(3, r.payload).varint(4, r.timeout_nano);
  for (const kv of r.metadata) w.message(5, new MessageWriter().bytes(1, kv.key).bytes(2, kv.value).finish());
  return w.finish();
}

export function decodeResponse(b: Uint8Array): ResponseEnvelope {
  const f = readFields(b);
  const s = field(f, 1);
  let status: RpcStatus | null = null;
  if (s) {
    const sf = readFields(s.bytes);
    status = { code: Number(BigInt.asIntN(32, BigInt(uint(sf, 1)))), message: str(sf, 2) };
  }
  return { status, payload: bytes(f, 2) };
}

export function encodeResponse(r: ResponseEnvelope): Buffer {
  const w = new MessageWriter();
  if (r.status && r.status.code !== 0) w.message(1, new MessageWriter().varint(1, r.status.code).bytes(2, r.status.message).finish());
  return w.bytes(2, r.payload).finish();
}
