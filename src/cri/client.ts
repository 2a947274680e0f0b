// A CRI runtime.v1 client on @grpc/grpc-js: the calls kubelet and crictl make,
// with errors that say which call failed against which endpoint and why.
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { criServices } from './proto';
import type { CriObject } from './config';

export const DEFAULT_CRI_ENDPOINT = 'unix:///run/heteropod/containerd.sock';

export class CriError extends Error {
  constructor(
    message: string,
    readonly code: grpc.status | undefined,
  ) {
    super(message);
  }
}

/** Accepts `unix:///path`, `unix:/path` or a bare socket path; returns the socket path. */
export function endpointSocketPath(endpoint: string): string {
  const m = endpoint.match(/^unix:(?:\/\/)?(\/.*)$/);
  if (m) return m[1];
  if (endpoint.startsWith('/')) return endpoint;
  throw new CriError(`CRI endpoint ${JSON.stringify(endpoint)}: only unix sockets are supported (unix:///path/to/socket)`, undefined);
}

type Unary = (req: CriObject, meta: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: CriObject) => void) => void;

export class CriClient {
  private readonly runtime: grpc.Client;
  private readonly image: grpc.Client;

  private constructor(
    readonly endpoint: string,
    private readonly timeoutMs: number,
  ) {
    const { RuntimeService, ImageService } = criServices();
    const target = `unix://${endpointSocketPath(endpoint)}`;
    const options = { 'grpc.max_receive_message_length': 16 * 1024 * 1024 };
    this.runtime = new RuntimeService(target, grpc.credentials.createInsecure(), options);
    this.image = new ImageService(target, grpc.credentials.createInsecure(), options);
  }

  /** Checks the socket exists before dialing, so a missing runtime is a clear error rather than a time-out. */
  static connect(endpoint = DEFAULT_CRI_ENDPOINT, timeoutMs = 30_000): CriClient {
    const socket = endpointSocketPath(endpoint);
    let stat: fs.Stats;
    try {
      stat = fs.statSync(socket);
    } catch {
      throw new CriError(`cannot reach CRI endpoint ${endpoint}: socket ${socket} does not exist (is the container runtime running? for the test bed: heteropod local up)`, grpc.status.UNAVAILABLE);
    }
    if (!stat.isSocket()) throw new CriError(`cannot reach CRI endpoint ${endpoint}: ${socket} is not a socket`, grpc.status.UNAVAILABLE);
    return new CriClient(endpoint, timeoutMs);
  }

  close(): void {
    this.runtime.close();
    this.image.close();
  }

  private call(client: grpc.Client, method: string, req: CriObject, timeoutMs = this.timeoutMs): Promise<CriObject> {
    const fn = (client as unknown as Record<string, Unary>)[method];
    return new Promise((resolve, reject) => {
      fn.call(client, req, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => {
        if (!err) return resolve(res);
        const why = err.code === grpc.status.DEADLINE_EXCEEDED ? `no answer within ${timeoutMs} ms` : err.details || err.message;
        reject(new CriError(`CRI ${method}: ${why}`, err.code));
      });
    });
  }

  private rt(method: string, req: CriObject = {}, timeoutMs?: number): Promise<CriObject> {
    return this.call(this.runtime, method, req, timeoutMs);
  }

  private img(method: string, req: CriObject = {}, timeoutMs?: number): Promise<CriObject> {
    return this.call(this.image, method, req, timeoutMs);
  }

  version(): Promise<CriObject> {
    return this.rt('Version', { version: 'v1' });
  }

  status(verbose = false): Promise<CriObject> {
    return this.rt('Status', { verbose });
  }

  async runPodSandbox(config: CriObject, runtimeHandler = ''): Promise<string> {
    const res = await this.rt('RunPodSandbox', { config, runtime_handler: runtimeHandler }, Math.max(this.timeoutMs, 120_000));
    return res.pod_sandbox_id as string;
  }

  async stopPodSandbox(podSandboxId: string): Promise<void> {
    await this.rt('StopPodSandbox', { pod_sandbox_id: podSandboxId }, Math.max(this.timeoutMs, 120_000));
  }

  async removePodSandbox(podSandboxId: string): Promise<void> {
    await this.rt('RemovePodSandbox', { pod_sandbox_id: podSandboxId }, Math.max(this.timeoutMs, 120_000));
  }

  podSandboxStatus(podSandboxId: string, verbose = false): Promise<CriObject> {
    return this.rt('PodSandboxStatus', { pod_sandbox_id: podSandboxId, verbose });
  }

  async listPodSandbox(filter: CriObject = {}): Promise<CriObject[]> {
    const res = await this.rt('ListPodSandbox', { filter });
    return res.items as CriObject[];
  }

  async createContainer(podSandboxId: string, config: CriObject, sandboxConfig: CriObject): Promise<string> {
    const res = await this.rt('CreateContainer', { pod_sandbox_id: podSandboxId, config, sandbox_config: sandboxConfig });
    return res.container_id as string;
  }

  async startContainer(containerId: string): Promise<void> {
    await this.rt('StartContainer', { container_id: containerId }, Math.max(this.timeoutMs, 120_000));
  }

  /** `timeout` is the grace period in seconds between SIGTERM (or the image's stop signal) and SIGKILL. */
  async stopContainer(containerId: string, timeout = 0): Promise<void> {
    await this.rt('StopContainer', { container_id: containerId, timeout }, this.timeoutMs + timeout * 1000);
  }

  async removeContainer(containerId: string): Promise<void> {
    await this.rt('RemoveContainer', { container_id: containerId });
  }

  async listContainers(filter: CriObject = {}): Promise<CriObject[]> {
    const res = await this.rt('ListContainers', { filter });
    return res.containers as CriObject[];
  }

  containerStatus(containerId: string, verbose = false): Promise<CriObject> {
    return this.rt('ContainerStatus', { container_id: containerId, verbose });
  }

  async updateContainerResources(containerId: string, linux: CriObject): Promise<void> {
    await this.rt('UpdateContainerResources', { container_id: containerId, linux });
  }

  /** Runs `cmd` in the container and waits; `timeout` in seconds, 0 for none. */
  async execSync(containerId: string, cmd: string[], timeout = 0): Promise<{ stdout: Buffer; stderr: Buffer; exitCode: number }> {
    const deadline = timeout > 0 ? timeout * 1000 + this.timeoutMs : Math.max(this.timeoutMs, 600_000);
    const res = await this.rt('ExecSync', { container_id: containerId, cmd, timeout }, deadline);
    return { stdout: res.stdout as Buffer, stderr: res.stderr as Buffer, exitCode: res.exit_code as number };
  }

  /** Returns the streaming URL of an exec session (what crictl exec -it dials). */
  async exec(req: CriObject): Promise<string> {
    const res = await this.rt('Exec', req);
    return res.url as string;
  }

  async portForward(podSandboxId: string, ports: number[]): Promise<string> {
    const res = await this.rt('PortForward', { pod_sandbox_id: podSandboxId, port: ports });
    return res.url as string;
  }

  async containerStats(containerId: string): Promise<CriObject> {
    const res = await this.rt('ContainerStats', { container_id: containerId });
    return res.stats as CriObject;
  }

  async listContainerStats(filter: CriObject = {}): Promise<CriObject[]> {
    const res = await this.rt('ListContainerStats', { filter });
    return res.stats as CriObject[];
  }

  async listImages(): Promise<CriObject[]> {
    const res = await this.img('ListImages', {});
    return res.images as CriObject[];
  }

  /** The image, or null when the node does not have it. */
  async imageStatus(image: string): Promise<CriObject | null> {
    const res = await this.img('ImageStatus', { image: { image } });
    return (res.image as CriObject | null) ?? null;
  }
}
