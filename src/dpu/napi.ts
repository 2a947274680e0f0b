// Each emulated processor does its own packet work. On one kernel, the receive
// work of a packet sent into a veth runs on whichever CPU sent it: the DPU's
// forwarding would run on the host's CPU when the host sends, and the host's TCP
// work on the DPU's when the DPU sends. On real hardware each side's NIC (or
// representor) interrupts its own cores. So every receiving end of an emulated
// wire gets a NAPI instance of its own (GRO on, which veth serves through NAPI),
// polled by a kernel thread (`/sys/class/net/DEV/threaded`) pinned to the CPUs
// of the side that owns the end. A packet's receive work then runs, and is
// counted, on its receiver's CPUs; the thread's own CPU time (in /proc/PID/stat)
// tells a benchmark exactly what each wire's receiving side spent.
import * as fs from 'node:fs';
import { run } from '../testbed/proc';
import { formatCpuList } from '../common/cpulist';
import { DPU } from './paths';

export type LinkSide = 'host' | 'dpu' | 'fabric';

export interface ReceiveThread {
  /** the receiving device, and its namespace's name ('' for the host's own) */
  dev: string;
  netns: string;
  side: LinkSide;
  /** the NAPI kernel thread that does this end's receive work */
  pid: number;
  cpus: string;
}

const THREADS_FILE = `${DPU.stateDir}/receive-threads.json`;

function napiThreads(): Set<number> {
  const out = new Set<number>();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (fs.readFileSync(`/proc/${entry}/comm`, 'utf8').startsWith('napi/')) out.add(Number(entry));
    } catch {
      // gone
    }
  }
  return out;
}

function inNs(netns: string, argv: string[]): string[] {
  return netns ? ['ip', 'netns', 'exec', netns, ...argv] : argv;
}

/**
 * Gives `dev` (in named namespace `netns`, '' for the host's) a threaded NAPI
 * instance pinned to `cpus`; returns its thread. The thread goes with the device.
 * Devices are set up one at a time: the new thread is the one that was not there before.
 */
export async function threadReceive(netns: string, dev: string, side: LinkSide, cpus: number[]): Promise<ReceiveThread> {
  const what = `receive work of ${dev}${netns ? ` in ${netns}` : ''} on CPU ${formatCpuList(cpus)}`;
  const step = async (argv: string[]) => {
    const [cmd, ...args] = inNs(netns, argv);
    const r = await run(cmd, args, { allowFail: true });
    if (r.code !== 0) throw new Error(`${what}: ${argv.join(' ')}: ${r.stderr.trim() || `exit ${r.code}`}`);
  };
  const before = napiThreads();
  // ip netns exec mounts the namespace's own /sys, where its devices are.
  // GRO on: a veth serves its receiving side through NAPI. TSO off on this end
  // as a sender: a veth hands its peer's NAPI only packets the peer could have
  // aggregated itself, so a TSO sender's TCP segments would bypass the peer's
  // thread and be received on the sender's CPU after all (each end of a wire
  // is set up here, so both directions are covered).
  await step(['ethtool', '-K', dev, 'gro', 'on', 'tso', 'off']);
  await step(['sh', '-c', `echo 1 > /sys/class/net/${dev}/threaded`]);
  const fresh = [...napiThreads()].filter((p) => !before.has(p));
  if (fresh.length !== 1) throw new Error(`${what}: expected one new NAPI thread, found ${fresh.length}`);
  const pid = fresh[0];
  await step(['taskset', '-pc', formatCpuList(cpus), String(pid)]);
  return { dev, netns, side, pid, cpus: formatCpuList(cpus) };
}

export function recordReceiveThreads(threads: ReceiveThread[]): void {
  fs.mkdirSync(DPU.stateDir, { recursive: true });
  fs.writeFileSync(THREADS_FILE, `${JSON.stringify(threads, null, 2)}\n`);
}

/** The emulated wires' receive threads that still run (each checked against its name). */
export function receiveThreads(): ReceiveThread[] {
  let all: ReceiveThread[];
  try {
    all = JSON.parse(fs.readFileSync(THREADS_FILE, 'utf8')) as ReceiveThread[];
  } catch {
    return [];
  }
  return all.filter((t) => {
    try {
      return fs.readFileSync(`/proc/${t.pid}/comm`, 'utf8').startsWith(`napi/${t.dev}`.slice(0, 15));
    } catch {
      return false;
    }
  });
}
