// Offloaded containers: the Runtime that runs a pod's containers on the DPU
// through the DPU agent (gRPC, mutual TLS, over the management link).
//
// What crosses for each call:
//   Create  - the rootfs layers (shipped once, by digest: layers.ts), the spec,
//             copies of the bind-mounted files, and the request; then this
//             container's stdio is joined to containerd's fifos (stdio-relay.ts)
//   Exec    - the request, then the exec's stdio likewise
//   Wait    - held open for the life of the process; if the agent restarts, it is
//             asked again, and answers from the runc shim, which kept the exit
//   others  - the request as containerd encoded it, and the answer as is
// The DPU's task events come back on one stream per pod and are forwarded to
// containerd with the host's (ordered) forwarder.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import type * as grpc from '@grpc/grpc-js';
import { DpuAgentClient, DpuAgentError } from '../agent/client';
import type { CapacityResponse, HealthResponse, LayerChunk, MountedFile, PodInfo, PutLayerResponse, TaskEventMessage } from '../agent/proto';
import { decode } from '../proto';
import { readFields, str, bool, uint } from '../proto/wire';
import { isBindMount, isSandboxShm, OciMount } from '../oci/mounts';
import { Code, RpcError, unimplemented } from '../ttrpc';
import { encodeConnectResponse, encodeIdRequest, withCreateOptions } from './messages';
import { LayerStore, overlayLowerdirs, shipLayers } from './layers';
import type { Logger } from './log';
import type { FirstTask, Runtime } from './runtime';
import { HostStdio } from './stdio-relay';

export interface DpuPodIdentity {
  podId: string;
  namespace: string;
  podName: string;
  podNamespace: string;
}

export interface DpuRuntimeOptions {
  pod: DpuPodIdentity;
  client: DpuAgentClient;
  // where the host remembers layer digests (shared by all pods of the node)
  layerIndexDir: string;
  // forwards a DPU task event (ForwardRequest, encoded) to containerd
  onEvent: (forward: Buffer, topic: string) => void;
}

const RETRY_MS = 500;
// How long output of a deleted process may still take to reach containerd.
const OUTPUT_GRACE_MS = 60_000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A DpuAgentError as the ttrpc status containerd should see. */
function asRpcError(err: unknown, context: string): Error {
  if (err instanceof DpuAgentError) {
    const code = err.kind === 'call' && err.code !== undefined ? (err.code as number as Code) : Code.UNAVAILABLE;
    return new RpcError(code, `${context}: ${err.message}`);
  }
  return RpcError.wrap(err, context);
}

const key = (id: string, execId: string) => `${id}/${execId}`;

export class DpuAgentRuntime implements Runtime {
  readonly name = 'dpu';
  private pod: Promise<PodInfo> | null = null;
  private readonly stdio = new Map<string, HostStdio>();
  private events: grpc.ClientReadableStream<TaskEventMessage> | null = null;
  private lastEvent = 0;
  private stopped = false;

  constructor(private readonly opts: DpuRuntimeOptions, private readonly log: Logger) {}

  get client(): DpuAgentClient {
    return this.opts.client;
  }

  health(): Promise<HealthResponse> {
    return this.client.health();
  }

  capacity(): Promise<CapacityResponse> {
    return this.client.capacity();
  }

  /** The pod's DPU half, made on first use. */
  podInfo(): Promise<PodInfo> {
    if (!this.pod) {
      const { podId, namespace, podName, podNamespace } = this.opts.pod;
      this.pod = this.client.call<PodInfo>('CreatePod', { pod_id: podId, namespace, pod_name: podName, pod_namespace: podNamespace }).then((info) => {
        this.followEvents();
        return info;
      });
      this.pod.catch(() => (this.pod = null));
    }
    return this.pod;
  }

  async prepare(_first: FirstTask): Promise<void> {
    await this.podInfo();
  }

  taskOptions(): Buffer | null {
    return null;
  }

  async call(method: string, payload: Uint8Array, signal?: AbortSignal): Promise<Buffer> {
    const request = Buffer.from(payload);
    switch (method) {
      case 'Create':
        return this.create(request);
      case 'Exec':
        return this.exec(request);
      case 'Wait':
        return this.wait(request, signal);
      case 'Connect':
        return this.connect(request);
      case 'Checkpoint':
        throw unimplemented('Checkpoint of a container on the DPU');
      case 'CloseIO':
        return this.closeIo(request);
      case 'Delete':
        return this.delete(request);
      default:
        return this.relay(method, request, signal);
    }
  }

  private async relay(method: string, request: Buffer, signal?: AbortSignal): Promise<Buffer> {
    try {
      const res = await this.client.call<{ response: Buffer }>(method, { pod_id: this.opts.pod.podId, request }, { signal });
      return res.response;
    } catch (err) {
      throw asRpcError(err, `${method} on the DPU`);
    }
  }

  private async create(request: Buffer): Promise<Buffer> {
    const req = decode<{ id: string; bundle: string; rootfs: { type: string; source: string; options: string[] }[]; terminal: boolean; stdin: string; stdout: string; stderr: string }>(
      'containerd.task.v2.CreateTaskRequest',
      request,
    );
    await this.podInfo();
    const specText = fs.readFileSync(path.join(req.bundle, 'config.json'));
    const spec = JSON.parse(specText.toString('utf8')) as { mounts?: OciMount[]; annotations?: Record<string, string> };
    const shipped = await shipLayers(overlayLowerdirs(req.rootfs), this.layerStore(), this.opts.layerIndexDir);
    const files = mountedFiles(spec.mounts ?? []);
    const name = spec.annotations?.['io.kubernetes.cri.container-name'] ?? req.id;
    let res: Buffer;
    try {
      res = (
        await this.client.call<{ response: Buffer }>('Create', {
          pod_id: this.opts.pod.podId,
          request: withCreateOptions(request, null),
          spec: specText,
          layers: shipped.digests,
          files,
          container_name: name,
        }, { timeoutMs: 60_000 })
      ).response;
    } catch (err) {
      throw asRpcError(err, `create ${req.id} on the DPU`);
    }
    this.log.info('container created on the DPU', { id: req.id, name, layers: shipped.digests.length, layers_sent: shipped.layersSent, bytes_sent: shipped.bytesSent });
    this.attach(req.id, '', req);
    return res;
  }

  private async exec(request: Buffer): Promise<Buffer> {
    const f = readFields(request);
    const id = str(f, 1);
    const execId = str(f, 2);
    const res = await this.relay('Exec', request);
    this.attach(id, execId, { stdin: str(f, 4), stdout: str(f, 5), stderr: str(f, 6) });
    return res;
  }

  private attach(id: string, execId: string, paths: { stdin: string; stdout: string; stderr: string }): void {
    const relay = new HostStdio(() => this.client, { pod_id: this.opts.pod.podId, container_id: id, exec_id: execId }, paths, this.log);
    relay.start();
    this.stdio.set(key(id, execId), relay);
  }

  private async wait(request: Buffer, signal?: AbortSignal): Promise<Buffer> {
    for (;;) {
      try {
        const res = await this.client.call<{ response: Buffer }>('Wait', { pod_id: this.opts.pod.podId, request }, { timeoutMs: null, signal });
        return res.response;
      } catch (err) {
        if (signal?.aborted) throw new RpcError(Code.CANCELLED, 'Wait cancelled');
        if (err instanceof DpuAgentError && err.kind !== 'call') {
          this.log.warn('Wait on the DPU interrupted; asking again', { error: err.message });
          await sleep(RETRY_MS);
          continue;
        }
        throw asRpcError(err, 'Wait on the DPU');
      }
    }
  }

  private async connect(request: Buffer): Promise<Buffer> {
    const id = str(readFields(request), 1);
    const state = await this.relay('State', encodeIdRequest(id));
    // StateResponse { pid = 3 }
    return encodeConnectResponse(process.pid, uint(readFields(state), 3));
  }

  private async closeIo(request: Buffer): Promise<Buffer> {
    const f = readFields(request);
    if (bool(f, 3)) await this.stdio.get(key(str(f, 1), str(f, 2)))?.closeStdin();
    return this.relay('CloseIO', request);
  }

  private async delete(request: Buffer): Promise<Buffer> {
    const f = readFields(request);
    const id = str(f, 1);
    const execId = str(f, 2);
    // Output still on its way is written before the process is gone for containerd.
    const relay = this.stdio.get(key(id, execId));
    if (relay) await Promise.race([relay.done, sleep(5000)]);
    const res = await this.relay('Delete', request);
    // A relay still writing (containerd reading slowly, a loaded machine) finishes
    // in the background: closing it now would cut the output short.
    for (const [k, r] of this.stdio) {
      if (k === key(id, execId) || (!execId && k.startsWith(`${id}/`))) {
        this.stdio.delete(k);
        const timer = setTimeout(() => r.close(), OUTPUT_GRACE_MS);
        timer.unref();
        void r.done.then(() => {
          clearTimeout(timer);
          r.close();
        });
      }
    }
    return res;
  }

  private followEvents(): void {
    if (this.stopped) return;
    const stream = this.client.serverStream<TaskEventMessage>('Events', { pod_id: this.opts.pod.podId, after: this.lastEvent });
    this.events = stream;
    stream.on('data', (e: TaskEventMessage) => {
      this.lastEvent = Math.max(this.lastEvent, Number(e.sequence));
      this.opts.onEvent(e.forward, e.topic);
    });
    const again = () => {
      if (this.events !== stream || this.stopped) return;
      this.events = null;
      setTimeout(() => this.followEvents(), RETRY_MS).unref();
    };
    stream.on('error', again);
    stream.on('status', again);
  }

  private layerStore(): LayerStore {
    const client = this.client;
    return {
      async missing(digests: string[]): Promise<string[]> {
        return (await client.call<{ digests: string[] }>('MissingLayers', { digests })).digests;
      },
      put(digest: string, size: number, data: Readable): Promise<{ bytesReceived: number; alreadyPresent: boolean }> {
        return new Promise((resolve, reject) => {
          const upload = client.clientStream<LayerChunk, PutLayerResponse>('PutLayer', (err, res) => {
            if (err || !res) return reject(err ?? new Error('PutLayer: no answer'));
            resolve({ bytesReceived: Number(res.bytes_received), alreadyPresent: res.already_present });
          });
          upload.write({ digest, size, data: Buffer.alloc(0) });
          data.on('data', (chunk: Buffer) => {
            if (!upload.write({ digest: '', size: 0, data: chunk })) {
              data.pause();
              upload.once('drain', () => data.resume());
            }
          });
          data.on('end', () => upload.end());
          data.on('error', (err) => {
            upload.cancel();
            reject(err);
          });
        });
      },
    };
  }

  async shutdown(): Promise<void> {
    this.stopped = true;
    this.events?.cancel();
    this.events = null;
    for (const r of this.stdio.values()) r.close();
    this.stdio.clear();
    if (this.pod) {
      try {
        await this.client.call('RemovePod', { pod_id: this.opts.pod.podId }, { timeoutMs: 30_000 });
      } catch (err) {
        this.log.error('remove the pod\'s DPU half', { error: (err as Error).message });
      }
    }
    this.client.close();
  }
}

// Directories sent inline with Create; a larger read-only volume is refused.
const MAX_DIRECTORY_BYTES = 16 << 20;

/** The bind-mounted files and read-only directories of a spec, read for shipping. */
export function mountedFiles(mounts: OciMount[]): MountedFile[] {
  const out: MountedFile[] = [];
  for (const m of mounts) {
    if (!isBindMount(m) || !m.source || isSandboxShm(m)) continue;
    const st = fs.statSync(m.source);
    if (st.isDirectory()) {
      const content = execFileSync('tar', ['-c', '-C', m.source, '.'], { maxBuffer: MAX_DIRECTORY_BYTES });
      out.push({ destination: m.destination, content, directory: true, mode: st.mode & 0o7777 });
    } else {
      out.push({ destination: m.destination, content: fs.readFileSync(m.source), directory: false, mode: st.mode & 0o7777 });
    }
  }
  return out;
}
