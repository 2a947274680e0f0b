// Starting the agent "on" the emulated DPU. One shell, as root, in this order:
//   1. joins the DPU cgroups (so everything after, and every child, is counted
//      against the DPU's cpuset and memory);
//   2. execs unshare --mount --propagation private: a mount namespace of its own
//      whose changes never reach the host;
//   3. execs nsenter --net into hp-dpu;
//   4. inside, covers /run and /var/lib/heteropod with empty tmpfs (so the host's
//      containerd, test bed and snapshots are not there; /run/heteropod,
//      /run/containerd and /var/lib/heteropod/local exist, empty) and moves the
//      DPU's own state dir (host: /var/lib/heteropod/dpu/root) to
//      /var/lib/heteropod/dpu; the CA key and the shim's key stay outside;
//   5. execs the agent.
// Every step execs, so the pid `spawn` returns is the agent's pid.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { REPO_ROOT } from '../testbed/paths';
import { agentAddress, cgroupDir, DPU } from './paths';

export const AGENT_BIN = path.join(REPO_ROOT, 'bin', 'heteropod-dpu-agent');

/** The script run inside the DPU's mount and network namespaces; "$@" is the agent's command. */
export function insideScript(): string {
  const staging = '/run/.hp-dpu-state';
  return [
    'set -e',
    `mount -t tmpfs -o mode=0755,size=64m hp-dpu-run ${DPU.hiddenRun}`,
    `mkdir -p ${DPU.emptyInside.filter((p) => p.startsWith('/run/')).join(' ')} ${staging}`,
    // Bind the DPU's state dir before /var/lib/heteropod is covered, then move it into place.
    `mount --bind ${DPU.dpuRootOnHost} ${staging}`,
    `mount -t tmpfs -o mode=0755,size=16m hp-dpu-state ${DPU.hiddenState}`,
    `mkdir -p ${DPU.emptyInside.filter((p) => p.startsWith(`${DPU.hiddenState}/`)).join(' ')} ${DPU.stateDir}`,
    `mount --move ${staging} ${DPU.stateDir}`,
    `rmdir ${staging}`,
    'exec "$@"',
  ].join('\n');
}

export function outsideScript(): string {
  const join = DPU.cgroupControllers.map((c) => `echo $$ > ${cgroupDir(c)}/cgroup.procs`);
  return [
    'set -e',
    ...join,
    `exec unshare --mount --propagation private -- nsenter --net=${DPU.netnsFile} -- /bin/sh -c "$INSIDE" dpu-inside "$@"`,
  ].join('\n');
}

export function agentCommand(): string[] {
  return [process.execPath, AGENT_BIN, '--listen', agentAddress(), '--tls-dir', DPU.tlsDirInside];
}

/** Starts the agent detached, its output appended to the log; returns its pid. */
export function launchAgent(): number {
  const log = fs.openSync(DPU.logFile, 'a');
  try {
    const child = spawn('/bin/sh', ['-c', outsideScript(), 'dpu-launch', ...agentCommand()], {
      detached: true,
      stdio: ['ignore', log, log],
      env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', INSIDE: insideScript(), HETEROPOD_AGENT_DEBUG: process.env.HETEROPOD_AGENT_DEBUG ?? '' },
    });
    if (child.pid === undefined) throw new Error('start the DPU agent: spawn failed');
    child.unref();
    return child.pid;
  } finally {
    fs.closeSync(log);
  }
}
