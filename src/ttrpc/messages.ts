// The ttrpc envelope (package ttrpc) as plain objects.
import { decode, encode } from '../proto';
import type { RpcStatus } from './status';

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

export const decodeRequest = (b: Uint8Array): RequestEnvelope => decode<RequestEnvelope>('ttrpc.Request', b);
export const encodeRequest = (r: RequestEnvelope): Buffer => encode('ttrpc.Request', r);
export const decodeResponse = (b: Uint8Array): ResponseEnvelope => decode<ResponseEnvelope>('ttrpc.Response', b);
export const encodeResponse = (r: ResponseEnvelope): Buffer =>
  encode('ttrpc.Response', r.status ? { status: { code: r.status.code, message: r.status.message }, payload: r.payload } : { payload: r.payload });
