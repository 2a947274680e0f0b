// `delete`: containerd's clean-up for a task whose shim is gone or failed to
// start (or after a restart when Connect fails). Kills and deletes the task
// through whatever still runs for the pod — our daemon, else runc's shim behind
// it, else runc's own `delete` — and prints a binary DeleteResponse. Once the pod
// has no task left, its shim state goes too.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { TtrpcClient, RpcError, Code } from '../ttrpc';
import { loadConfig } from './config';
import { ShimFlags, formatFlags } from '../taskapi/flags';
import { socketAnswers } from '../common/sockets';
import { groupOf, groupPaths, GroupPaths, removeIfEmpty } from './paths';
import { readSpec } from './bundle';
import { TASK_SERVICE } from '../runcshim/runtime';
import { readStartRecord } from './record';
import { deleteOnDpu } from './dpu-cleanup';
import { DeleteResult, decodeDeleteResponse, encodeDeleteResponse, encodeIdRequest, encodeKillRequest, encodeShutdownRequest } from '../taskapi/messages';

const SIGKILL = 9;

export async function deleteTask(flags: ShimFlags): Promise<Buffer> {
  const bundle = flags.bundle || process.cwd();
  const record = readStartRecord(bundle);
  const config = loadConfig(record?.configPath);
  let group = record?.group ?? flags.id;
  try {
    group = groupOf(flags.id, readSpec(bundle).annotations);
  } catch {
    // No spec left: the start record, else the id, names the pod.
  }
  const paths = groupPaths(config.stateDir, flags.address, flags.namespace, group);
  // Our daemon's socket is stale once nothing answers on it: it goes first.
  const daemonAlive = await socketAnswers(`unix://${paths.socket}`);
  if (!daemonAlive) fs.rmSync(paths.socket, { force: true });
  // Without our daemon, nothing relays the pod's DPU containers any more.
  const onDpu = daemonAlive ? null : await deleteOnDpu(config, group, flags.id, (what, err) => void process.stderr.write(`delete ${flags.id}: ${what}: ${(err as Error).message}\n`));
  const result =
    onDpu ??
    (daemonAlive ? await deleteThrough(`unix://${paths.socket}`, flags, false) : null) ??
    (await deleteThrough(readAddress(paths), flags, true)) ??
    runcDelete(config.runcShim, flags, bundle);
  // The pod's state goes with its last task, once runc's shim has exited too, or
  // is exiting (it closed our connection after Shutdown): its socket, which it
  // would remove at exit by the `address` in this state, goes here with it.
  // containerd allows a `delete` 5 s: nothing waits for the exit itself.
  const runcAddress = readAddress(paths);
  if (!daemonAlive && (runcShimExiting || !(await socketAnswers(runcAddress)))) {
    if (runcShimExiting && runcAddress) fs.rmSync(runcAddress.replace(/^unix:\/\//, ''), { force: true });
    fs.rmSync(paths.dir, { recursive: true, force: true });
    removeIfEmpty(path.dirname(paths.dir));
  }
  return encodeResult(result);
}

// runc's shim closed our connection after Shutdown: it is exiting.
let runcShimExiting = false;

function encodeResult(result: DeleteResult): Buffer {
  const now = Date.now();
  return encodeDeleteResponse(
    result.pid,
    result.exitStatus || 128 + SIGKILL,
    result.exitedAt && result.exitedAt.seconds > 0 ? result.exitedAt : { seconds: Math.floor(now / 1000), nanos: (now % 1000) * 1e6 },
  );
}

function readAddress(paths: GroupPaths): string {
  try {
    return fs.readFileSync(path.join(paths.runcWorkDir, 'address'), 'utf8').trim();
  } catch {
    return '';
  }
}

// Kill, wait, delete over a Task service; null when that service is unreachable.
// `shutdown` asks it to exit afterwards (it does only when no task is left).
async function deleteThrough(address: string, flags: ShimFlags, shutdown: boolean): Promise<DeleteResult | null> {
  if (!address) return null;
  let client: TtrpcClient;
  try {
    client = await TtrpcClient.connect(address, { namespace: flags.namespace, timeoutMs: 1000 });
  } catch {
    return null;
  }
  // containerd gives a `delete` 5 s (io.containerd.timeout.shim.cleanup), Node's
  // start-up included: every step is short, and nothing waits that need not.
  const call = (method: string, payload: Buffer, timeoutMs = 2000): Promise<Buffer> => client.call(TASK_SERVICE, method, payload, { timeoutMs });
  const ignoreNotFound = (err: unknown): null => {
    if (err instanceof RpcError && (err.code === Code.NOT_FOUND || err.code === Code.DEADLINE_EXCEEDED || err.code === Code.FAILED_PRECONDITION)) return null;
    throw err;
  };
  // containerd logs what `delete` writes to stderr as "cleanup warnings".
  const warn = (what: string, err: unknown): void => void process.stderr.write(`delete ${flags.id}: ${what}: ${(err as Error).message}\n`);
  let result: DeleteResult | null = null;
  try {
    const killed = await call('Kill', encodeKillRequest(flags.id, SIGKILL, true)).then(() => true, ignoreNotFound);
    if (killed) await call('Wait', encodeIdRequest(flags.id)).catch(ignoreNotFound);
    const res = await call('Delete', encodeIdRequest(flags.id)).catch(ignoreNotFound);
    result = res ? decodeDeleteResponse(res) : { pid: 0, exitStatus: 0, exitedAt: null };
  } catch (err) {
    warn(`through ${address}`, err);
  }
  // Whatever happened above, the runc shim is asked to exit: it does once no task
  // is left, so the pod's last `delete` ends it.
  if (shutdown) {
    const gone = new Promise<void>((resolve) => client.once('close', () => resolve()));
    await call('Shutdown', encodeShutdownRequest(flags.id), 1000).catch((err) => {
      if (!(err instanceof RpcError && err.code === Code.UNAVAILABLE)) warn('shut down the runc shim', err);
    });
    await Promise.race([gone.then(() => (runcShimExiting = true)), new Promise((r) => setTimeout(r, 1000).unref())]);
  }
  client.close();
  return result;
}

function runcDelete(binary: string, flags: ShimFlags, bundle: string): DeleteResult {
  const args = [...formatFlags({ namespace: flags.namespace, address: flags.address, publishBinary: flags.publishBinary, id: flags.id, bundle }), 'delete'];
  const r = spawnSync(binary, args, { cwd: bundle, stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
  if (r.status === 0 && r.stdout.length > 0) {
    try {
      return decodeDeleteResponse(r.stdout);
    } catch {
      // fall through: report a kill
    }
  }
  return { pid: 0, exitStatus: 128 + SIGKILL, exitedAt: null };
}
