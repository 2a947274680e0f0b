// The three file-system calls layer shipping needs and Node lacks: reading and
// setting one extended attribute of a path without following a symlink, and
// making a device node. They are bound from libc with koffi (already a
// dependency, for libxpu) rather than run as getfattr/setfattr/mknod processes:
// the attr package is not part of a Debian base system, and a layer can carry
// thousands of whiteouts, each of which would otherwise cost a fork and exec.
//
// Every function is synchronous (each call is one short system call) and throws
// an Error carrying `code` (e.g. "ENODATA") and the path, like Node's fs does.
import { constants } from 'node:os';
import * as koffi from 'koffi';

type LibcCall = (...args: unknown[]) => number;

interface Libc {
  lgetxattr: LibcCall;
  lsetxattr: LibcCall;
  mknod: LibcCall;
}

let libc: Libc | undefined;

function bind(): Libc {
  if (libc) return libc;
  const lib = koffi.load('libc.so.6');
  libc = {
    // ssize_t lgetxattr(const char *path, const char *name, void *value, size_t size)
    lgetxattr: lib.func('long lgetxattr(const char *path, const char *name, _Out_ void *value, size_t size)') as LibcCall,
    // int lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags)
    lsetxattr: lib.func('int lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags)') as LibcCall,
    // glibc ≥ 2.33 exports mknod itself (before, only the __xmknod wrapper); Debian 12 has 2.36.
    mknod: lib.func('int mknod(const char *path, uint32_t mode, uint64_t dev)') as LibcCall,
  };
  return libc;
}

const ERRNO_NAMES = new Map<number, string>(Object.entries(constants.errno).map(([name, n]) => [n, name]));

function failure(call: string, target: string, detail = ''): Error & { code: string; errno: number } {
  const errno = koffi.errno();
  const code = ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
  const err = new Error(`${call} ${target}${detail}: ${code}`) as Error & { code: string; errno: number };
  err.code = code;
  err.errno = errno;
  return err;
}

/** The largest attribute value we read; the overlay markers we care about are one byte. */
const MAX_XATTR_VALUE = 4096;

/**
 * The value of attribute `name` of `file` (the link itself for a symlink), or
 * undefined when it has none. Other failures (e.g. EOPNOTSUPP from a file system
 * without xattrs, EPERM reading trusted.* without CAP_SYS_ADMIN) throw, because
 * "could not read" must not be mistaken for "not set".
 */
export function getXattr(file: string, name: string): Buffer | undefined {
  const buf = Buffer.alloc(MAX_XATTR_VALUE);
  const n = bind().lgetxattr(file, name, buf, buf.length);
  if (n >= 0) return buf.subarray(0, n);
  const err = failure('lgetxattr', file, ` ${name}`);
  if (err.code === 'ENODATA') return undefined;
  throw err;
}

/** Sets attribute `name` of `file` (not following a symlink), creating or replacing it. */
export function setXattr(file: string, name: string, value: Buffer): void {
  if (bind().lsetxattr(file, name, value, value.length, 0) !== 0) throw failure('lsetxattr', file, ` ${name}`);
}

export type DeviceKind = 'character' | 'block' | 'fifo';

const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const S_IFIFO = 0o010000;

/** Linux's encoding of a device number (glibc's gnu_dev_makedev). */
export function makeDev(major: number, minor: number): bigint {
  const ma = BigInt(major);
  const mi = BigInt(minor);
  return ((ma & 0xfffff000n) << 32n) | ((ma & 0xfffn) << 8n) | ((mi & 0xffffff00n) << 12n) | (mi & 0xffn);
}

/**
 * Makes a device node or FIFO at `file` with permission bits `mode` (the umask
 * applies, as for mknod(2): set the final mode with chmod afterwards). An overlay
 * whiteout is `mknodDevice(path, 'character', 0, 0, 0)`.
 */
export function mknodDevice(file: string, kind: DeviceKind, mode: number, major = 0, minor = 0): void {
  const type = kind === 'character' ? S_IFCHR : kind === 'block' ? S_IFBLK : S_IFIFO;
  if (bind().mknod(file, type | (mode & 0o7777), makeDev(major, minor)) !== 0) {
    throw failure('mknod', file, ` (${kind} ${major}:${minor})`);
  }
}
