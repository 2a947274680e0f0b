// Processes as the daemons and the test bed look at them.
import * as fs from 'node:fs';

/** Whether a process with this pid exists (one of another user's counts too). */
export function pidAlive(pid: number): boolean {
  if (pid <= 0) return false; // kill(0 or -n) would signal a process group
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * The state letter of a process as /proc/PID/stat gives it (R, S, D, Z, …),
 * null for no such process.
 */
export function processState(pid: number): string | null {
  if (pid <= 0) return null;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The state follows the command name, which is in parentheses and may hold any character.
    const close = stat.lastIndexOf(')');
    return stat.slice(close + 2, close + 3);
  } catch {
    return null;
  }
}

/**
 * Whether a process with this pid runs: exists and has not exited. An exited
 * process its parent has not yet reaped (a zombie) holds no file, device or
 * mapping any more, so it holds nothing a successor must wait for.
 */
export function processRunning(pid: number): boolean {
  if (!pidAlive(pid)) return false;
  const state = processState(pid);
  return state !== null && state !== 'Z' && state !== 'X';
}
