// Network namespaces for tests: created with a recognisable hpx- name, removed
// by the test, and checked for leaks afterwards.
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';

export function canMakeNetns(): string | null {
  if (process.getuid && process.getuid() !== 0) return 'needs root';
  if (!fs.existsSync('/dev/net/tun')) return 'no /dev/net/tun';
  const r = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  if (r.status !== 0) return 'ip netns does not work here';
  return null;
}

export function addNetns(name: string): string {
  if (!name.startsWith('hpx-')) throw new Error(`test namespace ${name} must start with hpx-`);
  execFileSync('ip', ['netns', 'add', name]);
  execFileSync('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  return `/run/netns/${name}`;
}

export function delNetns(name: string): void {
  spawnSync('ip', ['netns', 'del', name]);
}

export function listNetns(prefix: string): string[] {
  const out = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout ?? '';
  return out
    .split('\n')
    .map((l) => l.split(' ')[0])
    .filter((n) => n && n.startsWith(prefix));
}

/** Network devices in a namespace, without lo. */
export function devices(ns: string): string[] {
  const r = spawnSync('ip', ['-n', ns, '-o', 'link', 'show'], { encoding: 'utf8' });
  return (r.stdout ?? '')
    .split('\n')
    .map((l) => l.split(':')[1]?.trim().split('@')[0])
    .filter((d): d is string => !!d && d !== 'lo');
}

/** Processes whose command line contains needle (other than this one). */
export function processesMatching(needle: string): number[] {
  const pids: number[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (cmd.includes(needle)) pids.push(Number(d));
    } catch {
      // gone
    }
  }
  return pids;
}

/** The libxpu threads (xpu-*) of a process: tid -> name. */
export function xpuThreads(pid: number): Map<string, string> {
  const out = new Map<string, string>();
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      const comm = fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
      if (comm.startsWith('xpu-')) out.set(tid, comm);
    } catch {
      // the thread is gone
    }
  }
  return out;
}

/** The names of a process's libxpu threads, sorted (each link's end has its own). */
export const xpuThreadNames = (pid: number): string[] => [...xpuThreads(pid).values()].sort();

/** A CPU mask as sysfs prints it (hex words, the highest first, commas between). */
export const parseCpuMask = (text: string): bigint => BigInt(`0x${text.trim().replace(/,/g, '')}`);
