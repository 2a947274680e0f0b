// Host side of shipping a container's root file system to the DPU. containerd
// hands the shim the rootfs as an overlay mount of committed snapshot
// directories; the DPU cannot see them, so each directory travels as a tar stream
// (the format is in src/agent/layer-format.ts) and is cached there by the digest
// of that stream. Committed snapshots never change, so:
//   - the tar of a directory is made deterministic (same content → same bytes →
//     same digest), which lets two hosts, or two pods, agree on a layer's name;
//   - its digest is computed once and remembered in an index keyed by the
//     directory's path and identity, so a later pod costs one stat per layer;
//   - a layer the agent already has is never sent again.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import { OPAQUE_PAX_KEY, OPAQUE_XATTR, ROOT_ENTRY_NAME } from '../layers/format';
import { getXattr } from '../common/linux-fs';
import type { DpuAgentClient } from '../agentapi/client';
import type { LayerChunk, PutLayerResponse } from '../agentapi/proto';

// ---------------------------------------------------------------------------
// Rootfs mounts → layer directories

/** The fields of a containerd Mount (containerd/types/mount.proto) that matter here. */
export interface RootfsMount {
  type: string;
  source: string;
  options?: readonly string[];
}

/**
 * Overlay options that do not change how a layer lies on disk. Anything else
 * (userxattr: markers under user.*; metacopy/redirect_dir=on: files whose data or
 * name live in another layer; lowerdir+/datadir+: the new per-layer syntax) is
 * refused, because shipping each directory on its own would then be wrong.
 */
const NEUTRAL_OVERLAY_OPTIONS = new Set(['index', 'workdir', 'upperdir', 'volatile', 'ro', 'rw', 'xino', 'nfs_export', 'uuid']);
const OFF_ONLY_OVERLAY_OPTIONS = new Set(['redirect_dir', 'metacopy']);

function describeMount(m: RootfsMount): string {
  return `${m.type} mount of ${JSON.stringify(m.source)} (options ${JSON.stringify(m.options ?? [])})`;
}

/** Splits an overlay lowerdir value at ':' that overlayfs treats as separators (a '\' escapes the next character). */
function splitLowerdir(value: string): string[] {
  const dirs: string[] = [];
  let current = '';
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (c === '\\' && i + 1 < value.length) current += value[++i];
    else if (c === ':') {
      dirs.push(current);
      current = '';
    } else current += c;
  }
  dirs.push(current);
  return dirs;
}

/**
 * The read-only layer directories of a container's rootfs, top layer first, as
 * containerd's Create carries it: one overlay mount (lowerdir=top:…:bottom, with
 * or without an upperdir, which is the container's own writable layer and not
 * shipped), or, for a one-layer read-only view, one bind mount with "ro". Throws
 * an error naming the mount for anything else.
 */
export function overlayLowerdirs(mounts: readonly RootfsMount[]): string[] {
  if (mounts.length === 0) throw new Error('rootfs has no mounts: nothing to ship (is the container using a snapshotter?)');
  if (mounts.length > 1) {
    throw new Error(`rootfs has ${mounts.length} mounts (${mounts.map(describeMount).join('; ')}); only a single overlay or read-only bind mount can be shipped`);
  }
  const m = mounts[0];
  const options = m.options ?? [];
  if (m.type === 'bind' || m.type === 'rbind') {
    if (!options.includes('ro')) throw new Error(`rootfs ${describeMount(m)} is writable: only a read-only bind of a committed snapshot can be shipped as a layer`);
    if (!path.isAbsolute(m.source)) throw new Error(`rootfs ${describeMount(m)}: source is not an absolute path`);
    return [m.source];
  }
  if (m.type !== 'overlay') throw new Error(`rootfs ${describeMount(m)}: mount type "${m.type}" is not supported (overlay or read-only bind only)`);
  let lowerdirs: string[] | undefined;
  for (const option of options) {
    const eq = option.indexOf('=');
    const key = eq < 0 ? option : option.slice(0, eq);
    const value = eq < 0 ? '' : option.slice(eq + 1);
    if (key === 'lowerdir') {
      if (lowerdirs) throw new Error(`rootfs ${describeMount(m)}: lowerdir given twice`);
      lowerdirs = splitLowerdir(value);
    } else if (OFF_ONLY_OVERLAY_OPTIONS.has(key)) {
      if (value !== 'off') throw new Error(`rootfs ${describeMount(m)}: option "${option}" makes layers depend on each other and cannot be shipped`);
    } else if (!NEUTRAL_OVERLAY_OPTIONS.has(key)) {
      throw new Error(`rootfs ${describeMount(m)}: overlay option "${option}" is not supported for shipping`);
    }
  }
  if (!lowerdirs) throw new Error(`rootfs ${describeMount(m)}: no lowerdir option`);
  for (const dir of lowerdirs) {
    if (!path.isAbsolute(dir)) throw new Error(`rootfs ${describeMount(m)}: lowerdir "${dir}" is not an absolute path`);
  }
  return lowerdirs;
}

// ---------------------------------------------------------------------------
// Directory → deterministic tar stream

type EntryHeader = Parameters<tar.Pack['entry']>[0];

/** ustar's numeric fields hold 6 octal digits (tar-stream writes no pax uid/gid), so larger ids would be silently clipped. */
const MAX_USTAR_ID = 0o777777;
/** Bytes buffered ahead of the consumer before the walk pauses. */
const OUTPUT_HIGH_WATER = 1024 * 1024;
const FILE_READ_CHUNK = 1024 * 1024;
/** Files up to this size are read whole, synchronously (see walk); larger ones are streamed. */
const SMALL_FILE = 256n * 1024n;

function deviceNumbers(rdev: bigint): { devmajor: number; devminor: number } {
  // The inverse of glibc's gnu_dev_makedev (see makeDev in src/agent/linux-fs.ts).
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
  return { devmajor: Number(major), devminor: Number(minor) };
}

/** Waits until `out` wants more data; false when it was closed instead. */
function drained(out: PassThrough): Promise<boolean> {
  if (!out.writableNeedDrain) return Promise.resolve(!out.destroyed);
  return new Promise((resolve) => {
    const done = (ok: boolean) => {
      out.off('drain', onDrain);
      out.off('close', onClose);
      resolve(ok);
    };
    const onDrain = () => done(true);
    const onClose = () => done(false);
    out.on('drain', onDrain);
    out.on('close', onClose);
  });
}

class LayerPacker {
  /** First name of each multiply-linked regular file, by "dev:ino": later names become hard links to it. */
  private readonly firstNames = new Map<string, string>();
  /**
   * Rejects when the pack closes. A pack destroyed by the reader never calls back
   * an entry already handed to it, so each entry races this, or the walk would hang.
   */
  private readonly closed: Promise<never>;

  constructor(
    private readonly root: string,
    private readonly pack: tar.Pack,
    private readonly out: PassThrough,
  ) {
    this.closed = new Promise<never>((_, reject) => pack.once('close', () => reject(new Error('the layer stream was closed by its reader'))));
    this.closed.catch(() => undefined);
  }

  async run(): Promise<void> {
    const st = await fs.promises.lstat(this.root, { bigint: true });
    if (!st.isDirectory()) throw new Error(`${this.root} is not a directory`);
    await this.add(this.root, ROOT_ENTRY_NAME, st);
    await this.walk(this.root, '');
  }

  /**
   * Depth first, each directory's names in byte order, a directory before its
   * contents. Metadata and small files are read synchronously: each
   * asynchronous call costs a libuv thread-pool round trip (tens of microseconds) that
   * the strictly sequential tar cannot overlap, which made a layer of small files
   * (/usr/share/doc: 5,400 entries, 114 MiB) take 1.9 s instead of 0.6 s. A
   * synchronous lstat or read of a committed snapshot's file takes microseconds,
   * and the event loop still turns between entries (each awaits the pack); large
   * files are streamed asynchronously.
   */
  private async walk(dirAbs: string, prefix: string): Promise<void> {
    const raw = fs.readdirSync(dirAbs, { encoding: 'buffer' });
    raw.sort(Buffer.compare);
    for (const rawName of raw) {
      const name = rawName.toString('utf8');
      // The tar carries names as UTF-8; a name that does not survive the round trip
      // would arrive on the DPU as a different file.
      if (!Buffer.from(name, 'utf8').equals(rawName)) {
        throw new Error(`${path.join(dirAbs, name)}: file name is not valid UTF-8 and cannot be shipped`);
      }
      const abs = path.join(dirAbs, name);
      const rel = prefix ? `${prefix}/${name}` : name;
      const st = fs.lstatSync(abs, { bigint: true });
      if (st.isSocket()) continue; // as GNU tar: a socket means nothing without the process that bound it
      await this.add(abs, rel, st);
      if (st.isDirectory()) await this.walk(abs, rel);
    }
  }

  private header(abs: string, name: string, st: fs.BigIntStats): EntryHeader {
    const uid = Number(st.uid);
    const gid = Number(st.gid);
    if (uid > MAX_USTAR_ID || gid > MAX_USTAR_ID) throw new Error(`${abs}: owner ${uid}:${gid} does not fit a tar header (max ${MAX_USTAR_ID})`);
    return {
      name,
      // The whole st_mode, type bits included: tar-stream writes only the low 12 bits
      // but replaces a mode of 0 (a whiteout's, often) with its default 0644.
      mode: Number(st.mode),
      uid,
      gid,
      // Whole seconds: what ustar holds, and what makes a copy's tar equal the original's.
      mtime: new Date(Number(st.mtimeNs / 1_000_000_000n) * 1000),
      // No uname/gname: names would depend on this machine's /etc/passwd.
    };
  }

  private async add(abs: string, name: string, st: fs.BigIntStats): Promise<void> {
    if (!(await drained(this.out))) throw new Error('the layer stream was closed by its reader');
    const h = this.header(abs, name, st);
    if (st.isDirectory()) {
      const opaque = getXattr(abs, OPAQUE_XATTR);
      if (opaque && opaque.toString() === 'y') h.pax = { [OPAQUE_PAX_KEY]: 'y' };
      return this.entry({ ...h, type: 'directory' });
    }
    if (st.isSymbolicLink()) {
      return this.entry({ ...h, type: 'symlink', linkname: fs.readlinkSync(abs) });
    }
    if (st.isCharacterDevice() || st.isBlockDevice()) {
      // An overlay whiteout is the character device 0:0.
      const type = st.isCharacterDevice() ? 'character-device' : 'block-device';
      const dev = deviceNumbers(st.rdev);
      if (dev.devmajor > MAX_USTAR_ID || dev.devminor > MAX_USTAR_ID) throw new Error(`${abs}: device ${dev.devmajor}:${dev.devminor} does not fit a tar header`);
      return this.entry({ ...h, type, ...dev });
    }
    if (st.isFIFO()) return this.entry({ ...h, type: 'fifo' });
    if (!st.isFile()) throw new Error(`${abs}: unsupported file type (mode ${st.mode.toString(8)})`);
    if (st.nlink > 1n) {
      const key = `${st.dev}:${st.ino}`;
      const first = this.firstNames.get(key);
      if (first !== undefined) return this.entry({ ...h, type: 'link', linkname: first });
      this.firstNames.set(key, name);
    }
    const size = Number(st.size);
    if (st.size > SMALL_FILE) return this.file(abs, { ...h, type: 'file', size });
    let data: Buffer;
    try {
      data = fs.readFileSync(abs);
    } catch (err) {
      throw new Error(`read ${abs}: ${(err as Error).message}`);
    }
    // tar-stream takes a buffer's length as the size: check it against the lstat,
    // as it checks a stream, so a file that changes under us fails the layer.
    if (data.length !== size) throw new Error(`${abs} changed while it was packed (size ${size}, then ${data.length})`);
    return this.entry({ ...h, type: 'file', size }, data);
  }

  private entry(h: EntryHeader, data?: Buffer): Promise<void> {
    const written = new Promise<void>((resolve, reject) => {
      const done = (err?: Error | null) => (err ? reject(err) : resolve());
      if (data) this.pack.entry(h, data, done);
      else this.pack.entry(h, done);
    });
    return Promise.race([written, this.closed]);
  }

  private file(abs: string, h: EntryHeader): Promise<void> {
    const written = new Promise<void>((resolve, reject) => {
      // tar-stream checks that exactly `size` bytes arrive, so a file that changes
      // size under us fails the stream instead of producing a corrupt layer.
      const sink = this.pack.entry(h, (err) => (err ? reject(err) : resolve()));
      const source = fs.createReadStream(abs, { highWaterMark: FILE_READ_CHUNK });
      source.on('error', (err) => {
        sink.destroy(err);
        reject(new Error(`read ${abs}: ${err.message}`));
      });
      // A sink torn down by the reader does not end the source: close the file here.
      // Its error (a premature close) is this entry's failure, not an unhandled one.
      sink.on('close', () => source.destroy());
      sink.on('error', reject);
      source.pipe(sink);
    });
    return Promise.race([written, this.closed]);
  }
}

/**
 * A deterministic tar stream of the snapshot directory `dir`: entries in a fixed
 * order with their modes, owners, whole-second mtimes, symlinks, hard links
 * (between names of this directory), device nodes (whiteouts included), FIFOs and
 * opaque markers, and nothing that depends on when, where or by whom it is made.
 * Reading keeps pace with the consumer (at most a few MiB ahead); destroying the stream
 * stops the walk. Any failure destroys the stream with an error naming `dir`.
 */
export function layerTar(dir: string): Readable {
  const root = path.resolve(dir);
  const pack = tar.pack();
  const out = new PassThrough({ highWaterMark: OUTPUT_HIGH_WATER });
  const piped = pipeline(pack, out);
  piped.catch(() => undefined); // errors reach the reader through `out`
  new LayerPacker(root, pack, out).run().then(
    () => pack.finalize(),
    (err: Error) => {
      const wrapped = new Error(`pack layer ${root}: ${err.message}`);
      pack.destroy(wrapped);
      out.destroy(wrapped);
    },
  );
  return out;
}

// ---------------------------------------------------------------------------
// Digests, remembered

export interface LayerDigest {
  /** The absolute directory the tar was made of. */
  dir: string;
  /** "sha256:<hex>" of layerTar(dir). */
  digest: string;
  /** Length of layerTar(dir) in bytes. */
  size: number;
  /** True when the index answered and the directory's contents were not read. */
  fromIndex: boolean;
}

/** One index record: valid while the directory at `dir` has this identity. */
interface IndexRecord {
  version: 1;
  dir: string;
  dev: string;
  ino: string;
  ctimeNs: string;
  digest: string;
  size: number;
}

function indexFile(indexDir: string, dir: string): string {
  return path.join(indexDir, `${createHash('sha256').update(dir).digest('hex').slice(0, 40)}.json`);
}

function readIndex(file: string): IndexRecord | undefined {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as IndexRecord;
  } catch {
    // Missing, or torn by a crash before rename made that impossible: either way, recompute.
    return undefined;
  }
}

async function writeIndex(file: string, record: IndexRecord): Promise<void> {
  await fs.promises.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  try {
    await fs.promises.writeFile(tmp, JSON.stringify(record));
    await fs.promises.rename(tmp, file); // readers see the old record or the whole new one
  } catch (err) {
    await fs.promises.rm(tmp, { force: true });
    throw err;
  }
}

/** Hashes a stream to its end. */
export async function digestOf(stream: Readable): Promise<{ digest: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of stream) {
    hash.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { digest: `sha256:${hash.digest('hex')}`, size };
}

/** Digests being computed in this process, by index file: two pods starting together read a layer once. */
const computing = new Map<string, Promise<LayerDigest>>();

/**
 * The digest and size of layerTar(dir). The first call reads the whole directory
 * and records the answer under `indexDir`, keyed by the absolute path and the
 * directory's identity (st_dev, st_ino, st_ctime); later calls, in any process,
 * stat the directory and read one small record. The identity catches a snapshot
 * directory removed and re-made under the same path; it does not see changes
 * deep inside, which committed snapshots never have.
 *
 * The stat and the record are read synchronously: they are on every offloaded
 * container's start, and two trips through libuv's thread pool cost more there,
 * on a busy node, than the two short system calls themselves.
 */
export async function layerDigest(dir: string, indexDir: string): Promise<LayerDigest> {
  const abs = path.resolve(dir);
  const file = indexFile(indexDir, abs);
  const st = fs.statSync(abs, { bigint: true });
  if (!st.isDirectory()) throw new Error(`layer ${abs} is not a directory`);
  const identity = { dev: st.dev.toString(), ino: st.ino.toString(), ctimeNs: st.ctimeNs.toString() };
  const known = readIndex(file);
  if (known && known.version === 1 && known.dir === abs && known.dev === identity.dev && known.ino === identity.ino && known.ctimeNs === identity.ctimeNs) {
    return { dir: abs, digest: known.digest, size: known.size, fromIndex: true };
  }
  const running = computing.get(file);
  if (running) return running;
  const job = (async (): Promise<LayerDigest> => {
    const { digest, size } = await digestOf(layerTar(abs));
    await writeIndex(file, { version: 1, dir: abs, ...identity, digest, size });
    return { dir: abs, digest, size, fromIndex: false };
  })();
  computing.set(file, job);
  try {
    return await job;
  } finally {
    computing.delete(file);
  }
}

/** Drops the remembered digest of `dir`, so the next layerDigest reads it again. */
export async function forgetLayerDigest(dir: string, indexDir: string): Promise<void> {
  await fs.promises.rm(indexFile(indexDir, path.resolve(dir)), { force: true });
}

// ---------------------------------------------------------------------------
// Shipping

/** What the DPU agent offers for layers (MissingLayers and PutLayer), or a stand-in for it. */
export interface LayerStore {
  /** The subset of `digests` the store does not have. */
  missing(digests: string[]): Promise<string[]>;
  /**
   * Stores the layer whose tar stream is `data` (exactly `size` bytes, hashing to
   * `digest`). The store verifies both; it may stop reading when it already has
   * the layer. The caller destroys `data` once this settles.
   */
  put(digest: string, size: number, data: Readable): Promise<{ bytesReceived: number; alreadyPresent: boolean }>;
}

/**
 * The DPU agent's layer cache as a LayerStore: MissingLayers, and PutLayer with
 * the first message naming the layer and the tar stream in the rest, sent as
 * fast as the connection takes it. The one store of the shim and of
 * `heteropod layers ship`.
 */
export function agentLayerStore(client: DpuAgentClient): LayerStore {
  return {
    async missing(digests: string[]): Promise<string[]> {
      return (await client.call<{ digests: string[] }>('MissingLayers', { digests })).digests;
    },
    put(digest: string, size: number, data: Readable): Promise<{ bytesReceived: number; alreadyPresent: boolean }> {
      return new Promise((resolve, reject) => {
        const upload = client.clientStream<LayerChunk, PutLayerResponse>('PutLayer', (err, res) => {
          if (err || !res) return reject(err ?? new Error('PutLayer: no answer'));
          resolve({ bytesReceived: Number(res.bytes_received), alreadyPresent: res.already_present });
        });
        upload.write({ digest, size, data: Buffer.alloc(0) });
        data.on('data', (chunk: Buffer) => {
          if (!upload.write({ digest: '', size: 0, data: chunk })) {
            data.pause();
            upload.once('drain', () => data.resume());
          }
        });
        data.on('end', () => upload.end());
        data.on('error', (err) => {
          upload.cancel();
          reject(err);
        });
      });
    },
  };
}

export interface ShipResult {
  /** The digest of every directory, in the order given (top layer first). */
  digests: string[];
  /** Layer bytes the store reports having received from this call's uploads. */
  bytesSent: number;
  /** Uploads this call made (0 when the store had every layer). */
  layersSent: number;
}

/** Uploads in flight in this process, per store and digest: a second pod of the same image joins the first's upload. */
const uploading = new WeakMap<LayerStore, Map<string, Promise<unknown>>>();

async function upload(store: LayerStore, layer: LayerDigest, indexDir: string): Promise<{ bytesReceived: number; alreadyPresent: boolean }> {
  const data = layerTar(layer.dir);
  try {
    return await store.put(layer.digest, layer.size, data);
  } catch (err) {
    // The stream did not match the remembered digest (or the upload failed some
    // other way): forget it, so a retry hashes the directory afresh.
    await forgetLayerDigest(layer.dir, indexDir).catch(() => undefined);
    throw new Error(`upload layer ${layer.digest} (${layer.dir}): ${(err as Error).message}`);
  } finally {
    data.destroy();
  }
}

/**
 * Makes sure `store` has every layer directory in `dirs`: digests them (from the
 * index when it can), asks which are missing, and uploads only those, one at a
 * time. Two directories with the same content are sent once. Safe to run
 * concurrently, in one process (uploads of one digest are joined) and across
 * processes (the store settles the race, see LayerCache.put).
 */
export async function shipLayers(dirs: readonly string[], store: LayerStore, indexDir: string): Promise<ShipResult> {
  const layers: LayerDigest[] = [];
  for (const dir of dirs) layers.push(await layerDigest(dir, indexDir));
  const digests = layers.map((l) => l.digest);
  const unique = [...new Set(digests)];
  const missing = new Set(await store.missing(unique));
  let inflight = uploading.get(store);
  if (!inflight) uploading.set(store, (inflight = new Map()));
  let bytesSent = 0;
  let layersSent = 0;
  for (const digest of unique) {
    if (!missing.has(digest)) continue;
    const joined = inflight.get(digest);
    if (joined) {
      await joined;
      continue;
    }
    const layer = layers.find((l) => l.digest === digest)!;
    const job = upload(store, layer, indexDir);
    inflight.set(digest, job);
    try {
      const result = await job;
      bytesSent += result.bytesReceived;
      layersSent++;
    } finally {
      inflight.delete(digest);
    }
  }
  return { digests, bytesSent, layersSent };
}
