// The handlers of the agent's pod, task, stdio, event and layer groups: each
// adapts one call to DpuPods or the layer cache; every failure leaves as the
// call's status (the ttrpc server's toStatus, the one mapping to status codes).
import { Readable } from 'node:stream';
import { Code } from '../common/status';
import { AgentError, AgentHandlers, aborted, clientStream, serverStream, unary } from './errors';
import type { DpuPods } from './pods';
import { NumberedChunk, OUTPUT_GENERATION } from './stdio';
import {
  CreatePodRequest,
  CreateRequest,
  InputChunk,
  LayerChunk,
  OpenLinkRequest,
  ProcessRef,
  PutLayerResponse,
  RELAYED_TASK_CALLS,
  SetPeerPortsRequest,
  TaskCall,
  UpdateFilesRequest,
} from '../agentapi/proto';

/** What the handlers need of the DPU's layer cache. */
export interface LayerCacheApi {
  missing(digests: string[]): string[] | Promise<string[]>;
  put(digest: string, size: number, chunks: AsyncIterable<Buffer>): Promise<{ bytesReceived: number; alreadyPresent: boolean }>;
  path(digest: string): string;
}

export function podHandlers(pods: DpuPods): AgentHandlers {
  const handlers: AgentHandlers = {
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

function output(pods: DpuPods) {
  return serverStream('Output', async (req: ProcessRef, call, signal) => {
    const { pod_id, container_id, exec_id } = req;
    const out = pods.output(pod_id, container_id, exec_id);
    const sink = (chunk: NumberedChunk): boolean =>
      call.write({ stream: chunk.stream === 'stdout' ? 'STDOUT' : 'STDERR', data: chunk.data, eof: chunk.eof, seq: chunk.seq, generation: OUTPUT_GENERATION });
    await new Promise<void>((resolve) => {
      // Ended, and all of it written out by the host (AckOutput).
      const finished = (): void => {
        pods.forgetOutput(pod_id, container_id, exec_id, out);
        resolve();
      };
      call.onDrain(() => out.flush());
      void aborted(signal).then(() => {
        out.detach(sink);
        resolve();
      });
      out.attach(sink, finished);
    });
  });
}

function input(pods: DpuPods) {
  return clientStream('Input', async (messages: AsyncIterable<InputChunk>) => {
    let written = 0;
    let target: ReturnType<DpuPods['input']> | null = null;
    for await (const chunk of messages) {
      if (!target) target = pods.input(chunk.pod_id, chunk.container_id, chunk.exec_id);
      if (chunk.data.length) {
        await target.write(chunk.data);
        written += chunk.data.length;
      }
    }
    return { bytes_written: written };
  });
}

function events(pods: DpuPods) {
  return serverStream('Events', async (req: { pod_id: string; after: number }, call, signal) => {
    const stop = pods.events.subscribe(req.pod_id, Number(req.after), (e) => {
      call.write({ sequence: e.sequence, topic: e.topic, forward: e.forward, termination_message: e.terminationMessage ?? Buffer.alloc(0) });
    });
    await aborted(signal);
    stop();
  });
}

// The stream ends (OK) when the half closes; the shim then knows to ask again.
function watchPorts(pods: DpuPods) {
  return serverStream('WatchPorts', async (req: { pod_id: string }, call, signal) => {
    let stop = () => {};
    await new Promise<void>((resolve) => {
      stop = pods.watchPorts(req.pod_id, (ports) => {
        if (ports) call.write({ ports });
        else resolve();
      });
      void aborted(signal).then(resolve);
    });
    stop();
  });
}

export function layerHandlers(cache: LayerCacheApi): AgentHandlers {
  return {
    MissingLayers: unary('MissingLayers', async (req: { digests: string[] }) => ({ digests: await cache.missing(req.digests) })),
    // The first chunk names the layer; its data, and the rest, are the tar stream.
    PutLayer: clientStream('PutLayer', async (messages: AsyncIterable<LayerChunk>): Promise<PutLayerResponse> => {
      const iterator = messages[Symbol.asyncIterator]();
      const first = await iterator.next();
      if (first.done) throw new AgentError(Code.INVALID_ARGUMENT, 'PutLayer: no message');
      const head = first.value;
      if (!head.digest) throw new AgentError(Code.INVALID_ARGUMENT, 'PutLayer: the first message must name the digest');
      async function* data(): AsyncGenerator<Buffer> {
        if (head.data.length) yield head.data;
        for (;;) {
          const next = await iterator.next();
          if (next.done) return;
          if (next.value.data.length) yield next.value.data;
        }
      }
      const res = await cache.put(head.digest, Number(head.size), Readable.from(data()));
      return { digest: head.digest, bytes_received: res.bytesReceived, already_present: res.alreadyPresent };
    }),
  };
}
