// Benchmark (not a timed test): what offloading a container to the DPU costs at
// start, on the test bed. One run measures three things:
//
//   1. Start time, warm layer cache: the same busybox container placed on the
//      host or on the DPU, alternating pod by pod. Both pods use the handler
//      heteropod and carry the same heteropod.io/offload annotation (so both get
//      a DPU half at RunPodSandbox); only the container's name decides whether
//      the annotation names it, so placement is the one difference.
//   2. Cold layer cache: the DPU's cache is emptied (agent stopped, its layers/
//      removed, agent started again; the DPU's network, keys and the shim's host
//      digest index stay), then a container of the largest image is offloaded.
//      Its layers are re-sent: bytes, time and rate from the agent's index.json
//      and the shim's log line, and its create time against a warm second pod.
//   3. Layer bytes sent for a second pod of an image already on the DPU (target 0),
//      from the shim's "container created on the DPU" log lines.
//
// Every pod is removed as soon as it is measured, so each sample sees the same
// node. The test bed is left as found: brought up if needed and then taken down.
//
//   flock /run/heteropod-testbed.lock node dist/scripts/bench-offload.js [--pods 10] [--json FILE]
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DpuAgentClient } from '../src/agentapi/client';
import type { PodInfo } from '../src/agentapi/proto';
import { LAYER_CACHE_INDEX } from '../src/agent/layer-cache';
import { CriClient } from '../src/cri/client';
import type { CriObject } from '../src/cri/config';
import * as dpu from '../src/dpu/dpu';
import { DPU } from '../src/dpu/paths';
import { TESTBED } from '../src/testbed/paths';
import { killAndWait, sleep, waitFor } from '../src/testbed/proc';
import { down, status, up } from '../src/testbed/testbed';
import { arg, stats } from './bench-lib';

const BUSYBOX = 'heteropod.local/busybox:1';
/** Candidates for the cold-cache transfer; the one with the most bytes is used. */
const LARGE_IMAGES = ['heteropod.local/haproxy:1', 'heteropod.local/node-exporter:1'];
/** The name the offload annotation of every pod names: a container so named goes to the DPU. */
const OFFLOADED = 'sidecar';
/** A container of the same pod under any other name stays on the host. */
const ON_HOST = 'app';
/** The agent's layer cache, seen from the host (its state dir is bind-mounted inside the DPU). */
const DPU_LAYER_DIR = path.join(DPU.dpuRootOnHost, 'layers');
const MB = 1e6;

type Where = 'host' | 'dpu';

interface StartSample {
  where: Where;
  image: string;
  podId: string;
  containerId: string;
  /** CreateContainer (the sandbox being up) until the container is RUNNING. */
  createMs: number;
  /** RunPodSandbox until the container is RUNNING. */
  sandboxMs: number;
  /** The CreateContainer and StartContainer calls alone: where the create time goes. */
  createCallMs: number;
  startCallMs: number;
  /** From the shim's log line, for offloaded containers. */
  ship?: ShipLine;
}

interface ShipLine {
  layers: number;
  layersSent: number;
  bytesSent: number;
}



function elapsedMs(since: bigint): number {
  return Number(process.hrtime.bigint() - since) / 1e6;
}

/** Bytes of `file` past `offset` (what a daemon logged during the run); empty when it is gone. */
function tail(file: string, offset: number): string {
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      if (size <= offset) return '';
      const buf = Buffer.alloc(size - offset);
      fs.readSync(fd, buf, 0, buf.length, offset);
      return buf.toString('utf8');
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return '';
  }
}

function sizeOf(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}

async function agentPods(): Promise<PodInfo[]> {
  const client = DpuAgentClient.connect({ ...dpu.hostClientOptions(), timeoutMs: 5000 });
  try {
    return (await client.call<{ pods: PodInfo[] }>('ListPods')).pods;
  } finally {
    client.close();
  }
}

interface IndexRecord {
  size: number;
  addedAt: string;
  receiveMs: number;
}

function readAgentIndex(): Record<string, IndexRecord> {
  const file = path.join(DPU_LAYER_DIR, LAYER_CACHE_INDEX);
  try {
    return (JSON.parse(fs.readFileSync(file, 'utf8')) as { layers?: Record<string, IndexRecord> }).layers ?? {};
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new Error(`read the DPU's layer index ${file}: ${(err as Error).message}`);
  }
}

class Bench {
  private readonly logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-bench-offload-'));
  /** Pods not yet removed: the clean-up list if a step fails. */
  readonly live = new Set<string>();
  private seq = 0;

  constructor(private readonly cri: CriClient) {}

  // As kubelet makes them: each container has its own process namespace. With
  // CRI's default (POD) the container would join the sandbox's, which stays on
  // the host, and the shim would not offload it.
  private static readonly OWN_PID = { security_context: { namespace_options: { pid: 'CONTAINER' } } };

  /**
   * One pod with one `sleep` container of `image`, on the host or the DPU. The
   * pod is removed before this returns, measured or not.
   */
  async startOne(where: Where, image: string, label: string): Promise<StartSample> {
    const n = ++this.seq;
    const pod: CriObject = {
      metadata: { name: `bench-offload-${label}-${n}`, namespace: 'bench', uid: `bench-offload-${process.pid}-${n}`, attempt: 0 },
      log_directory: path.join(this.logDir, String(n)),
      annotations: { 'heteropod.io/offload': OFFLOADED, 'heteropod.io/offload-policy': 'require' },
      linux: Bench.OWN_PID,
    };
    const name = where === 'dpu' ? OFFLOADED : ON_HOST;
    const container: CriObject = { metadata: { name, attempt: 0 }, image: { image }, command: ['sleep', '3600'], log_path: `${name}.log`, linux: Bench.OWN_PID };
    const t0 = process.hrtime.bigint();
    const podId = await this.cri.runPodSandbox(pod, 'heteropod');
    this.live.add(podId);
    try {
      const tCreate = process.hrtime.bigint();
      const containerId = await this.cri.createContainer(podId, container, pod);
      const createCallMs = elapsedMs(tCreate);
      const tStart = process.hrtime.bigint();
      await this.cri.startContainer(containerId);
      const startCallMs = elapsedMs(tStart);
      for (;;) {
        const s = (await this.cri.containerStatus(containerId)).status as CriObject;
        if (s.state === 'CONTAINER_RUNNING') break;
        if (s.state === 'CONTAINER_EXITED') throw new Error(`container ${containerId} (${name}, ${image}) exited with ${s.exit_code}: ${s.reason ?? ''} ${s.message ?? ''}`);
        await sleep(5);
      }
      const createMs = elapsedMs(tCreate);
      const sandboxMs = elapsedMs(t0);
      const sample: StartSample = { where, image, podId, containerId, createMs, sandboxMs, createCallMs, startCallMs };
      if (where === 'dpu') sample.ship = await this.shipLine(containerId);
      return sample;
    } finally {
      await this.removePod(podId);
    }
  }

  async removePod(podId: string): Promise<void> {
    await this.cri.stopPodSandbox(podId);
    await this.cri.removePodSandbox(podId);
    this.live.delete(podId);
  }

  /**
   * The shim's "container created on the DPU" line for `containerId`, which
   * containerd copies from the shim's log fifo into its own log (a moment later).
   * A container created without it did not go to the DPU: an error here, since
   * every figure of an offloaded sample would be a host one.
   */
  private shipLine(containerId: string): Promise<ShipLine> {
    return waitFor(`the shim's "container created on the DPU" line for ${containerId.slice(0, 13)} in ${TESTBED.logFile}`, 5000, () => {
      const line = fs
        .readFileSync(TESTBED.logFile, 'utf8')
        .split('\n')
        .find((l) => l.includes('container created on the DPU') && l.includes(`id=${containerId}`));
      if (!line) return undefined;
      const field = (key: string): number => {
        const m = new RegExp(`\\b${key}=(\\d+)`).exec(line);
        if (!m) throw new Error(`shim log line without ${key}: ${line}`);
        return Number(m[1]);
      };
      return { layers: field('layers'), layersSent: field('layers_sent'), bytesSent: field('bytes_sent') };
    }, 50);
  }

  removeLogs(): void {
    fs.rmSync(this.logDir, { recursive: true, force: true });
  }
}

/**
 * Empties the DPU's layer cache and leaves the rest of the test bed as it was:
 * the agent is stopped (no container may be on the DPU: their root file systems
 * are overlays of these layers), its cache directory removed, and `dpu up`
 * starts a fresh agent, keeping the DPU's network, cgroups and the keys the shim
 * holds. The shim's host-side digest index is kept on purpose: it still knows
 * the digests, so what is measured is the transfer, not the hashing.
 */
async function emptyDpuLayerCache(): Promise<void> {
  const pods = await agentPods();
  if (pods.length) throw new Error(`empty the DPU layer cache: the DPU still has pods (${pods.map((p) => p.pod_id.slice(0, 13)).join(', ')}); their root file systems use the cache`);
  const pid = dpu.agentPid();
  if (pid) await killAndWait([pid], 5000);
  fs.rmSync(DPU_LAYER_DIR, { recursive: true, force: true });
  await dpu.up();
  const left = Object.keys(readAgentIndex());
  if (left.length) throw new Error(`empty the DPU layer cache: ${left.length} layer(s) still recorded in ${DPU_LAYER_DIR}`);
}

async function largestImage(cri: CriClient): Promise<{ image: string; bytes: number }> {
  let best = { image: '', bytes: -1 };
  for (const image of LARGE_IMAGES) {
    const s = await cri.imageStatus(image);
    if (!s) throw new Error(`image ${image} is not on the test bed`);
    const bytes = Number(s.size ?? 0);
    if (bytes > best.bytes) best = { image, bytes };
  }
  return best;
}

interface ColdResult {
  image: string;
  imageBytes: number;
  cold: StartSample;
  warm: StartSample;
  /** The agent's records of what the cold create sent: tar size and time to receive and unpack. */
  received: { digest: string; size: number; receiveMs: number }[];
}

interface Result {
  when: string;
  cpus: number;
  pods: number;
  warm: StartSample[];
  cold: ColdResult;
  logProblems: { containerd: string[]; agent: string[] };
}

async function measure(cri: CriClient, pods: number, say: (l: string) => void): Promise<Omit<Result, 'logProblems'>> {
  const bench = new Bench(cri);
  try {
    // Warm-up, not counted: page cache, snapshots, the shim's host digest index
    // and the DPU cache for busybox and the large image.
    const large = await largestImage(cri);
    say(`largest image: ${large.image}, ${(large.bytes / MB).toFixed(1)} MB`);
    for (const [where, image] of [['host', BUSYBOX], ['dpu', BUSYBOX], ['dpu', large.image]] as const) {
      const w = await bench.startOne(where, image, 'warmup');
      say(`warm-up ${where} ${image}: create to running ${w.createMs.toFixed(0)} ms`);
    }

    // 1. Warm cache, host against DPU, alternating which goes first.
    const warm: StartSample[] = [];
    for (let i = 0; i < pods; i++) {
      const order: Where[] = i % 2 === 0 ? ['host', 'dpu'] : ['dpu', 'host'];
      for (const where of order) {
        const s = await bench.startOne(where, BUSYBOX, where);
        warm.push(s);
        const ship = s.ship ? `, ${s.ship.bytesSent} layer bytes sent` : '';
        say(`pod ${i} ${where}: create to running ${s.createMs.toFixed(0)} ms, sandbox to running ${s.sandboxMs.toFixed(0)} ms${ship}`);
      }
    }

    // 2. and 3. Cold cache, then a second pod of the same image.
    await emptyDpuLayerCache();
    say('DPU layer cache emptied (agent restarted)');
    const cold = await bench.startOne('dpu', large.image, 'cold');
    const index = readAgentIndex();
    const received = Object.entries(index).map(([digest, r]) => ({ digest, size: r.size, receiveMs: r.receiveMs }));
    say(`cold ${large.image}: create to running ${cold.createMs.toFixed(0)} ms, ${cold.ship?.bytesSent} bytes sent in ${cold.ship?.layersSent} layer(s)`);
    const second = await bench.startOne('dpu', large.image, 'second');
    say(`second ${large.image}: create to running ${second.createMs.toFixed(0)} ms, ${second.ship?.bytesSent} bytes sent`);
    return {
      when: new Date().toISOString(),
      cpus: os.cpus().length,
      pods,
      warm,
      cold: { image: large.image, imageBytes: large.bytes, cold, warm: second, received },
    };
  } finally {
    for (const podId of bench.live) await bench.removePod(podId).catch((err) => say(`remove pod ${podId}: ${(err as Error).message}`));
    bench.removeLogs();
  }
}

/** Warnings and errors a daemon logged during the run (logrus `level=` lines). */
function problems(text: string): string[] {
  return text.split('\n').filter((l) => /\blevel=(warning|error|fatal)\b/.test(l));
}

/** Log lines grouped by level and message: `N x level msg (e.g. <first line>)`. */
function summarize(daemon: string, lines: string[]): string[] {
  const groups = new Map<string, { count: number; example: string }>();
  for (const l of lines) {
    const key = `${/level=(\w+)/.exec(l)?.[1]} ${/msg=("(?:[^"\\]|\\.)*"|\S+)/.exec(l)?.[1]}`;
    const g = groups.get(key) ?? { count: 0, example: l };
    g.count++;
    groups.set(key, g);
  }
  return [...groups].map(([key, g]) => `  ${daemon}: ${g.count} x ${key}, e.g. ${g.example.slice(0, 300)}`);
}

function report(r: Result): string {
  const by = (w: Where): StartSample[] => r.warm.filter((s) => s.where === w);
  const host = { create: stats(by('host').map((s) => s.createMs)), sandbox: stats(by('host').map((s) => s.sandboxMs)) };
  const off = { create: stats(by('dpu').map((s) => s.createMs)), sandbox: stats(by('dpu').map((s) => s.sandboxMs)) };
  const ratio = (a: number, b: number): string => `${(a / b).toFixed(2)}x`;
  const ms = (v: number): string => v.toFixed(0);
  const c = r.cold;
  const recvBytes = c.received.reduce((a, x) => a + x.size, 0);
  const recvMs = c.received.reduce((a, x) => a + x.receiveMs, 0);
  const sent = c.cold.ship?.bytesSent ?? 0;
  // The time the cold create spends over the warm one: shipping as the caller sees it.
  const extraMs = c.cold.createMs - c.warm.createMs;
  const warmSent = by('dpu').reduce((a, s) => a + (s.ship?.bytesSent ?? 0), 0);
  const createRatio = off.create.median / host.create.median;
  const lines = [
    `busybox pods per placement: ${r.pods}, alternating; handler heteropod for both; node: ${r.cpus} CPUs, ${r.when}`,
    '',
    `ratio offloaded/host, warm cache: create to running median ${ratio(off.create.median, host.create.median)}, p90 ${ratio(off.create.p90, host.create.p90)}; sandbox to running median ${ratio(off.sandbox.median, host.sandbox.median)}, p90 ${ratio(off.sandbox.p90, host.sandbox.p90)} (target: at most 1.5x: ${createRatio <= 1.5 ? 'met' : 'NOT met'})`,
    `layer bytes sent for a second pod of an image on the DPU: ${c.warm.ship?.bytesSent} (${c.image}); ${warmSent} over the ${by('dpu').length} warm busybox pods (target 0: ${c.warm.ship?.bytesSent === 0 && warmSent === 0 ? 'met' : 'NOT met'})`,
    `cold-cache layer transfer: ${(sent / MB).toFixed(2)} MB in ${c.cold.ship?.layersSent} layer(s) of ${c.image}, agent received and unpacked them in ${ms(recvMs)} ms: ${(recvBytes / MB / (recvMs / 1000)).toFixed(1)} MB/s; create to running cold ${ms(c.cold.createMs)} ms against warm ${ms(c.warm.createMs)} ms (${ratio(c.cold.createMs, c.warm.createMs)}, +${ms(extraMs)} ms: ${(sent / MB / (extraMs / 1000)).toFixed(1)} MB/s end to end)`,
    '',
    '| placement (warm cache) | pods | create to running median ms | p90 ms | mean ms | sandbox to running median ms | p90 ms | mean ms |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    `| host | ${by('host').length} | ${ms(host.create.median)} | ${ms(host.create.p90)} | ${ms(host.create.mean)} | ${ms(host.sandbox.median)} | ${ms(host.sandbox.p90)} | ${ms(host.sandbox.mean)} |`,
    `| DPU | ${by('dpu').length} | ${ms(off.create.median)} | ${ms(off.create.p90)} | ${ms(off.create.mean)} | ${ms(off.sandbox.median)} | ${ms(off.sandbox.p90)} | ${ms(off.sandbox.mean)} |`,
    '',
    `where the create to running time goes (medians): CreateContainer host ${ms(stats(by('host').map((s) => s.createCallMs)).median)} ms, DPU ${ms(stats(by('dpu').map((s) => s.createCallMs)).median)} ms; StartContainer host ${ms(stats(by('host').map((s) => s.startCallMs)).median)} ms, DPU ${ms(stats(by('dpu').map((s) => s.startCallMs)).median)} ms`,
    '',
    `| ${c.image} on the DPU | layers sent | bytes sent | create to running ms | sandbox to running ms |`,
    '| --- | ---: | ---: | ---: | ---: |',
    `| cold cache | ${c.cold.ship?.layersSent} | ${sent} | ${ms(c.cold.createMs)} | ${ms(c.cold.sandboxMs)} |`,
    `| second pod | ${c.warm.ship?.layersSent} | ${c.warm.ship?.bytesSent} | ${ms(c.warm.createMs)} | ${ms(c.warm.sandboxMs)} |`,
  ];
  if (recvBytes !== sent) lines.push('', `note: the agent's index records ${recvBytes} bytes, the shim's log line ${sent}`);
  const logs = r.logProblems;
  lines.push('', `warnings and errors logged during the run: containerd ${logs.containerd.length}, DPU agent ${logs.agent.length}`);
  lines.push(...summarize('containerd', logs.containerd), ...summarize('agent', logs.agent));
  return `${lines.join('\n')}\n`;
}

async function main(): Promise<void> {
  const pods = Number(arg('pods', '10'));
  if (!Number.isInteger(pods) || pods < 1) throw new Error(`--pods must be a positive integer, not ${arg('pods', '')}`);
  const json = arg('json', '');
  const say = (l: string): void => void process.stderr.write(`${l}\n`);

  const wasUp = (await status()).running;
  await up(say);
  const logStart = { containerd: sizeOf(TESTBED.logFile), agent: sizeOf(DPU.logFile) };
  const cri = CriClient.connect(TESTBED.endpoint, 120_000);
  let result: Result;
  try {
    const measured = await measure(cri, pods, say);
    result = {
      ...measured,
      logProblems: { containerd: problems(tail(TESTBED.logFile, logStart.containerd)), agent: problems(tail(DPU.logFile, logStart.agent)) },
    };
  } finally {
    cri.close();
    if (!wasUp) await down(() => {});
  }
  process.stdout.write(report(result));
  if (json) fs.writeFileSync(json, `${JSON.stringify(result, null, 2)}\n`);
}

main().catch((err) => {
  process.stderr.write(`bench-offload: ${(err as Error).message}\n`);
  process.exitCode = 1;
});
