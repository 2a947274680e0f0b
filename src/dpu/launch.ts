// Starting the agent "on" the emulated DPU.
//
// The DPU's mount namespace is made once per `dpu up` and pinned (paths.ts,
// mountNsFile), so it outlives any one agent: the runc shims, pod namespaces and
// rootfs mounts the agent made are still there for the next agent. Made by
// `unshare --mount=<pin> --propagation private` running the setup script, which
// covers /run and /var/lib/heteropod with empty tmpfs (so the host's containerd,
// test bed and snapshots are not there; /run/heteropod, /run/containerd and
// /var/lib/heteropod/local exist, empty) and moves the DPU's own state dir (host:
// /var/lib/heteropod/dpu/root) to /var/lib/heteropod/dpu; the CA key and the
// shim's key stay outside.
//
// The agent is then started by one shell, as root:
//   1. it joins the DPU cgroups (so everything after, and every child, is counted
//      against the DPU's cpuset and memory);
//   2. execs nsenter into the pinned mount namespace and into hp-dpu's network
//      namespace;
//   3. execs the agent.
// Every step execs, so the pid `spawn` returns is the agent's pid.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { REPO_ROOT } from '../testbed/paths';
import { run } from '../testbed/proc';
import { agentAddress, cgroupDir, DPU } from './paths';

export const AGENT_BIN = path.join(REPO_ROOT, 'bin', 'heteropod-dpu-agent');

/** The setup run once inside the DPU's new mount namespace. */
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
  ].join('\n');
}

export function outsideScript(): string {
  const join = DPU.cgroupControllers.map((c) => `echo $$ > ${cgroupDir(c)}/cgroup.procs`);
  return ['set -e', ...join, `exec nsenter --mount=${DPU.mountNsFile} --net=${DPU.netnsFile} -- "$@"`].join('\n');
}

function mountPoints(): string[] {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter(Boolean);
}

export function mountNamespacePinned(): boolean {
  return mountPoints().includes(DPU.mountNsFile);
}

/** Makes and pins the DPU's mount namespace, unless it is there already. */
export async function ensureMountNamespace(): Promise<'made' | 'kept'> {
  if (mountNamespacePinned()) return 'kept';
  fs.mkdirSync(DPU.mountNsDir, { recursive: true, mode: 0o700 });
  if (!mountPoints().includes(DPU.mountNsDir)) await run('mount', ['--bind', DPU.mountNsDir, DPU.mountNsDir]);
  await run('mount', ['--make-private', DPU.mountNsDir]);
  fs.writeFileSync(DPU.mountNsFile, '');
  try {
    await run('unshare', [`--mount=${DPU.mountNsFile}`, '--propagation', 'private', '/bin/sh', '-c', insideScript()]);
  } catch (err) {
    await removeMountNamespace();
    throw new Error(`make the DPU's mount namespace: ${(err as Error).message}`);
  }
  return 'made';
}

/** Unpins the namespace (it goes when its last process has gone) and removes the pin. */
export async function removeMountNamespace(): Promise<string[]> {
  const removed: string[] = [];
  if (mountNamespacePinned()) {
    await run('umount', [DPU.mountNsFile]);
    removed.push(`mount namespace ${DPU.mountNsFile}`);
  }
  if (mountPoints().includes(DPU.mountNsDir)) await run('umount', [DPU.mountNsDir]);
  fs.rmSync(DPU.mountNsDir, { recursive: true, force: true });
  return removed;
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
      env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', HETEROPOD_AGENT_DEBUG: process.env.HETEROPOD_AGENT_DEBUG ?? '' },
    });
    if (child.pid === undefined) throw new Error('start the DPU agent: spawn failed');
    child.unref();
    return child.pid;
  } finally {
    fs.closeSync(log);
  }
}
