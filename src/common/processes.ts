// Processes as the daemons and the test bed look at them.

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
