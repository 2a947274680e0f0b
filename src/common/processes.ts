// Processes as the daemons and the test bed look at them.
import { spawn } from 'node:child_process';

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

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to its end (`input` on its stdin), never throwing: the caller reads `code`. */
export function runCommand(cmd: string, args: string[], input = ''): Promise<CommandResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => resolve({ code: 127, stdout: '', stderr: e.message }));
    child.on('close', (code, signal) => resolve({ code: code ?? 128, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() || (signal ? `killed by ${signal}` : '') }));
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
  });
}
