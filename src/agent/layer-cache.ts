// The DPU's layer cache: filesystem layers received from shims as tar streams
// (src/agent/layer-format.ts), unpacked once and kept by the digest of their
// stream, so that a second pod of the same image sends no layer bytes. Each
// cached layer is a directory `<dir>/<hex>` usable as an overlay lowerdir.
//
// Invariants:
//   - `<dir>/<hex>` exists only with the complete, verified content of the
//     stream that hashes to sha256:<hex>: a layer is unpacked into a temporary
//     directory beside it while its bytes are hashed, and renamed into place
//     only after the size and digest matched. A failed, corrupt or refused
//     upload leaves nothing behind.
//   - Nothing is ever written outside the temporary directory: names are
//     relative and free of "..", every entry's parent is a directory made by
//     this upload (never a symlink), and hard links point at files of this
//     upload. Symlink targets are stored as given, absolute ones included: they
//     are resolved inside the container's root, and are never followed here.
//   - `<dir>/index.json` holds per-layer metadata (tar size, when added, how
//     long the unpacking took) for the benchmark and for sizeBytes(). It is
//     written before the layer's rename, so every cached layer has a record.
//
// One agent owns a cache directory; within it, puts of the same digest are
// serialized, and a rename race with another writer is settled by the file
// system (the loser finds the layer present).
import { pidAlive } from '../common/processes';
import { Code } from '../common/status';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tar from 'tar-stream';
import { AgentError } from './errors';
import { DIGEST_PATTERN, OPAQUE_PAX_KEY, OPAQUE_XATTR, ROOT_ENTRY_NAME } from '../layers/format';
import { mknodDevice, setXattr } from '../common/linux-fs';

export interface PutLayerResult {
  /** Bytes of the stream this put read (0 when the layer was already cached). */
  bytesReceived: number;
  /** The layer was already cached, or another upload of it finished first. */
  alreadyPresent: boolean;
}

export interface CachedLayer {
  digest: string;
  /** The unpacked tree, usable as an overlay lowerdir. */
  path: string;
  /** Length of the layer's tar stream in bytes. */
  size: number;
  /** ISO time the layer entered the cache. */
  addedAt: string;
  /** Time spent receiving and unpacking it, in milliseconds. */
  receiveMs: number;
}

interface IndexRecord {
  size: number;
  addedAt: string;
  receiveMs: number;
}

interface IndexFile {
  version: 1;
  layers: Record<string, IndexRecord>;
}

/** Name of the per-layer metadata file in a cache directory ({version: 1, layers: {digest: record}}). */
export const LAYER_CACHE_INDEX = 'index.json';
const INDEX_NAME = LAYER_CACHE_INDEX;
const HEX_NAME = /^[0-9a-f]{64}$/;
/** Temporary names carry the owner's pid, so a later agent can sweep what a dead one left. */
const TEMP_NAME = /^\.(?:tmp|rm)-[0-9a-z]*-(\d+)-[0-9a-z]+$/;

function invalid(message: string): AgentError {
  return new AgentError(Code.INVALID_ARGUMENT, message);
}

function checkDigest(digest: unknown): string {
  const m = typeof digest === 'string' ? DIGEST_PATTERN.exec(digest) : null;
  if (!m) throw invalid(`invalid layer digest ${JSON.stringify(digest)}: expected sha256:<64 lower-case hex digits>`);
  return m[1];
}

function tempName(kind: 'tmp' | 'rm', hex: string): string {
  return `.${kind}-${hex.slice(0, 12)}-${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
}


/** Resolves on 'drain', or rejects with whatever ends `failed` first. */
function drainOrFail(extract: tar.Extract, failed: Promise<unknown>): Promise<unknown> {
  return Promise.race([new Promise<void>((resolve) => extract.once('drain', () => resolve())), failed]);
}

export class LayerCache {
  private ready: Promise<void> | undefined;
  /** The put in progress for each digest hex: a second put of it waits, then finds it present. */
  private readonly puts = new Map<string, Promise<unknown>>();
  /** Serializes index.json read-modify-write. */
  private indexLock: Promise<void> = Promise.resolve();

  constructor(readonly dir: string) {}

  /** The digests (validated, duplicates dropped, order kept) that are not cached. */
  async missing(digests: readonly string[]): Promise<string[]> {
    const hexes = digests.map(checkDigest);
    await this.init();
    const out: string[] = [];
    for (let i = 0; i < digests.length; i++) {
      if (!out.includes(digests[i]) && !this.present(hexes[i])) out.push(digests[i]);
    }
    return out;
  }

  /**
   * Receives the layer `digest` whose tar stream, exactly `size` bytes, arrives as
   * `chunks`: unpacks while hashing, verifies, then moves it into the cache. When
   * the layer is already cached, `chunks` is not read and the caller ends the
   * stream. Throws AgentError(INVALID_ARGUMENT) for a bad digest or size, a
   * stream that is short, long or hashes otherwise, and any refused entry;
   * nothing is left in the cache then.
   */
  async put(digest: string, size: number, chunks: AsyncIterable<Buffer | Uint8Array>): Promise<PutLayerResult> {
    const hex = checkDigest(digest);
    if (!Number.isSafeInteger(size) || size < 0) throw invalid(`layer ${digest}: invalid size ${size}`);
    await this.init();
    for (let running = this.puts.get(hex); running; running = this.puts.get(hex)) await running.catch(() => undefined);
    // From here to puts.set nothing awaits, so exactly one put of a digest runs at a time.
    if (this.present(hex)) return { bytesReceived: 0, alreadyPresent: true };
    const job = this.receive(digest, hex, size, chunks);
    this.puts.set(hex, job);
    try {
      return await job;
    } finally {
      this.puts.delete(hex);
    }
  }

  /** The unpacked tree of `digest`; throws AgentError(NOT_FOUND) when it is not cached. */
  path(digest: string): string {
    const hex = checkDigest(digest);
    if (!this.present(hex)) throw new AgentError(Code.NOT_FOUND, `layer ${digest} is not in the layer cache ${this.dir}`);
    return path.join(this.dir, hex);
  }

  /** Every cached layer, in digest order. */
  async list(): Promise<CachedLayer[]> {
    await this.init();
    const index = await this.readIndex();
    const out: CachedLayer[] = [];
    for (const name of (await fs.promises.readdir(this.dir)).sort()) {
      if (!HEX_NAME.test(name)) continue;
      const digest = `sha256:${name}`;
      const record = index.layers[digest];
      const tree = path.join(this.dir, name);
      // A record is written before its layer's rename; one can be missing only if
      // index.json was removed by hand. Such a layer still counts, size unknown (0).
      const fallback = record ?? { size: 0, addedAt: (await fs.promises.stat(tree)).ctime.toISOString(), receiveMs: 0 };
      out.push({ digest, path: tree, ...fallback });
    }
    return out;
  }

  /**
   * Removes a cached layer; false when it was not cached. The caller makes sure no
   * container's rootfs uses it. The tree is first renamed aside, so the layer
   * vanishes at once and a crash mid-way leaves only a temporary to sweep.
   */
  async remove(digest: string): Promise<boolean> {
    const hex = checkDigest(digest);
    await this.init();
    for (let running = this.puts.get(hex); running; running = this.puts.get(hex)) await running.catch(() => undefined);
    const aside = path.join(this.dir, tempName('rm', hex));
    try {
      await fs.promises.rename(path.join(this.dir, hex), aside);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`remove layer ${digest}: ${(err as Error).message}`);
      await this.updateIndex((index) => delete index.layers[digest]);
      return false;
    }
    await this.updateIndex((index) => delete index.layers[digest]);
    await fs.promises.rm(aside, { recursive: true, force: true });
    return true;
  }

  /** The sum of the cached layers' tar sizes: what they cost to receive, and close to what they take on disk. */
  async sizeBytes(): Promise<number> {
    return (await this.list()).reduce((sum, layer) => sum + layer.size, 0);
  }

  // -------------------------------------------------------------------------

  private present(hex: string): boolean {
    return fs.existsSync(path.join(this.dir, hex));
  }

  /** Makes the directory and sweeps what a dead agent left: temporaries, records of layers not present. */
  private init(): Promise<void> {
    this.ready ??= (async () => {
      // Private: layers hold set-user-ID binaries that only containers should reach.
      await fs.promises.mkdir(this.dir, { recursive: true, mode: 0o700 });
      for (const name of await fs.promises.readdir(this.dir)) {
        const m = TEMP_NAME.exec(name);
        if (m && !pidAlive(Number(m[1]))) await fs.promises.rm(path.join(this.dir, name), { recursive: true, force: true });
      }
      await this.updateIndex((index) => {
        for (const digest of Object.keys(index.layers)) {
          if (!this.present(digest.slice('sha256:'.length))) delete index.layers[digest];
        }
      });
    })().catch((err) => {
      this.ready = undefined; // let a later call try again
      throw new Error(`layer cache ${this.dir}: ${(err as Error).message}`);
    });
    return this.ready;
  }

  private async readIndex(): Promise<IndexFile> {
    try {
      const parsed = JSON.parse(await fs.promises.readFile(path.join(this.dir, INDEX_NAME), 'utf8')) as IndexFile;
      if (parsed.version === 1 && parsed.layers && typeof parsed.layers === 'object') return parsed;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' && !(err instanceof SyntaxError)) throw err;
    }
    return { version: 1, layers: {} };
  }

  private updateIndex(change: (index: IndexFile) => unknown): Promise<void> {
    const run = this.indexLock.then(async () => {
      const index = await this.readIndex();
      change(index);
      const file = path.join(this.dir, INDEX_NAME);
      const tmp = path.join(this.dir, tempName('tmp', 'index'));
      try {
        await fs.promises.writeFile(tmp, `${JSON.stringify(index, null, 1)}\n`);
        await fs.promises.rename(tmp, file);
      } catch (err) {
        await fs.promises.rm(tmp, { force: true });
        throw new Error(`write ${file}: ${(err as Error).message}`);
      }
    });
    this.indexLock = run.catch(() => undefined);
    return run;
  }

  private async receive(digest: string, hex: string, size: number, chunks: AsyncIterable<Buffer | Uint8Array>): Promise<PutLayerResult> {
    const started = Date.now();
    const tmp = path.join(this.dir, tempName('tmp', hex));
    await fs.promises.mkdir(tmp, { mode: 0o700 });
    const extract = tar.extract();
    const unpacker = new LayerUnpacker(tmp);
    const unpacked = unpacker.consume(extract);
    // A refused entry is examined below, once the stream's bytes are accounted for.
    let unpackError: unknown;
    unpacked.catch((err) => (unpackError = err));
    const hash = createHash('sha256');
    let received = 0;
    let committed = false;
    try {
      try {
        for await (const raw of chunks) {
          const chunk = Buffer.isBuffer(raw) ? raw : Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
          received += chunk.length;
          if (received > size) throw invalid(`layer ${digest}: the stream is longer than the announced ${size} bytes`);
          hash.update(chunk);
          // After a refused entry, keep hashing (not unpacking) to tell a corrupt
          // upload from a well-formed stream that carries a refused entry.
          if (unpackError === undefined && !extract.write(chunk)) await drainOrFail(extract, unpacked).catch(() => undefined);
        }
      } catch (err) {
        if (err instanceof AgentError) throw err;
        throw invalid(`layer ${digest}: the upload failed after ${received} of ${size} bytes: ${(err as Error).message}`);
      }
      const actual = `sha256:${hash.digest('hex')}`;
      const why = unpackError === undefined ? '' : ` (unpacking had failed: ${(unpackError as Error).message})`;
      if (received < size) throw invalid(`layer ${digest}: truncated: received ${received} of ${size} bytes${why}`);
      if (actual !== digest) throw invalid(`layer ${digest}: digest mismatch: the ${size} bytes received hash to ${actual}${why}`);
      (extract as unknown as { end(): void }).end(); // (streamx's declaration wants an argument its code does not)
      await unpacked;
      await unpacker.finish();
      const record: IndexRecord = { size, addedAt: new Date().toISOString(), receiveMs: Date.now() - started };
      // The record first (kept if one is there already): a layer never lacks one.
      await this.updateIndex((index) => {
        index.layers[digest] ??= record;
      });
      try {
        await fs.promises.rename(tmp, path.join(this.dir, hex));
        committed = true;
        return { bytesReceived: received, alreadyPresent: false };
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOTEMPTY' || code === 'EEXIST') return { bytesReceived: received, alreadyPresent: true };
        throw new Error(`layer ${digest}: move into the cache: ${(err as Error).message}`);
      }
    } catch (err) {
      if (err instanceof AgentError) throw err;
      const code = (err as NodeJS.ErrnoException).code;
      // A system error (no space, …) is the agent's; anything else (a refused entry,
      // a malformed tar) is the upload's.
      if (typeof code === 'string' && code.startsWith('E')) throw new Error(`layer ${digest}: ${(err as Error).message}`);
      throw invalid(`layer ${digest}: ${(err as Error).message}`);
    } finally {
      // Without an error: the unpacker's loop has ended or is ending on its own.
      (extract as unknown as { destroy(): void }).destroy();
      await unpacked.catch(() => undefined);
      if (!committed) await fs.promises.rm(tmp, { recursive: true, force: true });
    }
  }
}

/** Names, relative to the layer root, made safe or refused. "" is the root. */
function entryName(raw: string): string {
  if (raw.includes('\0')) throw new Error(`entry ${JSON.stringify(raw)}: name contains NUL`);
  if (raw === ROOT_ENTRY_NAME || raw === '.' || raw === '') return '';
  if (raw.startsWith('/')) throw new Error(`entry ${JSON.stringify(raw)}: absolute names are refused`);
  const name = raw.replace(/^\.\//, '').replace(/\/$/, '');
  for (const part of name.split('/')) {
    if (part === '..') throw new Error(`entry ${JSON.stringify(raw)}: ".." in a name is refused (path traversal)`);
    if (part === '' || part === '.') throw new Error(`entry ${JSON.stringify(raw)}: name is not in normal form`);
  }
  return name;
}

type TarEntry = tar.ExtractEvents['entry'][1];

function parentOf(name: string): string {
  const slash = name.lastIndexOf('/');
  return slash < 0 ? '' : name.slice(0, slash);
}

/** Files up to this size are written in one synchronous call; larger ones are streamed. */
const SMALL_FILE = 256 * 1024;

/**
 * Unpacks one layer's entries under `root`, restoring what layerTar records:
 * modes, owners, mtimes, symlinks, hard links, device nodes (whiteouts), FIFOs,
 * opaque markers. Directory mtimes are set by finish(), after their contents.
 *
 * File-system calls are synchronous, as in the shim's layerTar and for the same
 * reason: each asynchronous one is a thread-pool round trip, and a layer of
 * small files needs half a dozen per entry, one after the other. Each call takes
 * microseconds, and the event loop turns between entries (each awaits the
 * parser), so the agent's other calls and stdio relays are not held up.
 */
class LayerUnpacker {
  /** Directories made by this upload ("" is the root): the only possible parents. */
  private readonly dirs = new Set<string>(['']);
  /** Regular files made by this upload: the only possible hard-link targets. */
  private readonly files = new Set<string>();
  private readonly seen = new Set<string>();
  /** Directories with the mtime to give them once their contents are in, in creation order. */
  private readonly dirTimes: Array<{ abs: string; mtime: Date }> = [];

  constructor(private readonly root: string) {}

  async consume(extract: tar.Extract): Promise<void> {
    for await (const entry of extract) {
      try {
        await this.entry(entry.header, entry);
      } catch (err) {
        entry.destroy();
        throw err;
      }
    }
  }

  async finish(): Promise<void> {
    if (this.seen.size === 0) throw new Error(`the stream holds no entries (not even the layer root "${ROOT_ENTRY_NAME}")`);
    // Children were made after their parents: set times in reverse so that no
    // later change inside a directory moves its mtime again.
    for (let i = this.dirTimes.length - 1; i >= 0; i--) {
      const { abs, mtime } = this.dirTimes[i];
      fs.utimesSync(abs, mtime, mtime);
    }
  }

  private async entry(h: tar.Header, data: TarEntry): Promise<void> {
    const name = entryName(h.name);
    const label = JSON.stringify(h.name);
    // The root comes first (layerTar writes it so): its mode, owner and mtime are
    // the layer's, and a tree without them would be a different layer.
    if (this.seen.size === 0 && name !== '') throw new Error(`entry ${label}: the first entry must be the layer root "${ROOT_ENTRY_NAME}"`);
    if (this.seen.has(name)) throw new Error(`entry ${label}: appears twice`);
    this.seen.add(name);
    const abs = name === '' ? this.root : path.join(this.root, name);
    if (name !== '' && !this.dirs.has(parentOf(name))) {
      throw new Error(`entry ${label}: its parent is not a directory of this layer (listed before it)`);
    }
    const mode = (h.mode ?? 0o644) & 0o7777;
    const uid = h.uid ?? 0;
    const gid = h.gid ?? 0;
    const mtime = h.mtime ?? new Date(0);
    let opaque = false;
    const pax = (h.pax ?? {}) as Record<string, string>;
    for (const key of Object.keys(pax)) {
      if (key === 'path' || key === 'linkpath' || key === 'size') continue; // applied to the header by tar-stream
      if (key === OPAQUE_PAX_KEY && pax[key] === 'y' && h.type === 'directory') opaque = true;
      else if (key.startsWith('SCHILY.xattr.') || key.startsWith('LIBARCHIVE.xattr.')) {
        throw new Error(`entry ${label}: extended attribute record "${key}" is not supported`);
      }
    }
    if (name === '' && h.type !== 'directory') throw new Error(`entry ${label}: the layer root must be a directory`);
    switch (h.type) {
      case 'directory':
        if (name !== '') fs.mkdirSync(abs, { mode: 0o700 });
        this.owner(abs, uid, gid, mode);
        if (opaque) setXattr(abs, OPAQUE_XATTR, Buffer.from('y'));
        this.dirs.add(name);
        this.dirTimes.push({ abs, mtime });
        break;
      case 'file':
      case 'contiguous-file':
        if ((h.size ?? 0) <= SMALL_FILE) {
          const parts: Buffer[] = [];
          for await (const part of data) parts.push(part as Buffer);
          fs.writeFileSync(abs, Buffer.concat(parts), { flag: 'wx', mode: 0o600 });
        } else {
          await new Promise<void>((resolve, reject) => {
            const out = fs.createWriteStream(abs, { flags: 'wx', mode: 0o600 });
            out.on('error', reject).on('finish', resolve);
            data.on('error', (err: Error) => out.destroy(err));
            data.pipe(out);
          });
        }
        this.owner(abs, uid, gid, mode);
        fs.utimesSync(abs, mtime, mtime);
        this.files.add(name);
        return;
      case 'link': {
        const target = entryName(h.linkname ?? '');
        if (!this.files.has(target)) throw new Error(`entry ${label}: hard link to ${JSON.stringify(h.linkname)}, which is not a file of this layer`);
        fs.linkSync(path.join(this.root, target), abs);
        break;
      }
      case 'symlink':
        if (!h.linkname || h.linkname.includes('\0')) throw new Error(`entry ${label}: symlink without a valid target`);
        fs.symlinkSync(h.linkname, abs);
        fs.lchownSync(abs, uid, gid);
        fs.lutimesSync(abs, mtime, mtime);
        break;
      case 'character-device':
      case 'block-device':
      case 'fifo': {
        const kind = h.type === 'fifo' ? 'fifo' : h.type === 'character-device' ? 'character' : 'block';
        mknodDevice(abs, kind, 0o600, h.devmajor ?? 0, h.devminor ?? 0);
        this.owner(abs, uid, gid, mode);
        fs.utimesSync(abs, mtime, mtime);
        break;
      }
      default:
        throw new Error(`entry ${label}: entry type "${h.type}" is not supported`);
    }
    data.resume(); // entries other than files carry no data; let the parser move on
  }

  /** chown before chmod: chown clears set-user-ID and set-group-ID bits. */
  private owner(abs: string, uid: number, gid: number, mode: number): void {
    fs.lchownSync(abs, uid, gid);
    fs.chmodSync(abs, mode);
  }
}
