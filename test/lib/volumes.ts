// Volumes as the kubelet writes them, and scratch directories, for the tests of
// shipped mounts (the node daemon's watch, the agent's copies, the DPU runtime)
// and the end-to-end ConfigMap update.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** Numbered directories under one temporary root (`prefix` names it); `remove` deletes them all. */
export function scratchDirs(prefix: string): { scratch: (name: string) => string; root: string; remove: () => void } {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  let serial = 0;
  return {
    root,
    scratch: (name) => {
      const dir = path.join(root, `${name}-${++serial}`);
      fs.mkdirSync(dir, { recursive: true });
      return dir;
    },
    remove: () => fs.rmSync(root, { recursive: true, force: true }),
  };
}

/**
 * A volume directory as the kubelet's atomic writer leaves it: the data in
 * `..<stamp>`, `..data` pointing at it (swapped by a rename), each key a symlink
 * through `..data`, keys no longer in the data removed, the old data removed last.
 */
export function kubeletWrite(dir: string, stamp: string, data: Record<string, string>): void {
  fs.mkdirSync(dir, { recursive: true });
  const old = fs.existsSync(path.join(dir, '..data')) ? fs.readlinkSync(path.join(dir, '..data')) : '';
  fs.mkdirSync(path.join(dir, stamp));
  for (const [k, v] of Object.entries(data)) fs.writeFileSync(path.join(dir, stamp, k), v, { mode: 0o644 });
  fs.symlinkSync(stamp, path.join(dir, '..data_tmp'));
  fs.renameSync(path.join(dir, '..data_tmp'), path.join(dir, '..data'));
  for (const k of Object.keys(data)) if (!fs.existsSync(path.join(dir, k))) fs.symlinkSync(path.join('..data', k), path.join(dir, k));
  for (const name of fs.readdirSync(dir)) if (!name.startsWith('..') && !(name in data)) fs.rmSync(path.join(dir, name));
  if (old) fs.rmSync(path.join(dir, old), { recursive: true });
}

/** A file of a tar stream, unpacked into `dir` and read as a reader in the container would. */
export function fileInTar(tar: Buffer, name: string, dir: string): string {
  spawnSync('tar', ['-x', '-C', dir, '-f', '-'], { input: tar });
  return fs.readFileSync(path.join(dir, name), 'utf8');
}
