// Small process helpers for the test bed: run a command and get its output with
// an error that says what failed, wait for a condition, find processes.
import { execFile, ExecFileOptions } from 'node:child_process';
import * as fs from 'node:fs';
import { pidAlive, processRunning } from '../common/processes';

export interface RunResult {
  stdout: string;
  stderr: string;
}

export function run(cmd: string, args: string[], opts: ExecFileOptions & { allowFail?: boolean } = {}): Promise<RunResult & { code: number }> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 64 * 1024 * 1024, ...opts, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as NodeJS.ErrnoException).code === 'number' ? Number((err as NodeJS.ErrnoException).code) : 1) : 0;
      if (err && !opts.allowFail) {
        const why = (stderr || '').trim() || err.message;
        return reject(new Error(`${cmd} ${args.join(' ')}: ${why}`));
      }
      resolve({ stdout: String(stdout), stderr: String(stderr), code });
    });
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `check` until it returns a value other than undefined/false, or throws after `timeoutMs`. */
export async function waitFor<T>(what: string, timeoutMs: number, check: () => Promise<T | undefined | false> | T | undefined | false, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined && v !== false) return v as T;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    }
    await sleep(everyMs);
  }
}

export { pidAlive };

export interface ProcessInfo {
  pid: number;
  ppid: number;
  cmdline: string;
  cgroup: string;
}

export function listProcesses(): ProcessInfo[] {
  const out: ProcessInfo[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const cmdline = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').join(' ').trim();
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const cgroup = fs.readFileSync(`/proc/${name}/cgroup`, 'utf8');
      if (cmdline) out.push({ pid: Number(name), ppid, cmdline, cgroup });
    } catch {
      // the process exited while we looked
    }
  }
  return out;
}

export async function killAndWait(pids: number[], graceMs: number): Promise<void> {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      // already gone
    }
  }
  // An exited process that its parent has not reaped yet (this machine's init
  // may reap late) has exited all the same.
  const deadline = Date.now() + graceMs;
  while (pids.some(processRunning) && Date.now() < deadline) await sleep(50);
  for (const pid of pids.filter(processRunning)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  await waitFor('killed processes to exit', 5000, () => !pids.some(processRunning));
}

export function mountsUnder(prefixes: string[]): string[] {
  const mountinfo = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  const points = mountinfo
    .split('\n')
    .filter(Boolean)
    .map((line) => line.split(' ')[4].replace(/\\040/g, ' '));
  return points.filter((p) => prefixes.some((prefix) => p === prefix || p.startsWith(`${prefix}/`)));
}
