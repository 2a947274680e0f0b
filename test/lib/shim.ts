// Helpers for the shim's end-to-end tests on the test bed: a leak check of what
// the shims make (run after every test, before the test bed goes down, so a shim
// that fails to exit is caught rather than killed by `local down`), and a
// containerd restart that keeps the pods running. When the test bed was up before
// the tests (a user's, with the user's pods), what those pods hold is the
// `except` list (Bed.preexisting.shims): it is theirs, not a leak.
import { execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CriClient } from '../../src/cri/client';
import { TESTBED } from '../../src/testbed/paths';
import { killAndWait, listProcesses, run, waitFor } from '../../src/testbed/proc';
import { containerdEnv } from '../../src/testbed/testbed';

export const SHIM_STATE_DIR = path.join(TESTBED.runDir, 'shim');

function listDir(dir: string): string[] {
  try {
    return fs.readdirSync(dir).map((n) => path.join(dir, n));
  } catch {
    return [];
  }
}

/** Shim processes (runc's and ours) serving the test bed's containerd. */
export function testbedShims(): { pid: number; cmdline: string }[] {
  return listProcesses().filter((p) => /containerd-shim/.test(p.cmdline) && p.cmdline.includes(TESTBED.socket));
}

/** What is left of pods once every pod is removed: shims, their sockets and state, runc containers, bundles. */
export async function shimLeaks(): Promise<string[]> {
  const out: string[] = [];
  for (const p of testbedShims()) out.push(`process ${p.pid} ${p.cmdline}`);
  for (const f of [...listDir(path.join(SHIM_STATE_DIR, 's')), ...listDir(path.join(SHIM_STATE_DIR, 'pods')).flatMap(listDir), ...listDir(path.join(SHIM_STATE_DIR, 'placement'))]) out.push(`file ${f}`);
  const root = path.join(TESTBED.runcRoot, TESTBED.namespace);
  if (fs.existsSync(root)) {
    const { stdout } = await run('runc', ['--root', root, 'list', '-q'], { allowFail: true });
    for (const id of stdout.split('\n').filter(Boolean)) out.push(`runc container ${id}`);
  }
  for (const b of listDir(path.join(TESTBED.containerdState, 'io.containerd.runtime.v2.task', TESTBED.namespace))) out.push(`bundle ${b}`);
  return out;
}

/**
 * Waits until the shims of the tests' pods are gone, then reports leaks: what
 * shimLeaks() lists apart from `except`. They exit shortly after the last
 * Shutdown, except when our shim was killed: runc's shim then spends up to 5 s
 * trying to deliver its last events before it exits.
 */
export async function settleAndCheckLeaks(except: readonly string[] = []): Promise<string[]> {
  const theirs = new Set(except);
  const ours = async () => (await shimLeaks()).filter((l) => !theirs.has(l));
  try {
    await waitFor('the shims to exit', 20_000, async () => (await ours()).length === 0);
  } catch {
    // reported below
  }
  return ours();
}

function containerdPid(): number {
  return Number(fs.readFileSync(TESTBED.pidFile, 'utf8').trim());
}

/**
 * Stops the test bed's containerd and starts it again: shims and containers keep
 * running. SIGTERM by default; SIGKILL is a crash (nothing of containerd's gets
 * to close).
 */
export async function restartContainerd(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  const pid = containerdPid();
  if (signal === 'SIGKILL') process.kill(pid, 'SIGKILL');
  await killAndWait([pid], 10_000);
  const logFd = fs.openSync(TESTBED.logFile, 'a');
  const child = spawn('containerd', ['--config', TESTBED.configFile], { env: containerdEnv(), detached: true, stdio: ['ignore', logFd, logFd], cwd: TESTBED.runDir });
  fs.closeSync(logFd);
  child.unref();
  fs.writeFileSync(TESTBED.pidFile, `${child.pid}\n`);
  await waitFor('containerd to answer CRI again', 30_000, async () => {
    const cri = CriClient.connect(TESTBED.endpoint, 2000);
    try {
      await cri.version();
      return true;
    } finally {
      cri.close();
    }
  }, 200);
}

/** The containerd log written since `offset`, for diagnosis in failure messages. */
export function containerdLogSince(offset: number): string {
  try {
    return fs.readFileSync(TESTBED.logFile, 'utf8').slice(offset);
  } catch {
    return '';
  }
}

export function containerdLogSize(): number {
  try {
    return fs.statSync(TESTBED.logFile).size;
  } catch {
    return 0;
  }
}

/** Runs a shell command under a pseudo-terminal (script(1)); its output with CRs removed. */
export function runUnderPty(command: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    // script(1) gives ctr a pseudo-terminal of the size stty sets, which ctr passes on with ResizePty.
    execFile('script', ['-qec', command, '/dev/null'], { timeout: 30_000 }, (err, stdout) => {
      const code = err ? Number((err as NodeJS.ErrnoException).code ?? 1) : 0;
      resolve({ code, output: String(stdout).replace(/\r/g, '') });
    });
  });
}
