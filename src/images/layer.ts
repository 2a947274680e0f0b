// Writes a layer: an uncompressed tar of LayerEntry values, streamed to a file while
// its sha256 is computed, so memory stays small however large the binaries are.
// Every header carries uid/gid 0 and a fixed mtime: the bytes depend only on the
// entries, never on when or by whom the layer was built.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import type { LayerEntry } from './rootfs';

type EntryHeader = Parameters<tar.Pack['entry']>[0];

/** The mtime of every entry we write: the epoch, so rebuilds are byte-identical. */
export const FIXED_MTIME = new Date(0);

export interface WrittenBlob {
  /** `sha256:<hex>` of the bytes written. */
  digest: string;
  size: number;
}

function header(entry: LayerEntry, name: string): EntryHeader {
  const common = { name, uid: 0, gid: 0, uname: 'root', gname: 'root', mtime: FIXED_MTIME };
  switch (entry.type) {
    case 'directory':
      return { ...common, type: 'directory', mode: entry.mode };
    case 'symlink':
      return { ...common, type: 'symlink', mode: 0o777, linkname: entry.target };
    case 'file':
      return { ...common, type: 'file', mode: entry.mode, size: entry.size };
  }
}

function addEntry(pack: tar.Pack, entry: LayerEntry): Promise<void> {
  // Layer paths are relative to the root: "bin/sh", not "/bin/sh".
  const name = entry.path.replace(/^\/+/, '');
  const h = header(entry, name);
  return new Promise<void>((resolve, reject) => {
    const done = (err?: Error | null) => (err ? reject(err) : resolve());
    if (entry.type !== 'file') {
      pack.entry(h, done);
      return;
    }
    if (entry.source === undefined) {
      pack.entry(h, entry.content ?? Buffer.alloc(0), done);
      return;
    }
    // tar-stream checks that exactly `size` bytes arrive, so a file that changes
    // under us fails the build instead of producing a corrupt layer.
    const sink = pack.entry(h, done);
    fs.createReadStream(entry.source)
      .on('error', (err) => {
        sink.destroy(err);
        reject(new Error(`read ${entry.source}: ${err.message}`));
      })
      .pipe(sink);
  });
}

/** A pass-through that hashes and counts what flows through it. */
export class DigestingStream extends Transform {
  private readonly hash = createHash('sha256');
  private bytes = 0;

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null, data?: Buffer) => void): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    cb(null, chunk);
  }

  /** Valid once the stream has ended. */
  result(): WrittenBlob {
    return { digest: `sha256:${this.hash.digest('hex')}`, size: this.bytes };
  }
}

/**
 * Streams a tar that `fill` writes into `file` and returns its digest and size.
 * `fill` runs while the tar is consumed (pack applies back-pressure to each
 * entry); on any error the stream is torn down before the error leaves.
 */
export async function writeTar(file: string, fill: (pack: tar.Pack) => Promise<void>): Promise<WrittenBlob> {
  const pack = tar.pack();
  const digesting = new DigestingStream();
  const written = pipeline(pack, digesting, fs.createWriteStream(file));
  try {
    await fill(pack);
    pack.finalize();
  } catch (err) {
    pack.destroy(err as Error);
    await written.catch(() => undefined);
    throw err;
  }
  await written;
  return digesting.result();
}

/** Writes `entries` (already in layer order) as a tar to `file`; returns its digest and size. */
export function writeLayer(entries: readonly LayerEntry[], file: string): Promise<WrittenBlob> {
  return writeTar(file, async (pack) => {
    for (const entry of entries) await addEntry(pack, entry);
  });
}
