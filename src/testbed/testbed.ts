// `heteropod local up | down | status`: a private single-node containerd with CRI,
// its own CNI network, the locally built images and the `runc` and `heteropod`
// runtime handlers. `down` removes everything `up` made, by the records of
// containerd, runc and CNI rather than by guessing.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { socketAnswers } from '../common/sockets';
import { NODE_DAEMON_FLAGS, nodeDaemonBinary, nodeDaemonMain } from '../shim/install';
import { removeManagementGuard } from '../shim/mgmt-filter';
import { CriClient } from '../cri/client';
import * as dpu from '../dpu/dpu';
import { agentAddress } from '../dpu/paths';
import type { CriObject } from '../cri/config';
import { ensureImageArchives, importImages } from '../images';
import { cniConfig, containerdConfig, shimConfig } from './config';
import { REPO_ROOT, TESTBED } from './paths';
import { killAndWait, listProcesses, mountsUnder, pidAlive, run, sleep, waitFor } from './proc';

type Log = (line: string) => void;

/**
 * Shared places that containerd and runc create whatever the test bed's config
 * says: shim sockets in /run/containerd/s, and the parent cgroup `k8s.io` of every
 * pod. When one is absent at `up`, the test bed made it, and `down` removes it
 * again if it is empty (never what another containerd keeps there).
 */
const SHARED_PARENTS = [
  { name: 'run-containerd', probe: '/run/containerd', remove: () => ['/run/containerd/s', '/run/containerd'] },
  {
    name: 'k8s-cgroups',
    probe: '/sys/fs/cgroup/pids/k8s.io',
    remove: () => listDirs('/sys/fs/cgroup').map((controller) => `/sys/fs/cgroup/${controller}/k8s.io`),
  },
];

function listDirs(dir: string): string[] {
  try {
    return fs.readdirSync(dir, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
  } catch {
    return [];
  }
}

const createdMark = (name: string) => `${TESTBED.runDir}/created-${name}`;

/** Whether the pods' parent cgroup k8s.io is the test bed's own (it made it at up), not another containerd's. */
export function ownsPodCgroups(): boolean {
  return fs.existsSync(createdMark('k8s-cgroups'));
}

const REQUIRED = [
  ['containerd', 'containerd'],
  ['ctr', 'containerd'],
  ['runc', 'runc'],
  ['containerd-shim-runc-v2', 'containerd'],
  ['/usr/lib/cni/bridge', 'containernetworking-plugins'],
  ['/usr/lib/cni/host-local', 'containernetworking-plugins'],
  ['/usr/lib/cni/loopback', 'containernetworking-plugins'],
  ['ip', 'iproute2'],
] as const;

async function checkPrerequisites(): Promise<void> {
  const missing: string[] = [];
  for (const [bin, pkg] of REQUIRED) {
    const found = bin.startsWith('/') ? fs.existsSync(bin) : (await run('sh', ['-c', `command -v ${bin}`], { allowFail: true })).code === 0;
    if (!found) missing.push(`${bin} (Debian package ${pkg})`);
  }
  if (missing.length) throw new Error(`the test bed needs ${missing.join(', ')}: run make deps`);
  if (process.getuid?.() !== 0) throw new Error('the test bed runs containerd and needs root');
}

function readPid(): number | undefined {
  try {
    const pid = Number(fs.readFileSync(TESTBED.pidFile, 'utf8').trim());
    return pid > 0 && pidAlive(pid) ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** The test bed's containerd, if one runs: found by its pid file or, failing that, by its command line. */
function containerdPids(): number[] {
  const pids = new Set<number>();
  const fromFile = readPid();
  if (fromFile) pids.add(fromFile);
  for (const p of listProcesses()) {
    if (/(^|\/)containerd /.test(p.cmdline) && p.cmdline.includes(TESTBED.configFile)) pids.add(p.pid);
  }
  return [...pids];
}

async function criAnswers(): Promise<boolean> {
  if (!fs.existsSync(TESTBED.socket)) return false;
  const cri = CriClient.connect(TESTBED.endpoint, 2000);
  try {
    await cri.version();
    return true;
  } catch {
    return false;
  } finally {
    cri.close();
  }
}

function logTail(lines = 20): string {
  try {
    return fs.readFileSync(TESTBED.logFile, 'utf8').trim().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no containerd log)';
  }
}

export async function up(log: Log = () => {}): Promise<void> {
  await checkPrerequisites();
  if (containerdPids().length && (await criAnswers())) {
    log(`test bed already running (containerd at ${TESTBED.endpoint})`);
    await ensureImages(log);
    await dpu.up({ podCidr: TESTBED.podSubnet }, log);
    if (nodeDaemonPids().length === 0) await startNodeDaemon(log);
    return;
  }
  // Whatever an earlier run left (a crash, a killed containerd) goes first.
  await down(() => {});
  try {
    await start(log);
    await ensureImages(log);
    await waitFor('the CRI network to be ready', 30_000, async () => networkReady());
    // The emulated DPU, where the heteropod handler runs offloaded containers.
    await dpu.up({ podCidr: TESTBED.podSubnet }, log);
    await startNodeDaemon(log);
  } catch (err) {
    const message = `local up: ${(err as Error).message}\ncontainerd log (${TESTBED.logFile}):\n${logTail()}`;
    await down(() => {});
    throw new Error(message);
  }
  log(`test bed up: containerd at ${TESTBED.endpoint}, runtime handlers runc and heteropod, pod network ${TESTBED.podSubnet} on ${TESTBED.cniBridge}, DPU agent at ${agentAddress()}`);
}

/**
 * containerd's environment. containerd 1.6.20 does not honour `runtime_path` for
 * CRI tasks: it finds a shim by name on its PATH, so the checkout's bin/ (holding
 * containerd-shim-heteropod-v2) goes first.
 */
export function containerdEnv(): NodeJS.ProcessEnv {
  return { ...process.env, PATH: `${path.join(REPO_ROOT, 'bin')}:${process.env.PATH || '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'}` };
}

async function start(log: Log): Promise<void> {
  for (const dir of [TESTBED.runDir, TESTBED.stateDir, TESTBED.cniConfDir, TESTBED.cniIpamDir, TESTBED.optDir]) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o711 });
  }
  for (const parent of SHARED_PARENTS) if (!fs.existsSync(parent.probe)) fs.writeFileSync(createdMark(parent.name), '');
  fs.writeFileSync(TESTBED.configFile, containerdConfig());
  fs.writeFileSync(TESTBED.shimConfig, shimConfig());
  fs.writeFileSync(path.join(TESTBED.cniConfDir, '10-heteropod-testbed.conflist'), cniConfig());
  const logFd = fs.openSync(TESTBED.logFile, 'a');
  const child = spawn('containerd', ['--config', TESTBED.configFile], {
    env: containerdEnv(),
    detached: true,
    stdio: ['ignore', logFd, logFd],
    cwd: TESTBED.runDir,
  });
  fs.closeSync(logFd);
  child.unref();
  if (!child.pid) throw new Error('containerd did not start');
  fs.writeFileSync(TESTBED.pidFile, `${child.pid}\n`);
  log(`containerd started (pid ${child.pid}), log ${TESTBED.logFile}`);
  await waitFor('containerd to answer CRI', 30_000, async () => {
    if (!pidAlive(child.pid!)) throw new Error('containerd exited');
    return criAnswers();
  }, 200);
}

/** The test bed's node daemon, found by its command line (process.title names its socket). */
export function nodeDaemonPids(): number[] {
  return listProcesses()
    .filter(
      (p) =>
        (p.cmdline.startsWith('heteropod-node ') && p.cmdline.includes(TESTBED.nodeSocket)) ||
        (/(node-main\.js|heteropod-noded) --config /.test(p.cmdline) && p.cmdline.includes(TESTBED.shimConfig)),
    )
    .map((p) => p.pid);
}

/**
 * Starts the node daemon (what `heteropod install`'s systemd unit runs on a real
 * node) and waits until it answers on its socket.
 */
export async function startNodeDaemon(log: Log = () => {}): Promise<number> {
  const logFd = fs.openSync(TESTBED.nodeLogFile, 'a');
  const [file, ...args] = nodeDaemonArgv();
  const child = spawn(file, args, {
    detached: true,
    stdio: ['ignore', logFd, logFd],
    cwd: TESTBED.runDir,
  });
  fs.closeSync(logFd);
  child.unref();
  if (!child.pid) throw new Error('the node daemon did not start');
  const pid = child.pid;
  fs.writeFileSync(TESTBED.nodePidFile, `${pid}\n`);
  await waitFor('the node daemon to answer', 15_000, async () => {
    if (!pidAlive(pid)) throw new Error(`the node daemon exited; its log (${TESTBED.nodeLogFile}):\n${fs.readFileSync(TESTBED.nodeLogFile, 'utf8').trim().split('\n').slice(-10).join('\n')}`);
    return socketAnswers(TESTBED.nodeSocket);
  }, 100);
  log(`node daemon started (pid ${pid}), log ${TESTBED.nodeLogFile}`);
  return pid;
}

/** The test bed's node daemon's command line, as startNodeDaemon runs it. */
export function nodeDaemonArgv(): string[] {
  // HETEROPOD_NODE_DAEMON=node: the node daemon written in TypeScript, to compare.
  if (process.env.HETEROPOD_NODE_DAEMON === 'node') return [process.execPath, ...NODE_DAEMON_FLAGS, nodeDaemonMain(REPO_ROOT), '--config', TESTBED.shimConfig];
  return [nodeDaemonBinary(REPO_ROOT), '--config', TESTBED.shimConfig];
}

/** Stops the node daemon: SIGTERM (as systemd does), SIGKILL after 5 s. */
export async function stopNodeDaemon(log: Log = () => {}): Promise<void> {
  const pids = nodeDaemonPids();
  if (pids.length === 0) return;
  await killAndWait(pids, 5000);
  fs.rmSync(TESTBED.nodePidFile, { force: true });
  log('node daemon stopped');
}

async function ensureImages(log: Log): Promise<void> {
  const archives = await ensureImageArchives();
  await importImages({ address: TESTBED.socket, namespace: TESTBED.namespace, archives: archives.map((a) => a.archive) });
  log(`images: ${archives.map((a) => a.ref).join(', ')}`);
}

async function networkReady(): Promise<boolean> {
  const cri = CriClient.connect(TESTBED.endpoint, 5000);
  try {
    const status = await cri.status();
    const conditions = ((status.status as CriObject).conditions as CriObject[]) ?? [];
    return conditions.every((c) => c.status === true);
  } finally {
    cri.close();
  }
}

/** Removes the pods through CRI while containerd still answers: the orderly path. */
async function removePods(log: Log): Promise<void> {
  const cri = CriClient.connect(TESTBED.endpoint, 60_000);
  try {
    for (const pod of await cri.listPodSandbox()) {
      const id = pod.id as string;
      try {
        await cri.stopPodSandbox(id);
        await cri.removePodSandbox(id);
        log(`removed pod ${(pod.metadata as CriObject).name} (${id.slice(0, 13)})`);
      } catch (err) {
        log(`could not remove pod ${id.slice(0, 13)}: ${(err as Error).message}`);
      }
    }
  } finally {
    cri.close();
  }
}

/** Shim processes serving the test bed's containerd (runc's and ours). */
function shimPids(): number[] {
  return listProcesses()
    .filter((p) => /containerd-shim/.test(p.cmdline) && p.cmdline.includes(TESTBED.socket))
    .map((p) => p.pid);
}

/** runc containers the test bed's shims made, killed and deleted by runc itself. */
async function removeRuncContainers(log: Log): Promise<void> {
  const root = path.join(TESTBED.runcRoot, TESTBED.namespace);
  if (!fs.existsSync(root)) return;
  const { stdout } = await run('runc', ['--root', root, 'list', '-q'], { allowFail: true });
  for (const id of stdout.split('\n').filter(Boolean)) {
    await run('runc', ['--root', root, 'delete', '--force', id], { allowFail: true });
    log(`deleted leftover runc container ${id.slice(0, 13)}`);
  }
}

/** Shim sockets named in the task bundles' address files (the shims remove their own on a clean exit). */
function shimSockets(): string[] {
  const tasks = path.join(TESTBED.containerdState, 'io.containerd.runtime.v2.task');
  const out: string[] = [];
  if (!fs.existsSync(tasks)) return out;
  for (const ns of fs.readdirSync(tasks)) {
    for (const id of fs.readdirSync(path.join(tasks, ns))) {
      try {
        const address = fs.readFileSync(path.join(tasks, ns, id, 'address'), 'utf8').trim();
        out.push(address.replace(/^unix:\/\//, ''));
      } catch {
        // no address file
      }
    }
  }
  return out;
}

/** Network namespaces of the test bed's pods, from the CNI IPAM records (one file per address, holding the container id). */
function cniNetnsOfLeftoverPods(): string[] {
  const out: string[] = [];
  const sandboxes = path.join(TESTBED.containerdRoot, 'io.containerd.grpc.v1.cri', 'sandboxes');
  if (!fs.existsSync(sandboxes)) return out;
  for (const id of fs.readdirSync(sandboxes)) {
    // the CRI plugin keeps each sandbox's metadata in containerd's store, not here; the
    // netns path is in the sandbox's OCI spec in the task bundle when the task exists.
    const spec = path.join(TESTBED.containerdState, 'io.containerd.runtime.v2.task', TESTBED.namespace, id, 'config.json');
    try {
      const nss = JSON.parse(fs.readFileSync(spec, 'utf8')).linux.namespaces as { type: string; path?: string }[];
      const net = nss.find((n) => n.type === 'network' && n.path?.startsWith('/var/run/netns/cni-'));
      if (net?.path) out.push(net.path.replace(/^\/var\/run\//, '/run/'));
    } catch {
      // no bundle left
    }
  }
  return out;
}

export async function down(log: Log = () => {}): Promise<void> {
  if (containerdPids().length && (await criAnswers())) await removePods(log);
  const leftoverNetns = cniNetnsOfLeftoverPods();
  const sockets = shimSockets();

  const daemons = containerdPids();
  if (daemons.length) {
    await killAndWait(daemons, 10_000);
    log(`containerd stopped`);
  }
  await removeRuncContainers(log);
  // After the pods (the node daemon removes their DPU halves), before the DPU.
  await stopNodeDaemon(log);
  // The node daemon's guard of the management link outlives it (mgmt-filter.ts).
  await removeManagementGuard();
  // After the pods, before the shared parents.
  await dpu.down(log);
  const shims = shimPids();
  if (shims.length) {
    await killAndWait(shims, 5000);
    log(`stopped ${shims.length} leftover shim process(es)`);
  }
  for (const socket of sockets) fs.rmSync(socket, { force: true });

  for (const mount of mountsUnder([TESTBED.runDir, TESTBED.stateDir, ...leftoverNetns]).reverse()) {
    await run('umount', ['-l', mount], { allowFail: true });
  }
  for (const netns of leftoverNetns) fs.rmSync(netns, { force: true });

  if ((await run('ip', ['link', 'show', TESTBED.cniBridge], { allowFail: true })).code === 0) {
    await run('ip', ['link', 'delete', TESTBED.cniBridge]);
    log(`removed bridge ${TESTBED.cniBridge}`);
  }
  for (const parent of SHARED_PARENTS) {
    if (!fs.existsSync(createdMark(parent.name))) continue;
    for (const dir of parent.remove()) {
      // Only when empty (a cgroup: when it has no children). A cgroup whose last
      // process has exited stays busy until that process is reaped, which this
      // machine's init may do a moment later.
      for (let attempt = 0; ; attempt++) {
        try {
          fs.rmdirSync(dir);
          break;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EBUSY' || attempt >= 20) break; // not empty, gone, or still busy
          await sleep(100);
        }
      }
    }
  }
  // The overlay snapshots may still be busy for a moment after the last umount.
  for (let attempt = 0; ; attempt++) {
    try {
      fs.rmSync(TESTBED.runDir, { recursive: true, force: true });
      fs.rmSync(TESTBED.stateDir, { recursive: true, force: true });
      break;
    } catch (err) {
      if (attempt >= 20) throw new Error(`local down: remove ${TESTBED.runDir} and ${TESTBED.stateDir}: ${(err as Error).message}`);
      await sleep(100);
    }
  }
  try {
    fs.rmdirSync(path.dirname(TESTBED.stateDir));
  } catch {
    // /var/lib/heteropod holds other things, or is gone
  }
}

export interface TestbedStatus {
  running: boolean;
  pid?: number;
  endpoint: string;
  version?: string;
  pods?: number;
  containers?: number;
  images?: string[];
  handlers: string[];
  networkReady?: boolean;
  problems: string[];
}

export async function status(): Promise<TestbedStatus> {
  const pid = containerdPids()[0];
  const out: TestbedStatus = { running: false, pid, endpoint: TESTBED.endpoint, handlers: ['runc', 'heteropod'], problems: [] };
  if (!pid) return out;
  if (!(await criAnswers())) {
    out.problems.push(`containerd (pid ${pid}) runs but does not answer CRI at ${TESTBED.endpoint}`);
    return out;
  }
  const cri = CriClient.connect(TESTBED.endpoint, 5000);
  try {
    const v = await cri.version();
    out.running = true;
    out.version = `${v.runtime_name} ${v.runtime_version}`;
    out.pods = (await cri.listPodSandbox()).length;
    out.containers = (await cri.listContainers()).length;
    out.images = (await cri.listImages()).flatMap((i) => i.repo_tags as string[]);
    out.networkReady = await networkReady();
    if (!fs.existsSync(TESTBED.shimBinary)) out.problems.push(`handler heteropod: ${TESTBED.shimBinary} is not built yet`);
  } finally {
    cri.close();
  }
  return out;
}
