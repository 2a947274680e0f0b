// `heteropod dpu up | down | status`: the emulated DPU on the local machine.
//
// `up` is idempotent and repairs: each part (keys, network, cgroups, agent) is
// checked and made only if missing or broken, so `up` after the agent died only
// restarts the agent and keeps the certificates the shim already holds. A failing
// `up` tears everything down (`down` removes by fixed names, so it is also the
// roll-back) and leaves nothing.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DpuAgentClient } from '../agentapi/client';
import type { CapacityResponse, HealthResponse } from '../agentapi/proto';
import { killAndWait, pidAlive, waitFor } from '../testbed/proc';
import { cgroupPids, cgroupsPresent, ensureCgroups, hostCpuList, readCgroupFile, removeCgroups } from './cgroup';
import { formatCpuList, parseCpuList } from '../common/cpulist';
import { cgroupValues, dpuSize, DpuOptions, formatBytes } from './config';
import { ensureMountNamespace, launchAgent, removeMountNamespace } from './launch';
import { createNetwork, networkReady, removeNetwork, Wire, wires } from './network';
import { agentAddress, DPU } from './paths';
import { ensurePki } from './pki';
import { isIPv4Cidr } from '../netns/uplink';

type Log = (line: string) => void;
const quiet: Log = () => undefined;

/** How the host (the shim, `dpu status`) reaches the agent. */
export function hostClientOptions() {
  return { address: agentAddress(), caFile: DPU.pki.caCert, certFile: DPU.pki.shimCert, keyFile: DPU.pki.shimKey };
}

function isAgent(pid: number): boolean {
  try {
    return pidAlive(pid) && fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('heteropod-dpu-agent');
  } catch {
    return false;
  }
}

export function agentPid(): number | undefined {
  try {
    const pid = Number(fs.readFileSync(DPU.pidFile, 'utf8').trim());
    return pid > 0 && isAgent(pid) ? pid : undefined;
  } catch {
    return undefined;
  }
}

async function callAgent<T>(fn: (c: DpuAgentClient) => Promise<T>, timeoutMs = 3000): Promise<T> {
  const client = DpuAgentClient.connect({ ...hostClientOptions(), timeoutMs });
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}

function logTail(): string {
  try {
    const lines = fs.readFileSync(DPU.logFile, 'utf8').trim().split('\n');
    return lines.slice(-5).join('\n  ');
  } catch {
    return '(no log)';
  }
}

/** The DPU's TLS files, copied where the agent sees them: its state dir's tls/. */
function installAgentTls(): void {
  const dir = path.join(DPU.dpuRootOnHost, 'tls');
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.copyFileSync(DPU.pki.caCert, path.join(dir, 'ca.crt'));
  fs.copyFileSync(DPU.pki.agentCert, path.join(dir, 'agent.crt'));
  fs.copyFileSync(DPU.pki.agentKey, path.join(dir, 'agent.key'));
  fs.chmodSync(path.join(dir, 'agent.key'), 0o600);
}

// `everything`: all that runs on the DPU (down): the agent, the pods' runc shims
// and containers, all of which live in the DPU's cgroups. Otherwise only agents,
// so that a restarted agent finds the pods still running.
async function stopAgent(log: Log, everything: boolean): Promise<void> {
  const pids = new Set(everything ? cgroupPids() : cgroupPids().filter(isAgent));
  const recorded = agentPid();
  if (recorded) pids.add(recorded);
  if (pids.size === 0) return;
  await killAndWait([...pids], 5000);
  log(`stopped ${everything ? 'everything on the DPU' : 'the DPU agent'} (pid ${[...pids].join(', ')})`);
}

function checkCidr(cidr: string): string {
  if (!isIPv4Cidr(cidr)) throw new Error(`pod network "${cidr}" is not an IPv4 CIDR (like 10.233.77.0/24)`);
  return cidr;
}

export interface UpResult {
  pid: number;
  already: boolean;
}

export async function up(opts: DpuOptions = {}, log: Log = quiet): Promise<UpResult> {
  if (process.getuid?.() !== 0) throw new Error('the emulated DPU needs root (network namespace, cgroups, mounts)');
  const allCpus = parseCpuList(hostCpuList());
  const size = dpuSize(opts, allCpus);
  const podCidr = checkCidr(opts.podCidr ?? DPU.defaultPodCidr);
  // The host keeps the CPUs the DPU does not have (all of them on a one-CPU machine).
  const hostCpus = allCpus.filter((c) => !size.cpus.includes(c));
  try {
    fs.mkdirSync(DPU.dpuRootOnHost, { recursive: true });
    if ((await ensurePki(DPU.pki, DPU.dpuAddress)) === 'made') log(`made keys and certificates in ${DPU.pki.dir}`);
    installAgentTls();

    if (!(await networkReady(podCidr))) {
      await stopAgent(log, true); // nothing in a half-made namespace can be kept
      await removeNetwork();
      await createNetwork({ podCidr, hostCpus: hostCpus.length ? hostCpus : size.cpus, dpuCpus: size.cpus });
      log(`network namespace ${DPU.netns}: ${DPU.link} ${DPU.hostAddress} <-> ${DPU.dpuAddress}`);
      log(`uplink ${DPU.uplink.dev} ${DPU.uplink.address} <-> fabric ${DPU.uplink.fabricNetns} ${DPU.uplink.fabricAddress} (routes ${podCidr} to the node); host PF ${DPU.pf.hostDev} ${DPU.pf.hostAddress} <-> ${DPU.pf.dpuDev} ${DPU.pf.dpuAddress}`);
    }

    ensureCgroups(cgroupValues(size));
    if ((await ensureMountNamespace()) === 'made') log(`mount namespace pinned at ${DPU.mountNsFile}`);
    fs.writeFileSync(DPU.recordFile, `${JSON.stringify({ cpuset: formatCpuList(size.cpus), memoryBytes: size.memoryBytes, podCidr }, null, 2)}\n`);

    const running = agentPid();
    if (running && (await callAgent((c) => c.health()).then((h) => h.ok, () => false))) {
      log(`already running: DPU agent pid ${running} at ${agentAddress()}`);
      return { pid: running, already: true };
    }
    await stopAgent(log, false); // a recorded agent that does not answer, or a stray one
    const pid = launchAgent();
    fs.writeFileSync(DPU.pidFile, `${pid}\n`);
    await waitFor('the DPU agent to answer over mutual TLS', 20_000, async () => {
      if (!pidAlive(pid)) throw new Error(`the agent exited; its log says:\n  ${logTail()}`);
      return callAgent((c) => c.health(), 1500).then((h) => h.ok, () => false);
    }, 200).catch((err) => {
      throw new Error(`${(err as Error).message}\n  (agent log: ${DPU.logFile})`);
    });
    log(`DPU agent pid ${pid} serving on ${agentAddress()} (cpuset ${formatCpuList(size.cpus)}, memory ${formatBytes(size.memoryBytes)})`);
    return { pid, already: false };
  } catch (err) {
    await down(quiet).catch(() => undefined);
    throw new Error(`dpu up: ${(err as Error).message}`);
  }
}

/** Removes everything `up` made; fine when nothing is there. */
export async function down(log: Log = quiet): Promise<void> {
  await stopAgent(log, true);
  for (const what of await removeMountNamespace()) log(`removed ${what}`);
  for (const what of await removeNetwork()) log(`removed ${what}`);
  for (const what of await removeCgroups()) log(`removed ${what}`);
  if (fs.existsSync(DPU.stateDir)) {
    fs.rmSync(DPU.stateDir, { recursive: true, force: true });
    log(`removed ${DPU.stateDir}`);
  }
  // The parent is ours too unless the test bed (or anything else) has put something there.
  const parent = path.dirname(DPU.stateDir);
  try {
    fs.rmdirSync(parent);
  } catch {
    // not empty, or already gone
  }
}

export interface DpuStatus {
  running: boolean;
  pid?: number;
  address: string;
  netns: boolean;
  cgroup: string;
  cpuset?: string;
  memoryLimitBytes?: number;
  health?: HealthResponse;
  capacity?: CapacityResponse;
  wires: Wire[];
  problems: string[];
}

export async function status(): Promise<DpuStatus> {
  const problems: string[] = [];
  const pid = agentPid();
  const netns = fs.existsSync(DPU.netnsFile);
  const cgroups = cgroupsPresent();
  const s: DpuStatus = { running: false, pid, address: agentAddress(), netns, cgroup: `/${DPU.cgroupName}`, wires: netns ? await wires() : [], problems };
  if (!pid && !netns && cgroups.length === 0 && !fs.existsSync(DPU.stateDir)) return s;
  s.cpuset = readCgroupFile('cpuset', 'cpuset.cpus');
  const limit = readCgroupFile('memory', 'memory.limit_in_bytes');
  if (limit !== undefined) s.memoryLimitBytes = Number(limit);
  if (!netns) problems.push(`network namespace ${DPU.netns} is missing`);
  for (const w of s.wires) for (const e of w.ends) if (!e.up) problems.push(`the ${w.name} wire's ${e.side} end ${e.dev} is down or missing`);
  if (cgroups.length < DPU.cgroupControllers.length) problems.push('some DPU cgroups are missing');
  if (!pid) problems.push('the DPU agent is not running');
  else {
    try {
      s.health = await callAgent((c) => c.health());
      s.capacity = await callAgent((c) => c.capacity());
      if (!s.health.ok) problems.push(`agent unhealthy: ${s.health.problem}`);
    } catch (err) {
      problems.push((err as Error).message);
    }
  }
  s.running = Boolean(pid && s.health?.ok);
  if (problems.length) problems.push('repair with: heteropod dpu up');
  return s;
}
