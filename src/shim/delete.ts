// `delete`: containerd's clean-up for a task whose shim is gone or failed to
// start (or after a restart when Connect fails). Kills and deletes the task
// through whatever still runs for the pod — our daemon, else runc's shim behind
// it, else runc's own `delete` — and prints a binary DeleteResponse. Once the pod
// has no task left, its shim state goes too.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { TtrpcClient, RpcError, Code } from '../ttrpc';
import { decode, encode, timestampOf, Timestamp } from '../proto';
import { loadConfig } from './config';
import { ShimFlags, formatFlags } from './flags';
import { groupOf, groupPaths, GroupPaths, removeIfEmpty } from './paths';
import { readSpec } from './bundle';
import { TASK_SERVICE } from './runtime';
import { readStartRecord } from './record';

const T = 'containerd.task.v2.';
const SIGKILL = 9;

interface DeleteResult {
  pid: number;
  exit_status: number;
  exited_at: Timestamp | null;
}

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
  const result =
    (await deleteThrough(`unix://${paths.socket}`, flags, false)) ??
    (await deleteThrough(readAddress(paths), flags, true)) ??
    runcDelete(config.runcShim, flags, bundle);
  // Our daemon's socket is stale once nothing answers on it; the pod's state goes
  // with the last task, when runc's shim has exited too.
  if (!(await answers(`unix://${paths.socket}`))) {
    fs.rmSync(paths.socket, { force: true });
    if (await answers(readAddress(paths))) return encodeResult(result);
    fs.rmSync(paths.dir, { recursive: true, force: true });
    removeIfEmpty(path.dirname(paths.dir));
  }
  return encodeResult(result);
}

function encodeResult(result: DeleteResult): Buffer {
  return encodeDeleteResponse(
    result.pid,
    result.exit_status || 128 + SIGKILL,
    result.exited_at && result.exited_at.seconds > 0 ? result.exited_at : timestampOf(new Date()),
  );
}

// DeleteResponse { uint32 pid = 1; uint32 exit_status = 2; Timestamp exited_at = 3; }
// encoded by hand: the usual `delete` (after a clean shutdown) then never loads
// protobufjs, and containerd waits for it.
export function encodeDeleteResponse(pid: number, exitStatus: number, exitedAt: Timestamp): Buffer {
  const varint = (n: number): number[] => {
    const out: number[] = [];
    let v = BigInt.asUintN(64, BigInt(Math.trunc(n)));
    do {
      let b = Number(v & 0x7fn);
      v >>= 7n;
      if (v > 0n) b |= 0x80;
      out.push(b);
    } while (v > 0n);
    return out;
  };
  const ts = [...(exitedAt.seconds ? [0x08, ...varint(exitedAt.seconds)] : []), ...(exitedAt.nanos ? [0x10, ...varint(exitedAt.nanos)] : [])];
  return Buffer.from([
    ...(pid ? [0x08, ...varint(pid)] : []),
    ...(exitStatus ? [0x10, ...varint(exitStatus)] : []),
    0x1a, ...varint(ts.length), ...ts,
  ]);
}

function readAddress(paths: GroupPaths): string {
  try {
    return fs.readFileSync(path.join(paths.runcWorkDir, 'address'), 'utf8').trim();
  } catch {
    return '';
  }
}

async function answers(address: string): Promise<boolean> {
  if (!address) return false;
  try {
    (await TtrpcClient.connect(address, { timeoutMs: 1000 })).close();
    return true;
  } catch {
    return false;
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
  const call = (method: string, type: string, req: object, timeoutMs = 10_000): Promise<Buffer> =>
    client.call(TASK_SERVICE, method, encode(`${T}${type}`, req), { timeoutMs });
  const ignoreNotFound = (err: unknown): null => {
    if (err instanceof RpcError && (err.code === Code.NOT_FOUND || err.code === Code.DEADLINE_EXCEEDED || err.code === Code.FAILED_PRECONDITION)) return null;
    throw err;
  };
  try {
    await call('Kill', 'KillRequest', { id: flags.id, signal: SIGKILL, all: true }).catch(ignoreNotFound);
    await call('Wait', 'WaitRequest', { id: flags.id }, 5000).catch(ignoreNotFound);
    const res = await call('Delete', 'DeleteRequest', { id: flags.id }).catch(ignoreNotFound);
    const result = res ? decode<DeleteResult>(`${T}DeleteResponse`, res) : { pid: 0, exit_status: 0, exited_at: null };
    if (shutdown) {
      const gone = new Promise<void>((resolve) => client.once('close', () => resolve()));
      await call('Shutdown', 'ShutdownRequest', { id: flags.id, now: false }, 3000).catch(() => null);
      await Promise.race([gone, new Promise((r) => setTimeout(r, 2000).unref())]);
    }
    return result;
  } catch {
    return null;
  } finally {
    client.close();
  }
}

function runcDelete(binary: string, flags: ShimFlags, bundle: string): DeleteResult {
  const args = [...formatFlags({ namespace: flags.namespace, address: flags.address, publishBinary: flags.publishBinary, id: flags.id, bundle }), 'delete'];
  const r = spawnSync(binary, args, { cwd: bundle, stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
  if (r.status === 0 && r.stdout.length > 0) {
    try {
      return decode<DeleteResult>(`${T}DeleteResponse`, r.stdout);
    } catch {
      // fall through: report a kill
    }
  }
  return { pid: 0, exit_status: 128 + SIGKILL, exited_at: null };
}
