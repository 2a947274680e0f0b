// Assembles an OCI image layout (oci-layout, index.json, blobs/sha256/…) in one tar
// that `ctr images import` accepts. Each image has one uncompressed layer; it is
// written to a temporary file first, because its digest must be known before the
// manifest and config that name it can be written.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tar from 'tar-stream';
import { IMAGE_TAG, ImageDefinition, REPO_ROOT, ociArchitecture, selectImages } from './definitions';
import { FIXED_MTIME, WrittenBlob, writeLayer, writeTar } from './layer';
import { LayerEntry, collectLayerEntries } from './rootfs';

export const MEDIA_TYPE_INDEX = 'application/vnd.oci.image.index.v1+json';
export const MEDIA_TYPE_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const MEDIA_TYPE_CONFIG = 'application/vnd.oci.image.config.v1+json';
export const MEDIA_TYPE_LAYER = 'application/vnd.oci.image.layer.v1.tar';

/** Bump when the bytes we produce for the same inputs change, to invalidate cached archives. */
const FORMAT_VERSION = 1;
const EPOCH = FIXED_MTIME.toISOString().replace(/\.000Z$/, 'Z');

export const DEFAULT_ARCHIVE_DIR = path.join(REPO_ROOT, 'build', 'images');

export interface BuiltImage {
  /** Path of the OCI archive. */
  archive: string;
  /** Full image reference, e.g. `heteropod.local/busybox:1`. */
  ref: string;
  layerDigest: string;
  layerSize: number;
  configDigest: string;
  manifestDigest: string;
}

export interface EnsuredImage extends BuiltImage {
  /** True when the archive on disk was already up to date and was not rebuilt. */
  cached: boolean;
}

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
}

function jsonBlob(value: unknown): { bytes: Buffer; digest: string } {
  const bytes = Buffer.from(JSON.stringify(value), 'utf8');
  return { bytes, digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}` };
}

function blobName(digest: string): string {
  return `blobs/sha256/${digest.slice('sha256:'.length)}`;
}

export function archivePath(def: ImageDefinition, outDir: string): string {
  return path.join(outDir, `${def.shortName}.oci.tar`);
}

function stampPath(def: ImageDefinition, outDir: string): string {
  return path.join(outDir, `${def.shortName}.stamp.json`);
}

function imageConfig(def: ImageDefinition, layer: WrittenBlob): unknown {
  const config: Record<string, unknown> = { Env: def.config.Env };
  if (def.config.Entrypoint) config.Entrypoint = def.config.Entrypoint;
  if (def.config.Cmd) config.Cmd = def.config.Cmd;
  config.WorkingDir = def.config.WorkingDir;
  return {
    created: EPOCH,
    architecture: ociArchitecture(),
    os: 'linux',
    config,
    rootfs: { type: 'layers', diff_ids: [layer.digest] },
    history: [{ created: EPOCH, created_by: `heteropod images build ${def.shortName}`, comment: 'files copied from the build machine' }],
  };
}

async function addBuffer(pack: tar.Pack, name: string, bytes: Buffer): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    pack.entry(
      { name, type: 'file', mode: 0o644, size: bytes.length, mtime: FIXED_MTIME, uid: 0, gid: 0 },
      bytes,
      (err) => (err ? reject(err) : resolve()),
    );
  });
}

async function addDirectory(pack: tar.Pack, name: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    pack.entry({ name, type: 'directory', mode: 0o755, mtime: FIXED_MTIME, uid: 0, gid: 0 }, (err) =>
      err ? reject(err) : resolve(),
    );
  });
}

async function addFile(pack: tar.Pack, name: string, file: string, size: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const sink = pack.entry(
      { name, type: 'file', mode: 0o644, size, mtime: FIXED_MTIME, uid: 0, gid: 0 },
      (err) => (err ? reject(err) : resolve()),
    );
    fs.createReadStream(file)
      .on('error', (err) => {
        sink.destroy(err);
        reject(err);
      })
      .pipe(sink);
  });
}

/** Writes the layout tar: small JSON documents first, then the layer streamed from `layerFile`. */
async function writeLayoutTar(
  file: string,
  blobs: Array<{ name: string; bytes: Buffer }>,
  layerFile: string,
  layer: WrittenBlob,
): Promise<void> {
  await writeTar(file, async (pack) => {
    for (const b of blobs.filter((x) => !x.name.startsWith('blobs/'))) await addBuffer(pack, b.name, b.bytes);
    await addDirectory(pack, 'blobs');
    await addDirectory(pack, 'blobs/sha256');
    for (const b of blobs.filter((x) => x.name.startsWith('blobs/'))) await addBuffer(pack, b.name, b.bytes);
    await addFile(pack, blobName(layer.digest), layerFile, layer.size);
  });
}

async function buildFromEntries(def: ImageDefinition, entries: readonly LayerEntry[], outDir: string): Promise<BuiltImage> {
  await fs.promises.mkdir(outDir, { recursive: true });
  const archive = archivePath(def, outDir);
  // Temporary names carry the pid so two concurrent builders never share a file;
  // the final rename is atomic, so readers see an old archive or a whole new one.
  const layerTmp = path.join(outDir, `.${def.shortName}.layer.${process.pid}.tmp`);
  const archiveTmp = path.join(outDir, `.${def.shortName}.oci.tar.${process.pid}.tmp`);
  try {
    const layer = await writeLayer(entries, layerTmp);
    const config = jsonBlob(imageConfig(def, layer));
    const configDesc: Descriptor = { mediaType: MEDIA_TYPE_CONFIG, digest: config.digest, size: config.bytes.length };
    const layerDesc: Descriptor = { mediaType: MEDIA_TYPE_LAYER, digest: layer.digest, size: layer.size };
    const manifest = jsonBlob({ schemaVersion: 2, mediaType: MEDIA_TYPE_MANIFEST, config: configDesc, layers: [layerDesc] });
    const index = jsonBlob({
      schemaVersion: 2,
      mediaType: MEDIA_TYPE_INDEX,
      manifests: [
        {
          mediaType: MEDIA_TYPE_MANIFEST,
          digest: manifest.digest,
          size: manifest.bytes.length,
          platform: { architecture: ociArchitecture(), os: 'linux' },
          annotations: {
            'io.containerd.image.name': def.name,
            'org.opencontainers.image.ref.name': IMAGE_TAG,
          },
        },
      ],
    });
    await writeLayoutTar(
      archiveTmp,
      [
        { name: 'oci-layout', bytes: Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' })) },
        { name: 'index.json', bytes: index.bytes },
        { name: blobName(config.digest), bytes: config.bytes },
        { name: blobName(manifest.digest), bytes: manifest.bytes },
      ],
      layerTmp,
      layer,
    );
    await fs.promises.rename(archiveTmp, archive);
    return {
      archive,
      ref: def.name,
      layerDigest: layer.digest,
      layerSize: layer.size,
      configDigest: config.digest,
      manifestDigest: manifest.digest,
    };
  } finally {
    await fs.promises.rm(layerTmp, { force: true });
    await fs.promises.rm(archiveTmp, { force: true });
  }
}

/** Builds `def`'s archive into `outDir` (created if needed), replacing any archive there. */
export async function buildImageArchive(def: ImageDefinition, outDir: string): Promise<BuiltImage> {
  const entries = await collectLayerEntries(def);
  return buildFromEntries(def, entries, outDir);
}

/**
 * A digest of everything the archive's bytes depend on: the definition, every
 * entry, and for files copied from this machine their path, size and mtime.
 */
export function inputStamp(def: ImageDefinition, entries: readonly LayerEntry[]): string {
  const hash = createHash('sha256');
  hash.update(JSON.stringify({ format: FORMAT_VERSION, arch: ociArchitecture(), name: def.name, config: def.config }));
  for (const e of entries) {
    if (e.type === 'file') {
      hash.update(JSON.stringify([e.type, e.path, e.mode, e.size, e.source ?? null, e.mtimeMs ?? null]));
      if (e.content) hash.update(e.content);
    } else if (e.type === 'symlink') {
      hash.update(JSON.stringify([e.type, e.path, e.target]));
    } else {
      hash.update(JSON.stringify([e.type, e.path, e.mode]));
    }
    hash.update('\n');
  }
  return `sha256:${hash.digest('hex')}`;
}

interface Stamp {
  inputs: string;
  archiveSize: number;
  image: BuiltImage;
}

async function readStamp(file: string): Promise<Stamp | undefined> {
  try {
    return JSON.parse(await fs.promises.readFile(file, 'utf8')) as Stamp;
  } catch {
    return undefined;
  }
}

/**
 * Makes sure an up-to-date archive exists in `outDir` for each named image (all
 * when `names` is empty) and returns them in order. An archive is rebuilt when
 * its stamp does not match the current inputs or the archive is gone or resized.
 */
export async function ensureImageArchives(outDir: string = DEFAULT_ARCHIVE_DIR, names?: readonly string[]): Promise<EnsuredImage[]> {
  const defs = selectImages(names);
  const results: EnsuredImage[] = [];
  for (const def of defs) {
    const entries = await collectLayerEntries(def);
    const inputs = inputStamp(def, entries);
    const archive = archivePath(def, outDir);
    const stampFile = stampPath(def, outDir);
    const stamp = await readStamp(stampFile);
    const st = await fs.promises.stat(archive).catch(() => undefined);
    if (stamp && stamp.inputs === inputs && st && st.size === stamp.archiveSize && stamp.image.archive === archive) {
      results.push({ ...stamp.image, cached: true });
      continue;
    }
    const built = await buildFromEntries(def, entries, outDir);
    const size = (await fs.promises.stat(built.archive)).size;
    const next: Stamp = { inputs, archiveSize: size, image: built };
    const stampTmp = `${stampFile}.${process.pid}.tmp`;
    await fs.promises.writeFile(stampTmp, `${JSON.stringify(next, null, 2)}\n`);
    await fs.promises.rename(stampTmp, stampFile);
    results.push({ ...built, cached: false });
  }
  return results;
}
