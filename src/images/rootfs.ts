// Turns an ImageDefinition into the exact list of layer entries: every directory,
// file and symlink, with its mode, in the order they are written. The list is a
// pure function of the definition and of the files on this machine, which is what
// makes two builds from the same inputs produce the same digests.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { sharedLibraryClosure } from './closure';
import { HostSource, ImageDefinition, RootfsItem, missingSourceMessage } from './definitions';

export type LayerEntry =
  | { type: 'directory'; path: string; mode: number }
  /** Content comes from `source` on this machine (streamed) or from `content`. */
  | { type: 'file'; path: string; mode: number; size: number; source?: string; content?: Buffer; mtimeMs?: number }
  | { type: 'symlink'; path: string; target: string };

const DIRECTORY_MODE = 0o755;

/** Orders paths so that a directory comes before everything under it. */
export function compareImagePaths(a: string, b: string): number {
  const pa = a.split('/');
  const pb = b.split('/');
  for (let i = 0; i < Math.min(pa.length, pb.length); i++) {
    if (pa[i] !== pb[i]) return pa[i] < pb[i] ? -1 : 1;
  }
  return pa.length - pb.length;
}

function normalizeImagePath(p: string): string {
  if (!p.startsWith('/')) throw new Error(`image path "${p}" is not absolute`);
  const normal = path.posix.normalize(p);
  if (normal === '/') throw new Error('the image root itself cannot be an entry');
  return normal.replace(/\/+$/, '');
}

function sameEntry(a: LayerEntry, b: LayerEntry): boolean {
  if (a.type !== b.type || a.path !== b.path) return false;
  if (a.type === 'directory' && b.type === 'directory') return a.mode === b.mode;
  if (a.type === 'symlink' && b.type === 'symlink') return a.target === b.target;
  if (a.type === 'file' && b.type === 'file') {
    if (a.mode !== b.mode || a.size !== b.size || a.source !== b.source) return false;
    return (a.content ?? Buffer.alloc(0)).equals(b.content ?? Buffer.alloc(0));
  }
  return false;
}

/** The entries of one image's root file system, collected item by item. */
export class RootfsBuilder {
  private readonly entries = new Map<string, LayerEntry>();
  /** Directories created only because something lives under them; an explicit item may re-mode them. */
  private readonly implicitDirs = new Set<string>();

  constructor(private readonly imageName: string) {}

  /** Entries sorted so that every directory precedes its contents. */
  list(): LayerEntry[] {
    return [...this.entries.values()].sort((a, b) => compareImagePaths(a.path, b.path));
  }

  has(imagePath: string): boolean {
    return this.entries.has(normalizeImagePath(imagePath));
  }

  async add(item: RootfsItem): Promise<void> {
    switch (item.kind) {
      case 'directory':
        this.put({ type: 'directory', path: item.path, mode: item.mode });
        return;
      case 'file': {
        const content = Buffer.from(item.content, 'utf8');
        this.put({ type: 'file', path: item.path, mode: item.mode, size: content.length, content });
        return;
      }
      case 'symlink':
        this.put({ type: 'symlink', path: item.path, target: item.target });
        return;
      case 'binary':
        await this.addBinary(item.path, item.source, item.libraries);
        return;
      case 'busybox-applets':
        await this.addBusyboxApplets(item.dir, item.source, item.required);
        return;
    }
  }

  private put(entry: LayerEntry): void {
    const p = normalizeImagePath(entry.path);
    const e = { ...entry, path: p } as LayerEntry;
    this.ensureParents(p);
    const existing = this.entries.get(p);
    if (existing) {
      if (existing.type === 'directory' && e.type === 'directory' && this.implicitDirs.has(p)) {
        this.implicitDirs.delete(p);
        this.entries.set(p, e);
        return;
      }
      if (sameEntry(existing, e)) return;
      throw new Error(`image ${this.imageName}: two different entries for ${p} (${existing.type} and ${e.type})`);
    }
    this.entries.set(p, e);
  }

  private ensureParents(p: string): void {
    const parent = path.posix.dirname(p);
    if (parent === '/') return;
    const existing = this.entries.get(parent);
    if (existing) {
      if (existing.type !== 'directory') {
        throw new Error(`image ${this.imageName}: ${p} lies under ${parent}, which is a ${existing.type}`);
      }
      return;
    }
    this.ensureParents(parent);
    this.entries.set(parent, { type: 'directory', path: parent, mode: DIRECTORY_MODE });
    this.implicitDirs.add(parent);
  }

  /** The binary as a regular file at `imagePath` (symlinks on this machine followed), then its libraries. */
  private async addBinary(imagePath: string, source: HostSource, libraries: boolean): Promise<void> {
    let st: fs.Stats;
    try {
      st = await fs.promises.stat(source.path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(missingSourceMessage(this.imageName, source));
      throw new Error(`image ${this.imageName}: stat ${source.path}: ${(err as Error).message}`);
    }
    if (!st.isFile()) throw new Error(`image ${this.imageName}: ${source.path} is not a regular file`);
    this.put(fileEntry(imagePath, source.path, st));
    if (!libraries) return;
    for (const lib of await sharedLibraryClosure(source.path)) await this.addHostPath(lib, 0);
  }

  /**
   * Copies `hostPath` to the same path in the image. Directory symlinks on the way
   * (Debian's merged /usr: /lib → usr/lib) are looked through, so the image has real
   * directories; a symlink as the last component stays a symlink and its target is
   * copied too, so the loader finds both names.
   */
  private async addHostPath(hostPath: string, depth: number): Promise<void> {
    if (depth > 16) throw new Error(`image ${this.imageName}: too many symlinks resolving ${hostPath}`);
    if (this.has(hostPath)) return;
    const lst = await fs.promises.lstat(hostPath);
    if (lst.isFile()) {
      this.put(fileEntry(hostPath, hostPath, lst));
      return;
    }
    if (!lst.isSymbolicLink()) throw new Error(`image ${this.imageName}: ${hostPath} is neither a file nor a symlink`);
    const target = await fs.promises.readlink(hostPath);
    const real = await fs.promises.realpath(hostPath);
    // Where the link points when read inside the image, where /lib is a directory.
    const inImage = path.posix.resolve(path.posix.dirname(hostPath), target);
    let inImageReal: string | undefined;
    try {
      inImageReal = await fs.promises.realpath(inImage);
    } catch {
      inImageReal = undefined;
    }
    if (inImageReal === real) {
      this.put({ type: 'symlink', path: hostPath, target });
      await this.addHostPath(inImage, depth + 1);
    } else {
      // The relative target only worked through a directory symlink; point at the real file instead.
      this.put({ type: 'symlink', path: hostPath, target: real });
      await this.addHostPath(real, depth + 1);
    }
  }

  private async addBusyboxApplets(dir: string, source: HostSource, required: string[]): Promise<void> {
    const applets = await listBusyboxApplets(this.imageName, source);
    const absent = required.filter((a) => !applets.includes(a));
    if (absent.length > 0) {
      throw new Error(`image ${this.imageName}: ${source.path} lacks applets ${absent.join(', ')}`);
    }
    for (const applet of applets) {
      if (applet === 'busybox' || applet.includes('/')) continue;
      const p = path.posix.join(dir, applet);
      if (this.has(p)) continue;
      this.put({ type: 'symlink', path: p, target: 'busybox' });
    }
  }
}

function fileEntry(imagePath: string, hostPath: string, st: fs.Stats): LayerEntry {
  // Keep "is it executable" and nothing else: ownership and odd bits of this machine stay out.
  const mode = (st.mode & 0o111) !== 0 ? 0o755 : 0o644;
  return { type: 'file', path: imagePath, mode, size: st.size, source: hostPath, mtimeMs: st.mtimeMs };
}

function listBusyboxApplets(imageName: string, source: HostSource): Promise<string[]> {
  return new Promise((resolve, reject) => {
    execFile(source.path, ['--list'], { maxBuffer: 1 << 20 }, (err, stdout) => {
      if (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') reject(new Error(missingSourceMessage(imageName, source)));
        else reject(new Error(`image ${imageName}: ${source.path} --list: ${err.message}`));
        return;
      }
      resolve(stdout.split('\n').map((s) => s.trim()).filter((s) => s !== '').sort());
    });
  });
}

/** Every entry of `def`'s layer, sorted; fails with a clear message when a source file is missing. */
export async function collectLayerEntries(def: ImageDefinition): Promise<LayerEntry[]> {
  const builder = new RootfsBuilder(def.name);
  for (const item of def.files) await builder.add(item);
  return builder.list();
}
