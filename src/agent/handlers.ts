// The gRPC handlers of the agent's pod, task, stdio, event and layer groups: each
// adapts one call to DpuPods or the layer cache, and every failure leaves through
// toServiceError (errors.ts), the one mapping to status codes.
import { Readable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { Code } from '../common/status';
import { AgentError, toServiceError, trace, unary } from './errors';
import type { DpuPods } from './pods';
import { NumberedChunk, OUTPUT_GENERATION } from './stdio';
import {
  CreatePodRequest,
  CreateRequest,
  InputChunk,
  LayerChunk,
  ListeningPorts,
  OpenLinkRequest,
  ProcessRef,
  PutLayerResponse,
  RELAYED_TASK_CALLS,
  SetPeerPortsRequest,
  TaskCall,
  TaskEventMessage,
  UpdateFilesRequest,
} from '../agentapi/proto';

/** What the handlers need of the DPU's layer cache. */
export interface LayerCacheApi {
  missing(digests: string[]): string[] | Promise<string[]>;
  put(digest: string, size: number, chunks: AsyncIterable<Buffer>): Promise<{ bytesReceived: number; alreadyPresent: boolean }>;
  path(digest: string): string;
}

export function podHandlers(pods: DpuPods): grpc.UntypedServiceImplementation {
  const handlers: grpc.UntypedServiceImplementation = {
    CreatePod: unary('CreatePod', (req: CreatePodRequest) => pods.createPod(req)),
    RemovePod: unary('RemovePod', async (req: { pod_id: string }) => {
      await pods.removePod(req.pod_id);
      return {};
    }),
    ListPods: unary('ListPods', () => ({ pods: pods.listPods() })),
    Create: unary('Create', (req: CreateRequest) => pods.create(req)),
    Exec: unary('Exec', async (req: TaskCall) => ({ response: await pods.exec(req.pod_id, req.request) })),
    Output: output(pods),
    // An output already gone (all of it acknowledged, or its pod removed) needs no acknowledgement.
    AckOutput: unary('AckOutput', (req: ProcessRef & { seq: number; generation: number }) => {
      if (Number(req.generation) === OUTPUT_GENERATION) pods.outputIfAny(req.pod_id, req.container_id, req.exec_id)?.ack(Number(req.seq));
      return {};
    }),
    Input: input(pods),
    Events: events(pods),
    OpenLink: unary('OpenLink', (req: OpenLinkRequest) => pods.openLink(req)),
    CloseLink: unary('CloseLink', async (req: { pod_id: string }) => {
      await pods.closeLink(req.pod_id);
      return {};
    }),
    SetPeerPorts: unary('SetPeerPorts', async (req: SetPeerPortsRequest) => {
      await pods.setPeerPorts(req.pod_id, req.ports);
      return {};
    }),
    WatchPorts: watchPorts(pods),
    UpdateFiles: unary('UpdateFiles', (req: UpdateFilesRequest) => {
      pods.updateFiles(req);
      return {};
    }),
  };
  for (const method of RELAYED_TASK_CALLS) {
    handlers[method] = unary(method, async (req: TaskCall) => ({ response: await pods.relay(method, req.pod_id, req.request) }));
  }
  // An init's exit carries its termination message.
  handlers.Wait = unary('Wait', (req: TaskCall) => pods.wait(req.pod_id, req.request));
  return handlers;
}

function output(pods: DpuPods): grpc.handleServerStreamingCall<ProcessRef, object> {
  return (call) => {
    const { pod_id, container_id, exec_id } = call.request;
    trace(`Output ${container_id} ${exec_id}`);
    let out;
    try {
      out = pods.output(pod_id, container_id, exec_id);
    } catch (err) {
      call.emit('error', toServiceError(err));
      return;
    }
    const sink = (chunk: NumberedChunk): boolean =>
      call.write({ stream: chunk.stream === 'stdout' ? 'STDOUT' : 'STDERR', data: chunk.data, eof: chunk.eof, seq: chunk.seq, generation: OUTPUT_GENERATION });
    // Ended, and all of it written out by the host (AckOutput).
    const finished = (): void => {
      call.end();
      pods.forgetOutput(pod_id, container_id, exec_id, out);
    };
    call.on('drain', () => out.flush());
    call.on('cancelled', () => out.detach(sink));
    call.on('error', () => out.detach(sink));
    out.attach(sink, finished);
  };
}

function input(pods: DpuPods): grpc.handleClientStreamingCall<InputChunk, object> {
  return (call, callback) => {
    let written = 0;
    let target: ReturnType<DpuPods['input']> | null = null;
    let chain = Promise.resolve();
    let failed = false;
    const fail = (err: unknown) => {
      if (failed) return;
      failed = true;
      callback(toServiceError(err));
    };
    call.on('data', (chunk: InputChunk) => {
      chain = chain.then(async () => {
        if (failed) return;
        if (!target) target = pods.input(chunk.pod_id, chunk.container_id, chunk.exec_id);
        if (chunk.data.length) {
          await target.write(chunk.data);
          written += chunk.data.length;
        }
      }).catch(fail);
    });
    call.on('end', () => {
      void chain.then(() => {
        if (!failed) callback(null, { bytes_written: written });
      });
    });
    call.on('error', fail);
  };
}

function events(pods: DpuPods): grpc.handleServerStreamingCall<{ pod_id: string; after: number }, TaskEventMessage> {
  return (call) => {
    const { pod_id, after } = call.request;
    trace(`Events ${pod_id} after ${after}`);
    const stop = pods.events.subscribe(pod_id, Number(after), (e) => {
      call.write({ sequence: e.sequence, topic: e.topic, forward: e.forward, termination_message: e.terminationMessage ?? Buffer.alloc(0) });
    });
    call.on('cancelled', stop);
    call.on('error', stop);
    call.on('close', stop);
  };
}

// The stream ends (OK) when the half closes; the shim then knows to ask again.
function watchPorts(pods: DpuPods): grpc.handleServerStreamingCall<{ pod_id: string }, ListeningPorts> {
  return (call) => {
    const { pod_id } = call.request;
    trace(`WatchPorts ${pod_id}`);
    let stop: () => void;
    try {
      stop = pods.watchPorts(pod_id, (ports) => {
        if (ports) call.write({ ports });
        else call.end();
      });
    } catch (err) {
      call.emit('error', toServiceError(err));
      return;
    }
    call.on('cancelled', stop);
    call.on('error', stop);
    call.on('close', stop);
  };
}

export function layerHandlers(cache: LayerCacheApi): grpc.UntypedServiceImplementation {
  return {
    MissingLayers: unary('MissingLayers', async (req: { digests: string[] }) => ({ digests: await cache.missing(req.digests) })),
    PutLayer: (call: grpc.ServerReadableStream<LayerChunk, PutLayerResponse>, callback: grpc.sendUnaryData<PutLayerResponse>) => {
      // The first chunk names the layer; its data, and the rest, are the tar stream.
      const iterator = call[Symbol.asyncIterator]();
      void (async () => {
        const first = await iterator.next();
        if (first.done) throw new AgentError(Code.INVALID_ARGUMENT, 'PutLayer: no message');
        const head = first.value as LayerChunk;
        if (!head.digest) throw new AgentError(Code.INVALID_ARGUMENT, 'PutLayer: the first message must name the digest');
        async function* data(): AsyncGenerator<Buffer> {
          if (head.data.length) yield head.data;
          for (;;) {
            const next = await iterator.next();
            if (next.done) return;
            const chunk = next.value as LayerChunk;
            if (chunk.data.length) yield chunk.data;
          }
        }
        const res = await cache.put(head.digest, Number(head.size), Readable.from(data()));
        return { digest: head.digest, bytes_received: res.bytesReceived, already_present: res.alreadyPresent };
      })().then(
        (res) => callback(null, res),
        (err) => callback(toServiceError(err)),
      );
    },
  };
}
