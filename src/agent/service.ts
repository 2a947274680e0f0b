// The DPU agent's API as a plain interface, apart from the wire: the server (server.ts)
// adapts it to the wire, tests can call it directly, and later groups (layer cache,
// pod halves, task calls) become further interfaces the server registers the same way.
import type { CapacityResponse, HealthResponse } from '../agentapi/proto';
import { capacityOf, readResources, Resources } from './resources';

export interface DpuAgentApi {
  health(): Promise<HealthResponse>;
  capacity(): Promise<CapacityResponse>;
}

export interface AgentContext {
  version: string;
  listenAddress: string;
  /** reads the DPU's resources; the real one reads the agent's cgroup */
  resources?: () => Resources;
  now?: () => number;
}

/** The agent's own containers will live here; none yet, so nothing runs. */
export interface ContainerTable {
  runningCount(): number;
}

export class DpuAgentService implements DpuAgentApi {
  private readonly started: number;
  private readonly resources: () => Resources;
  private readonly now: () => number;

  constructor(private readonly ctx: AgentContext, private readonly containers: ContainerTable = { runningCount: () => 0 }) {
    this.now = ctx.now ?? Date.now;
    this.started = this.now();
    this.resources = ctx.resources ?? (() => readResources());
  }

  async health(): Promise<HealthResponse> {
    const base = { version: this.ctx.version, uptime_seconds: (this.now() - this.started) / 1000, listen_address: this.ctx.listenAddress };
    try {
      this.resources();
      return { ok: true, problem: '', ...base };
    } catch (err) {
      return { ok: false, problem: `read resources: ${(err as Error).message}`, ...base };
    }
  }

  async capacity(): Promise<CapacityResponse> {
    return capacityOf(this.resources(), this.containers.runningCount());
  }
}
