// `heteropod pods`: each pod's containers and where they run (host or DPU), from
// the CRI runtime's listing joined with what each pod's shim decided (its state
// file under the shim's state_dir). A container named for offload that runs on the
// host says why in NOTE.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command, Option } from 'commander';
import { CriClient, DEFAULT_CRI_ENDPOINT } from '../cri/client';
import type { CriObject } from '../cri/config';
import { DEFAULT_CONFIG_PATH, LOCAL_CONFIG_PATH, loadConfig } from '../shim/config';
import { PodRecordFile, podStateDir } from '../shim/pod-record';
import { containerUsage, cpuTime, mebibytes, parseOutputFormat, printJson, renderTable, shortId, OutputFormat } from './table';

export interface PodRow {
  pod: string;
  podId: string;
  handler: string;
  container: string;
  containerId: string;
  state: string;
  where: string;
  note: string;
  /** With --stats: CPU time and memory working set, as the runtime reports them (read on the DPU for its containers). */
  cpuSeconds?: number;
  memoryBytes?: number;
}

/** CRI ContainerStats by container id: CPU seconds and working-set bytes. */
function statsById(stats: CriObject[]): Map<string, { cpuSeconds?: number; memoryBytes?: number }> {
  const out = new Map<string, { cpuSeconds?: number; memoryBytes?: number }>();
  for (const s of stats) out.set(String((s.attributes as CriObject).id), containerUsage(s));
  return out;
}

/** Per side (host, DPU): the containers' CPU seconds and memory added up. */
export function sideTotals(rows: PodRow[]): { where: string; containers: number; cpuSeconds: number; memoryBytes: number }[] {
  const sides = new Map<string, { where: string; containers: number; cpuSeconds: number; memoryBytes: number }>();
  for (const r of rows) {
    if (!r.containerId || r.cpuSeconds === undefined) continue;
    const t = sides.get(r.where) ?? { where: r.where, containers: 0, cpuSeconds: 0, memoryBytes: 0 };
    t.containers++;
    t.cpuSeconds += r.cpuSeconds;
    t.memoryBytes += r.memoryBytes ?? 0;
    sides.set(r.where, t);
  }
  return [...sides.values()];
}

function readRecords(stateDir: string): Map<string, PodRecordFile> {
  const dir = podStateDir(stateDir);
  const out = new Map<string, PodRecordFile>();
  let names: string[] = [];
  try {
    names = fs.readdirSync(dir).filter((n) => n.endsWith('.json'));
  } catch {
    return out;
  }
  for (const n of names) {
    try {
      const r = JSON.parse(fs.readFileSync(path.join(dir, n), 'utf8')) as PodRecordFile;
      out.set(r.pod_id, r);
    } catch {
      // a file being rewritten; the next listing has it
    }
  }
  return out;
}

export function podRows(pods: CriObject[], containers: CriObject[], records: Map<string, PodRecordFile>): PodRow[] {
  const rows: PodRow[] = [];
  for (const p of pods) {
    const id = String(p.id);
    const meta = (p.metadata ?? {}) as CriObject;
    const name = `${meta.namespace}/${meta.name}`;
    const handler = String(p.runtime_handler || 'runc');
    const record = records.get(id);
    const mine = containers.filter((c) => c.pod_sandbox_id === id);
    if (mine.length === 0) {
      rows.push({ pod: name, podId: id, handler, container: '-', containerId: '', state: String(p.state).replace('SANDBOX_', ''), where: 'host', note: record?.dpu_problem ? `DPU: ${record.dpu_problem}` : '' });
    }
    for (const c of mine) {
      const cid = String(c.id);
      const cname = String(((c.metadata ?? {}) as CriObject).name ?? '');
      const placed = record?.containers.find((x) => x.id === cid);
      let note = placed?.reason ? `offload fallback: ${placed.reason}` : '';
      if (!placed && record?.offload.includes(cname)) note = 'placement unknown (shim state missing)';
      rows.push({ pod: name, podId: id, handler, container: cname, containerId: cid, state: String(c.state).replace('CONTAINER_', ''), where: placed?.where ?? 'host', note });
    }
  }
  return rows;
}

function defaultShimConfig(): string {
  return fs.existsSync(DEFAULT_CONFIG_PATH) ? DEFAULT_CONFIG_PATH : LOCAL_CONFIG_PATH;
}

export function registerPodsCommand(program: Command): void {
  program
    .command('pods')
    .description('each pod\'s containers and where they run (host or DPU)')
    .option('-r, --runtime-endpoint <endpoint>', 'CRI endpoint', DEFAULT_CRI_ENDPOINT)
    .option('--shim-config <file>', `the shim's configuration (for its state_dir); default ${DEFAULT_CONFIG_PATH}, else ${LOCAL_CONFIG_PATH} (heteropod local up)`)
    .option('--stats', 'add each container\'s CPU time and memory, and the totals of each side')
    .addOption(new Option('-o, --output <format>', 'table or json').default('table').argParser(parseOutputFormat))
    .action(async (opts: { runtimeEndpoint: string; shimConfig?: string; stats?: boolean; output: OutputFormat }) => {
      const config = loadConfig(opts.shimConfig ?? defaultShimConfig());
      const cri = CriClient.connect(opts.runtimeEndpoint, 10_000);
      let rows: PodRow[];
      try {
        rows = podRows(await cri.listPodSandbox(), await cri.listContainers(), readRecords(config.stateDir));
        if (opts.stats) {
          const byId = statsById(await cri.listContainerStats());
          for (const r of rows) Object.assign(r, byId.get(r.containerId) ?? {});
        }
      } finally {
        cri.close();
      }
      if (opts.output === 'json') return printJson(rows);
      const head = ['POD', 'POD ID', 'HANDLER', 'CONTAINER', 'CONTAINER ID', 'STATE', 'WHERE', ...(opts.stats ? ['CPU', 'MEM'] : []), 'NOTE'];
      process.stdout.write(
        renderTable(
          head,
          rows.map((r) => [r.pod, shortId(r.podId), r.handler, r.container, r.containerId ? shortId(r.containerId) : '', r.state, r.where, ...(opts.stats ? [cpuTime(r.cpuSeconds), mebibytes(r.memoryBytes)] : []), r.note]),
        ),
      );
      if (opts.stats) {
        process.stdout.write('\n');
        for (const t of sideTotals(rows)) process.stdout.write(`${t.where}: ${t.containers} container(s), ${cpuTime(t.cpuSeconds)} CPU, ${mebibytes(t.memoryBytes)}\n`);
      }
    });
}
