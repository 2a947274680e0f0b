// The host's side of an offloaded container's bind mounts: which are copied to
// the DPU (files, and read-only directories: the kubelet's ConfigMap, Secret,
// projected and downward-API volumes), read for Create and for each update
// (mount-watch.ts), a cheap fingerprint of each to see that it changed, and the
// termination message written back into the host file the kubelet reads.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { MountedFile } from '../agentapi/proto';
import { isBindMount, isSandboxShm, isTerminationLog, OciMount, terminationMessageTail } from '../oci/mounts';

// Directories sent inline with Create (and UpdateFiles); a larger read-only volume is refused.
const MAX_DIRECTORY_BYTES = 16 << 20;

/** The mounts of a spec whose content goes to the DPU: bind mounts but the sandbox's /dev/shm. */
export function shippedMounts(mounts: OciMount[]): OciMount[] {
  return mounts.filter((m) => isBindMount(m) && Boolean(m.source) && !isSandboxShm(m));
}

/** One shipped mount as it is now: a file's bytes, or a directory as a tar stream. */
export function readMountedFile(m: OciMount): MountedFile {
  const source = m.source as string;
  const st = fs.statSync(source);
  const termination_log = isTerminationLog(m) && !st.isDirectory();
  if (st.isDirectory()) {
    // Symlinks stay symlinks (no -h): a kubelet volume's keys point through `..data`.
    const content = execFileSync('tar', ['-c', '-C', source, '.'], { maxBuffer: MAX_DIRECTORY_BYTES });
    return { destination: m.destination, content, directory: true, mode: st.mode & 0o7777, termination_log };
  }
  return { destination: m.destination, content: fs.readFileSync(source), directory: false, mode: st.mode & 0o7777, termination_log };
}

/** The bind-mounted files and read-only directories of a spec, read for shipping. */
export function mountedFiles(mounts: OciMount[]): MountedFile[] {
  return shippedMounts(mounts).map(readMountedFile);
}

/** The host file the kubelet reads the container's termination message from ('' if none is mounted). */
export function terminationLogSource(mounts: OciMount[]): string {
  return shippedMounts(mounts).find(isTerminationLog)?.source ?? '';
}

/**
 * What a source is now, cheaply: for a file its stat; for a directory the stat
 * of every entry under it, symlinks by their target (never followed), so that a
 * kubelet's `..data` swap, a new file or a rewrite changes it. Null when the
 * source is gone (its pod is being removed).
 */
export function sourceFingerprint(source: string): string | null {
  const hash = createHash('sha256');
  const describe = (p: string, st: fs.BigIntStats): string => {
    const link = st.isSymbolicLink() ? fs.readlinkSync(p) : '';
    return `${st.ino}:${st.mode}:${st.size}:${st.mtimeNs}:${st.ctimeNs}:${link}`;
  };
  const walk = (dir: string, rel: string): void => {
    for (const name of fs.readdirSync(dir).sort()) {
      const p = path.join(dir, name);
      const st = fs.lstatSync(p, { bigint: true });
      hash.update(`${rel}${name}\0${describe(p, st)}\n`);
      if (st.isDirectory()) walk(p, `${rel}${name}/`);
    }
  };
  try {
    const st = fs.statSync(source, { bigint: true });
    hash.update(`.\0${describe(source, st)}\n`);
    if (st.isDirectory()) walk(source, '');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  return hash.digest('hex');
}

/**
 * Writes a container's termination message (its end, as the kubelet would read
 * it) into the host file the kubelet reads, in place: the kubelet made the file
 * and set its mode. A file that is gone is not made again (false).
 */
export function writeTerminationMessage(file: string, message: Buffer): boolean {
  const content = terminationMessageTail(message);
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_NOFOLLOW);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
  try {
    let written = 0;
    while (written < content.length) written += fs.writeSync(fd, content, written, content.length - written, written);
    fs.ftruncateSync(fd, content.length);
  } finally {
    fs.closeSync(fd);
  }
  return true;
}
