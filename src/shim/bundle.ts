// Reading the OCI bundle containerd hands the shim (its cwd on start and delete).
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface BundleSpec {
  annotations?: Record<string, string>;
}

/** Replaces the bundle's config.json (written aside, then renamed over it). */
export function writeSpec(bundle: string, spec: object): void {
  const file = path.join(bundle, 'config.json');
  try {
    fs.writeFileSync(`${file}.tmp`, JSON.stringify(spec));
    fs.renameSync(`${file}.tmp`, file);
  } catch (err) {
    fs.rmSync(`${file}.tmp`, { force: true });
    throw new Error(`write bundle spec ${file}: ${(err as Error).message}`);
  }
}

export function readSpec(bundle: string): BundleSpec {
  const file = path.join(bundle, 'config.json');
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as BundleSpec;
  } catch (err) {
    throw new Error(`read bundle spec ${file}: ${(err as Error).message}`);
  }
}
