// Reading the OCI bundle containerd hands the shim (its cwd on start and delete).
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { OciSpec } from '../oci/spec';
import type { BundleSpecFile } from '../taskapi/messages';

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

/** The bundle's config.json, its bytes and what they parse to; the error names the file. */
export function readSpecFile(bundle: string): BundleSpecFile {
  const file = path.join(bundle, 'config.json');
  try {
    const raw = fs.readFileSync(file);
    return { raw, parsed: JSON.parse(raw.toString('utf8')) as OciSpec };
  } catch (err) {
    throw new Error(`read bundle spec ${file}: ${(err as Error).message}`);
  }
}

export const readSpec = (bundle: string): OciSpec => readSpecFile(bundle).parsed;
