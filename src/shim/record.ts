// What `start` leaves in the bundle for `delete`, which containerd runs without
// the runtime options: the config file and the pod the task belongs to.
import * as fs from 'node:fs';
import * as path from 'node:path';

const RECORD = 'heteropod-shim.json';

export interface StartRecord {
  configPath: string;
  group: string;
}

export function writeStartRecord(bundle: string, record: StartRecord): void {
  fs.writeFileSync(path.join(bundle, RECORD), JSON.stringify(record));
}

export function readStartRecord(bundle: string): StartRecord | null {
  try {
    return JSON.parse(fs.readFileSync(path.join(bundle, RECORD), 'utf8')) as StartRecord;
  } catch {
    return null;
  }
}
