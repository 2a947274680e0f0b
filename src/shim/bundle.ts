// Reading the OCI bundle containerd hands the shim (its cwd on start and delete).
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface BundleSpec {
  annotations?: Record<string, string>;
}

export function readSpec(bundle: string): BundleSpec {
  const file = path.join(bundle, 'config.json');
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as BundleSpec;
  } catch (err) {
    throw new Error(`read bundle spec ${file}: ${(err as Error).message}`);
  }
}
