// The DPU side of end-to-end tests: the agent as the shim sees it, and what must
// be gone from the DPU once its pods are removed.
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DpuAgentClient } from '../../src/agentapi/client';
import type { PodInfo } from '../../src/agentapi/proto';
import { AGENT_DEFAULTS } from '../../src/agent/defaults';
import { FIFO_KEEPER_SOCKET } from '../../src/agent/fifo-keeper';
import { cgroupPids, cgroupTree } from '../../src/dpu/cgroup';
import { agentPid, hostClientOptions } from '../../src/dpu/dpu';
import { cgroupDir, DPU } from '../../src/dpu/paths';
import { HALVES_TABLE, RULE_PREF } from '../../src/netns/uplink';
import { waitFor } from '../../src/testbed/proc';

export async function agentPods(): Promise<PodInfo[]> {
  const client = DpuAgentClient.connect({ ...hostClientOptions(), timeoutMs: 5000 });
  try {
    return (await client.call<{ pods: PodInfo[] }>('ListPods')).pods;
  } finally {
    client.close();
  }
}

/**
 * The cgroup path (memory hierarchy) of a process, e.g. /heteropod-dpu/hp-…/<id>;
 * '' for one that has exited since it was listed (a container's short-lived children).
 */
export function memoryCgroup(pid: number): string {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw err;
  }
  const line = text.split('\n').find((l) => /^\d+:memory:/.test(l));
  return line ? line.split(':')[2] : '';
}

export function netnsInode(pid: number): number {
  return Number(/\[(\d+)\]/.exec(fs.readlinkSync(`/proc/${pid}/ns/net`))?.[1] ?? 0);
}

/** Pids whose memory cgroup ends with /<containerId> (a container's processes). */
export function containerPids(containerId: string): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (memoryCgroup(Number(name)).endsWith(`/${containerId}`)) out.push(Number(name));
    } catch {
      // gone
    }
  }
  return out;
}

/** What pods left on the DPU: pod halves, processes besides the agent (a pod's fifo keeper among them), cgroups, directories, keepers' sockets. */
export async function dpuLeaks(): Promise<string[]> {
  const out: string[] = [];
  for (const p of await agentPods()) out.push(`DPU pod ${p.pod_id} (netns ${p.netns_path}, containers ${p.containers.join(',')})`);
  const agent = agentPid();
  for (const pid of cgroupPids()) if (pid !== agent) out.push(`DPU process ${pid} ${fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ')}`);
  const base = new Set(DPU.cgroupControllers.map((c) => cgroupDir(c)));
  for (const dir of cgroupTree()) if (!base.has(dir) && path.basename(dir) !== DPU.cgroupName) out.push(`DPU cgroup ${dir}`);
  // Each pod's wire to the DPU's uplink (src/netns/uplink.ts): its DPU end, its route, its rules.
  if (fs.existsSync(DPU.netnsFile)) {
    const links = execFileSync('ip', ['-n', DPU.netns, '-o', 'link', 'show'], { encoding: 'utf8' });
    for (const m of links.matchAll(/^\d+: (hpd-[^:@]+)/gm)) out.push(`DPU uplink wire ${m[1]}`);
    const rules = execFileSync('ip', ['-n', DPU.netns, 'rule', 'show'], { encoding: 'utf8' });
    const prefs = Object.values(RULE_PREF).map(String);
    for (const line of rules.split('\n')) if (prefs.includes(line.split(':')[0])) out.push(`DPU uplink rule ${line.trim()}`);
    // The table exists only once a pod's wire has put a route in it.
    const shown = spawnSync('ip', ['-n', DPU.netns, 'route', 'show', 'table', String(HALVES_TABLE)], { encoding: 'utf8' });
    if (shown.status !== 0 && !/FIB table does not exist/.test(shown.stderr)) throw new Error(`ip route show table ${HALVES_TABLE}: ${shown.stderr.trim()}`);
    const routes = (shown.stdout ?? '').trim();
    if (routes) out.push(`DPU uplink routes ${routes.replace(/\n/g, '; ')}`);
  }
  const pods = path.join(DPU.dpuRootOnHost, 'pods');
  if (fs.existsSync(pods)) for (const d of fs.readdirSync(pods)) out.push(`DPU pod directory ${path.join(pods, d)}`);
  // The pods' fifo keepers listen in the agent's run dir, in the DPU's own /run.
  if (agent) {
    const runDir = `/proc/${agent}/root${AGENT_DEFAULTS.runDir}`;
    let names: string[] = [];
    try {
      names = fs.readdirSync(runDir);
    } catch {
      // the agent exited meanwhile, or made no run dir yet
    }
    for (const name of names) if (FIFO_KEEPER_SOCKET.test(name)) out.push(`DPU fifo keeper socket ${path.join(AGENT_DEFAULTS.runDir, name)}`);
  }
  return out;
}

/**
 * Waits (briefly) for the DPU to be clean, then reports what is left apart from
 * `except`: what a user's pods hold there when the test bed was up before the
 * tests (Bed.preexisting.dpu).
 */
export async function settleDpuLeaks(except: readonly string[] = []): Promise<string[]> {
  const theirs = new Set(except);
  const ours = async () => (await dpuLeaks()).filter((l) => !theirs.has(l));
  try {
    await waitFor('the DPU to be clean', 15_000, async () => (await ours()).length === 0);
  } catch {
    // reported below
  }
  return ours();
}
