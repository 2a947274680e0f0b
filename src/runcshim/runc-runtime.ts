// Host containers, delegated to containerd-shim-runc-v2: started once per pod as
// containerd would start it, then called over ttrpc. stdio, exec, ptys, OOM and
// cgroup stats stay its job.
//
// Its pitfalls, and what this file does about them:
// - `start` writes `address` (and shim.pid) into its working directory, and its
//   daemon reads `address` again at exit to remove that socket: it runs in a
//   private directory holding links to the bundle's config.json and log fifo.
// - its socket name derives from containerd's address, namespace and pod; ours
//   hashes a different input (paths.ts), so they never collide.
// - it publishes events to $TTRPC_ADDRESS: pointed at our socket, so every event
//   goes through our ordered forwarder.
// - it refuses runtime options of another type: Create carries its own
//   containerd.runc.v1.Options, made from our [runc] config, in place of ours
//   (taskOptions, used by task-service.ts), or none.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { TtrpcClient, RpcError, Code } from '../ttrpc';
import { TaskCall, encodeShutdownRequest, runcOptions } from '../taskapi/messages';
import { formatFlags } from '../taskapi/flags';
import { OneConnection, socketAnswers } from '../common/sockets';
import type { Logger } from '../common/log';
import { runProgram } from '../xpu/run-program';
import { FirstTask, Runtime, TASK_SERVICE } from './runtime';

export interface RuncShimOptions {
  // runc's shim as the pod's proxy started it: called at this address, never
  // started or shut down from here. Without it, started here for the pod.
  address?: string;
  binary: string;
  namespace: string;
  containerdAddress: string;
  publishBinary: string;
  // Where runc's shim publishes events: our own socket.
  eventsAddress: string;
  workDir: string;
  debug: boolean;
  runc: { root: string; binaryName: string; systemdCgroup: boolean };
}

export class RuncShimRuntime implements Runtime {
  readonly name = 'runc';
  private readonly client = new OneConnection<TtrpcClient>();
  private firstId = '';
  private stopping = false;

  // `onLost` is told when runc's shim goes away without being asked to: its tasks
  // are gone with it, and the pod's shim should go too, so that containerd sees a
  // dead shim and cleans up, as it would under runc.
  constructor(private readonly opts: RuncShimOptions, private readonly log: Logger, private readonly onLost: (why: string) => void = () => {}) {}

  prepare(first: FirstTask): Promise<void> {
    return this.connected(first).then(() => undefined);
  }

  taskOptions(): Buffer | null {
    const { root, binaryName, systemdCgroup } = this.opts.runc;
    return root || binaryName || systemdCgroup ? runcOptions(this.opts.runc) : null;
  }

  call(call: TaskCall, signal?: AbortSignal): Promise<Buffer> {
    return this.request(call.method, call.payload, signal);
  }

  /** A Task request as its caller encoded it (the DPU agent builds its own). */
  async request(method: string, payload: Uint8Array, signal?: AbortSignal): Promise<Buffer> {
    const client = await this.connected(null);
    return client.call(TASK_SERVICE, method, payload, { signal });
  }

  async shutdown(): Promise<void> {
    this.stopping = true;
    const client = await this.client.settled();
    if (!client || client.closed) return;
    const gone = new Promise<void>((resolve) => client.once('close', () => resolve()));
    try {
      await client.call(TASK_SERVICE, 'Shutdown', encodeShutdownRequest(this.firstId), { timeoutMs: 5000 });
    } catch (err) {
      // Closing the connection while answering is how it says it has exited.
      if (!(err instanceof RpcError && err.code === Code.UNAVAILABLE)) this.log.warn('shut down runc shim', { error: (err as Error).message });
    }
    const timeout = new Promise<void>((resolve) => setTimeout(resolve, 3000).unref());
    await Promise.race([gone, timeout]);
    client.close();
  }

  /** Lets go of runc's shim without asking it to exit (the pod's proxy does). */
  async detach(): Promise<void> {
    this.stopping = true;
    (await this.client.settled())?.close();
  }

  private connected(first: FirstTask | null): Promise<TtrpcClient> {
    return this.client.get(() => this.attachOrStart(first));
  }

  // Re-attaches to a runc shim already running for the pod (it outlives a lost
  // connection), or starts one for the pod's first task.
  private async attachOrStart(first: FirstTask | null): Promise<TtrpcClient> {
    if (this.opts.address) return this.connect(this.opts.address);
    const addressFile = path.join(this.opts.workDir, 'address');
    if (fs.existsSync(addressFile)) {
      try {
        return await this.connect(fs.readFileSync(addressFile, 'utf8').trim());
      } catch (err) {
        if (!first) throw RpcError.wrap(err, 'reconnect to runc shim');
      }
    }
    if (!first) throw new RpcError(Code.FAILED_PRECONDITION, 'runc shim not started: no task created yet');
    const address = await this.start(first);
    return this.connect(address);
  }

  private async connect(address: string): Promise<TtrpcClient> {
    const client = await TtrpcClient.connect(address, { namespace: this.opts.namespace, timeoutMs: 5000 });
    client.once('close', (err: Error) => {
      this.log.debug('runc shim connection closed', { error: err.message });
      if (this.stopping || this.opts.address) return;
      // A runc shim that died cannot remove its own socket, and nothing else will.
      void socketAnswers(address)
        .then((alive) => alive || fs.rmSync(address.replace(/^unix:\/\//, ''), { force: true }))
        .catch(() => undefined)
        .finally(() => this.onLost(`connection to runc shim ${address} lost: ${err.message}`));
    });
    return client;
  }

  private async start(first: FirstTask): Promise<string> {
    const { workDir } = this.opts;
    this.firstId = first.id;
    fs.mkdirSync(workDir, { recursive: true, mode: 0o711 });
    for (const name of ['config.json', 'log']) {
      const link = path.join(workDir, name);
      fs.rmSync(link, { force: true });
      fs.symlinkSync(path.join(first.bundle, name), link);
    }
    const args = [
      ...formatFlags({ namespace: this.opts.namespace, address: this.opts.containerdAddress, publishBinary: this.opts.publishBinary, id: first.id, debug: this.opts.debug }),
      'start',
    ];
    this.log.debug('start runc shim', { binary: this.opts.binary, args: args.join(' ') });
    // Started by libxpu, not node's child_process: no fork of this process (the
    // node daemon's or the agent's heap) on the way to a pod's start.
    let output: string;
    try {
      // process.env holds strings only; its type allows undefined.
      const env = { ...(process.env as Record<string, string>), TTRPC_ADDRESS: this.opts.eventsAddress };
      output = (await runProgram([this.opts.binary, ...args], { cwd: workDir, env })).stdout;
    } catch (err) {
      throw RpcError.wrap(err, 'start runc shim');
    }
    const address = output.trim();
    if (!address.startsWith('unix://')) throw new Error(`start runc shim ${this.opts.binary}: said ${JSON.stringify(address)}, not an address`);
    this.log.info('runc shim started', { address });
    return address;
  }
}
