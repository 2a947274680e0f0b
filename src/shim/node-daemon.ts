// The node daemon: one resident process per node serving the DPU side of every
// offloading pod. Each pod still has its shim as containerd expects one: runc's
// shim for its host containers behind a small C proxy (proxy.c), which sends
// this daemon every Create of the pod and every call for a task the daemon
// holds (of the sandbox, whose split network it joins, only the Delete), on a
// connection that begins with Attach (who the pod is). The daemon
// holds the pods' DPU containers (through one connection to the DPU agent), the
// host ends of their XPU links, their stdio relays and events.
//
// It holds nothing containerd needs to see a pod as alive: while it is down (a
// crash, an upgrade), the proxies keep containerd's connections, answer calls for
// the daemon's tasks UNAVAILABLE and hold their Waits until it is back.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DpuAgentClient } from '../agentapi/client';
import { CallContext, Handler, TtrpcServer, failedPrecondition, invalidArgument } from '../ttrpc';
import { ShimConfig, loadConfig } from './config';
import { EventForwarder } from './events';
import { LogSink, Logger, StderrSink } from '../common/log';
import { pidAlive } from '../common/processes';
import { NodePod, PodAttach, decodeAttach, placedTrailer, podKey } from './node-pod';
import { podRecordFiles, readPodRecord } from './pod-record';
import { deleteOnDpu } from './dpu-cleanup';
import { guardManagementLink, managementLink, MGMT_CHAIN } from './mgmt-filter';
import { TASK_SERVICE } from '../runcshim/runtime';
import { TASK_METHODS } from './task-service';

export const NODE_SERVICE = 'heteropod.node.v1.Node';

export function nodeSocketPath(stateDir: string): string {
  return path.join(stateDir, 'node.sock');
}

// How long after a pod's last connection closed its proxy may take to exit.
const PROXY_EXIT_MS = 5000;
const SWEEP_MS = 10_000;

export interface NodeDaemonOptions {
  configPath?: string;
  // Default: node.sock in the config's state_dir.
  socket?: string;
  sink?: LogSink;
}

export class NodeDaemon {
  private readonly pods = new Map<string, NodePod>();
  private readonly forwarders = new Map<string, EventForwarder>();
  private agent: DpuAgentClient | null = null;
  private readonly server: TtrpcServer;
  private sweeper: NodeJS.Timeout | null = null;
  private readonly sink: LogSink;
  readonly socket: string;
  readonly log: Logger;

  constructor(readonly config: ShimConfig, opts: NodeDaemonOptions) {
    this.socket = opts.socket ?? nodeSocketPath(config.stateDir);
    const sink = opts.sink ?? new StderrSink();
    this.sink = sink;
    this.log = new Logger(sink, config.debug, { component: 'heteropod-node' });
    this.server = new TtrpcServer({
      onConnectionError: (err) => this.log.warn('ttrpc connection error', { error: err.message }),
      onCall: config.debug ? (call, status, ms) => this.log.debug('ttrpc call', { method: `${call.service}.${call.method}`, code: status?.code ?? 0, error: status?.message, ms }) : undefined,
    });
    // The proxy may send its calls right behind Attach: the connection's pod is
    // set (as a promise) before Attach's handler first waits, and each call
    // waits for it.
    this.server.register(NODE_SERVICE, 'Attach', (payload, call) => {
      let a: PodAttach;
      try {
        a = decodeAttach(payload);
      } catch (err) {
        return Promise.reject(invalidArgument(`malformed Attach: ${(err as Error).message}`));
      }
      const pod = this.restoring.then(() => this.podFor(a));
      call.connection.value = pod;
      return pod.then((p) => {
        p.connected(call.connection.closed, () => this.whenIdle(p));
        return Buffer.alloc(0);
      });
    });
    this.server.register(TASK_SERVICE, 'Create', async (payload, call) => {
      const placed = await (await podOf(call)).create(payload);
      call.trailer = placedTrailer(placed);
      return placed.placed === 'proxy' ? Buffer.alloc(0) : placed.response;
    });
    // Every other Task method: the pod's task service. Its handlers are made per
    // pod; the one for the method is looked up at each call.
    for (const m of TASK_METHODS) {
      const handler: Handler = async (payload, call) => {
        const h = (await podOf(call)).handlers[m];
        return h(payload, call);
      };
      this.server.register(TASK_SERVICE, m, handler);
    }
  }

  // Settles once the pods an earlier daemon served are taken over.
  private restoring: Promise<void> = Promise.resolve();

  async listen(): Promise<void> {
    this.restoring = this.restoreAll();
    fs.mkdirSync(path.dirname(this.socket), { recursive: true, mode: 0o711 });
    fs.rmSync(this.socket, { force: true }); // the last daemon's, if it died
    await this.server.listen(this.socket);
    this.sweeper = setInterval(() => this.sweep(), SWEEP_MS);
    this.sweeper.unref();
    this.log.info('node daemon serving', { socket: this.socket, pid: process.pid });
    await this.guardManagement();
  }

  private guarded = false;
  private unguardedSaid = false;

  /**
   * Closes the DPU's management link to everything the host forwards
   * (mgmt-filter.ts). An agent not on a link of its own (routed, or its link
   * not up yet while the DPU boots) is looked for again at each sweep.
   */
  private async guardManagement(): Promise<void> {
    const address = this.config.dpu.address;
    if (this.guarded || !address) return;
    try {
      const link = await managementLink(address);
      if (!link) {
        // Routed (or its link not up yet): asked again at each sweep, said once.
        if (!this.unguardedSaid) this.log.warn('DPU agent not on a link of its own: management link not guarded', { address });
        this.unguardedSaid = true;
        return;
      }
      await guardManagementLink(link);
      this.guarded = true;
      this.log.info('management link guarded: no forwarded packet reaches it', { link: link.dev, family: link.family, chain: MGMT_CHAIN });
    } catch (err) {
      this.log.error('guard the management link', { address, error: (err as Error).message });
    }
  }

  /**
   * The pods an earlier node daemon served (their records): each whose proxy
   * still runs is taken over; each whose proxy is gone (its pod removed while no
   * daemon ran) has what it left on the DPU and in its namespace removed.
   */
  private async restoreAll(): Promise<void> {
    for (const file of podRecordFiles(this.config.stateDir)) {
      const record = readPodRecord(file);
      const a = record?.node?.attach;
      if (!record || !a) continue;
      if (!pidAlive(a.proxyPid)) {
        this.log.info('a pod was removed while no node daemon ran: cleaning up after it', { pod: record.pod_id });
        await deleteOnDpu(this.config, record.pod_id, record.pod_id, (what, err) => this.log.warn(what, { pod: record.pod_id, error: (err as Error).message }));
        fs.rmSync(file, { force: true });
        continue;
      }
      const pod = new NodePod(this.config, a, this.log, () => this.agentClient(), this.forwarder(a.ttrpcAddress), this.sink);
      this.pods.set(podKey(a), pod);
      try {
        await pod.restore(record);
      } catch (err) {
        pod.log.error('take the pod over from the earlier node daemon', { error: (err as Error).message });
      }
    }
  }

  get podCount(): number {
    return this.pods.size;
  }

  async close(): Promise<void> {
    if (this.sweeper) clearInterval(this.sweeper);
    await this.server.close();
    for (const pod of this.pods.values()) pod.flushRecord();
    fs.rmSync(this.socket, { force: true });
    await Promise.all([...this.forwarders.values()].map((f) => f.flush(2000)));
    for (const f of this.forwarders.values()) f.close();
    this.agent?.close();
    this.agent = null;
  }

  private podFor(a: PodAttach): NodePod {
    const key = podKey(a);
    let pod = this.pods.get(key);
    if (pod && !pod.isDisposed) return pod;
    pod = new NodePod(this.config, a, this.log, () => this.agentClient(), this.forwarder(a.ttrpcAddress), this.sink);
    this.pods.set(key, pod);
    pod.log.info('pod attached', { proxy_pid: a.proxyPid });
    return pod;
  }

  // The node's one connection to the DPU agent, made on first use.
  private agentClient(): DpuAgentClient {
    const d = this.config.dpu;
    if (!this.agent) this.agent = DpuAgentClient.connect({ address: d.address, caFile: d.ca, certFile: d.cert, keyFile: d.key, timeoutMs: d.timeoutMs });
    return this.agent;
  }

  private forwarder(address: string): EventForwarder {
    let f = this.forwarders.get(address);
    if (!f) {
      f = new EventForwarder(address, this.log);
      this.forwarders.set(address, f);
    }
    return f;
  }

  // A pod's proxy closed its last connection: it is exiting (runc's shim has
  // gone), or containerd restarts. The pod goes once its proxy has exited.
  private whenIdle(pod: NodePod): void {
    const deadline = Date.now() + PROXY_EXIT_MS;
    const check = (): void => {
      if (pod.isDisposed || pod.connectionCount > 0) return;
      if (!pod.proxyAlive()) return void this.drop(pod);
      if (Date.now() < deadline) setTimeout(check, 100).unref();
    };
    check();
  }

  private sweep(): void {
    void this.guardManagement();
    for (const pod of this.pods.values()) if (pod.connectionCount === 0 && !pod.proxyAlive()) void this.drop(pod);
  }

  private async drop(pod: NodePod): Promise<void> {
    const key = podKey(pod.attach);
    if (this.pods.get(key) === pod) this.pods.delete(key);
    await pod.dispose();
  }
}

function podOf(call: CallContext): Promise<NodePod> {
  const pod = call.connection.value;
  if (!(pod instanceof Promise)) return Promise.reject(failedPrecondition(`${call.service}.${call.method}: the connection has not attached a pod (${NODE_SERVICE}.Attach first)`));
  return pod as Promise<NodePod>;
}

/** `heteropod node`: serves until SIGTERM or SIGINT. */
export async function serveNode(opts: NodeDaemonOptions): Promise<NodeDaemon> {
  const config = loadConfig(opts.configPath);
  const daemon = new NodeDaemon(config, opts);
  process.title = `heteropod-node ${daemon.socket}`;
  process.on('uncaughtException', (err) => daemon.log.error('uncaught exception', { error: err.stack ?? err.message }));
  process.on('unhandledRejection', (err) => daemon.log.error('unhandled rejection', { error: err instanceof Error ? err.stack ?? err.message : String(err) }));
  await daemon.listen();
  const stop = (): void => {
    void daemon.close().finally(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  return daemon;
}
