// ttrpc, containerd's RPC for shims: framing, client, server, status mapping.
export * from './frame';
export * from '../common/status';
export * from './messages';
export { TtrpcServer, CallContext, ConnectionState, Handler, ServerHooks } from './server';
export { TtrpcClient, CallOptions } from './client';
