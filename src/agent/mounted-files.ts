// The DPU's copies of a container's bind-mounted files and read-only directories
// (files/<n> in its bundle; runc bind-mounts each where the host's spec mounts the
// original): written at Create, replaced when the host's sources change
// (UpdateFiles), and the termination-message file read back at the exit.
//
// What the container sees through its bind mount decides how a copy is replaced:
//   a directory - the mount shows the directory's entries as they are now. An
//                 update is unpacked beside it (files/, which the container does
//                 not see) and moved in entry by entry, each by one rename(2):
//                 entries that are new first (a kubelet volume's new `..<time>`
//                 data directory), then changed ones (its `..data` symlink, which
//                 turns every key to the new data in one step), then new symlinks
//                 (keys added, pointing through `..data`), and removals last (the
//                 old data directory). That is the order of the kubelet's own
//                 atomic writer, so a reader never sees a key that points nowhere.
//                 Entries that did not change are left alone (same inode).
//   a file      - the mount holds the file's inode: a file renamed over it is
//                 one the container never sees. It is rewritten in place
//                 (content, then its length), which a reader at that very moment
//                 may see half done; files mounted singly are small (/etc/hosts,
//                 a subPath key) and rarely change.
// The termination-message file is the container's own: writable (mode 0666, as
// the kubelet makes it, whatever the umask), private to this container, never
// replaced from the host.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { MountedFile } from '../agentapi/proto';
import { MAX_TERMINATION_MESSAGE_BYTES } from '../oci/mounts';

// The kubelet makes the termination-message file world-writable (a container may run as any user).
const TERMINATION_LOG_MODE = 0o666;

function modeOf(f: MountedFile, fallback: number): number {
  if (f.termination_log) return TERMINATION_LOG_MODE;
  return f.mode & 0o7777 || fallback;
}

function untar(dir: string, content: Buffer): void {
  execFileSync('tar', ['-x', '--no-same-owner', '-C', dir, '-f', '-'], { input: content, stdio: ['pipe', 'pipe', 'pipe'] });
}

/** Writes the copy of a mount at `target` (which does not exist yet). */
export function writeCopy(target: string, f: MountedFile): void {
  if (f.directory) {
    fs.mkdirSync(target);
    untar(target, f.content);
    fs.chmodSync(target, modeOf(f, 0o755));
  } else {
    fs.writeFileSync(target, f.content);
    fs.chmodSync(target, modeOf(f, 0o644)); // exactly, whatever the umask
  }
}

let staged = 0;

/**
 * Replaces the copy at `target` with `f`'s content, so that a bind mount of
 * `target` made before shows it (see the top of this file). A file given for a
 * directory or the other way round is refused, and nothing is changed.
 */
export function updateCopy(target: string, f: MountedFile): void {
  const st = fs.lstatSync(target);
  if (st.isDirectory() !== f.directory) throw new Error(`${f.destination} is a ${st.isDirectory() ? 'directory' : 'file'} in the container, not a ${f.directory ? 'directory' : 'file'}`);
  if (!f.directory) return rewriteInPlace(target, f.content, modeOf(f, st.mode & 0o7777));
  // Beside the copy, so that every rename stays within one filesystem.
  const stamp = `${process.pid}-${++staged}`;
  const next = `${target}.next-${stamp}`;
  const old = `${target}.old-${stamp}`;
  try {
    fs.mkdirSync(next);
    fs.mkdirSync(old);
    untar(next, f.content);
    const trash = new Trash(old);
    mergeInto(next, target, trash);
    const mode = modeOf(f, 0o755);
    if ((st.mode & 0o7777) !== mode) fs.chmodSync(target, mode);
  } finally {
    fs.rmSync(next, { recursive: true, force: true });
    fs.rmSync(old, { recursive: true, force: true });
  }
}

// Where replaced and removed entries go (a rename, so they vanish at once), to be
// deleted with the directory when the update is over.
class Trash {
  private n = 0;
  constructor(private readonly dir: string) {}
  take(p: string): void {
    fs.renameSync(p, path.join(this.dir, String(++this.n)));
  }
}

type Kind = 'dir' | 'file' | 'link' | 'other';

function kindOf(st: fs.Stats): Kind {
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'link';
  if (st.isFile()) return 'file';
  return 'other';
}

function lstatOrNull(p: string): fs.Stats | null {
  try {
    return fs.lstatSync(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

// Whether two non-directory entries are the same to a reader: link target, or mode and bytes.
function sameEntry(a: string, aSt: fs.Stats, b: string, bSt: fs.Stats): boolean {
  const kind = kindOf(aSt);
  if (kind !== kindOf(bSt)) return false;
  if (kind === 'link') return fs.readlinkSync(a) === fs.readlinkSync(b);
  if (kind !== 'file') return false;
  if ((aSt.mode & 0o7777) !== (bSt.mode & 0o7777) || aSt.size !== bSt.size) return false;
  return fs.readFileSync(a).equals(fs.readFileSync(b));
}

/**
 * Moves the entries of `from` (the new content) into `into`, in the order the
 * top of this file gives; `into` ends up holding exactly what `from` held.
 */
function mergeInto(from: string, into: string, trash: Trash): void {
  const next = fs.readdirSync(from).sort();
  const have = new Set(fs.readdirSync(into));
  const newLinks: string[] = [];
  // 1. New entries (data directories, files), each appearing whole.
  for (const name of next) {
    if (have.has(name)) continue;
    if (fs.lstatSync(path.join(from, name)).isSymbolicLink()) newLinks.push(name);
    else fs.renameSync(path.join(from, name), path.join(into, name));
  }
  // 2. Changed entries, each replaced by one rename; directories on both sides merged.
  for (const name of next) {
    if (!have.has(name)) continue;
    const src = path.join(from, name);
    const dst = path.join(into, name);
    const srcSt = fs.lstatSync(src);
    const dstSt = lstatOrNull(dst);
    if (srcSt.isDirectory() && dstSt?.isDirectory()) {
      mergeInto(src, dst, trash);
      if ((srcSt.mode & 0o7777) !== (dstSt.mode & 0o7777)) fs.chmodSync(dst, srcSt.mode & 0o7777);
      continue;
    }
    if (dstSt && sameEntry(src, srcSt, dst, dstSt)) continue;
    // rename(2) replaces a file or symlink at once, but not a directory by a
    // non-directory or the reverse: the old one goes first, a moment's gap.
    if (dstSt && (srcSt.isDirectory() || dstSt.isDirectory())) trash.take(dst);
    fs.renameSync(src, dst);
  }
  // 3. New symlinks: what they point through (`..data`) is in place now.
  for (const name of newLinks) fs.renameSync(path.join(from, name), path.join(into, name));
  // 4. Entries the new content no longer has.
  const keep = new Set(next);
  for (const name of have) if (!keep.has(name)) trash.take(path.join(into, name));
}

// Same inode, new content: what a bind mount of the file shows.
function rewriteInPlace(target: string, content: Buffer, mode: number): void {
  const fd = fs.openSync(target, fs.constants.O_RDWR | fs.constants.O_NOFOLLOW);
  try {
    const st = fs.fstatSync(fd);
    if (st.size === content.length && (st.mode & 0o7777) === mode) {
      const now = Buffer.alloc(content.length);
      if (fs.readSync(fd, now, 0, now.length, 0) === now.length && now.equals(content)) return;
    }
    let written = 0;
    while (written < content.length) written += fs.writeSync(fd, content, written, content.length - written, written);
    fs.ftruncateSync(fd, content.length);
    if ((st.mode & 0o7777) !== mode) fs.fchmodSync(fd, mode);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The end of a termination-message file as the kubelet reads it (the last
 * MAX_TERMINATION_MESSAGE_BYTES bytes); empty when there is no such file.
 */
export function readTerminationMessage(file: string): Buffer {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return Buffer.alloc(0);
    throw err;
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) return Buffer.alloc(0);
    const length = Math.min(st.size, MAX_TERMINATION_MESSAGE_BYTES);
    const out = Buffer.alloc(length);
    let read = 0;
    while (read < length) {
      const n = fs.readSync(fd, out, read, length - read, st.size - length + read);
      if (n === 0) break;
      read += n;
    }
    return out.subarray(0, read);
  } finally {
    fs.closeSync(fd);
  }
}
