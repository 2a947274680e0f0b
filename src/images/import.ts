// Imports OCI archives into a containerd with `ctr images import`. ctr unpacks
// each image into the default snapshotter, which CRI needs before it can create
// a container from it; no registry is contacted.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';

export interface ImportOptions {
  /** containerd's gRPC socket path (a `unix://` prefix is accepted). */
  address: string;
  /** containerd namespace; CRI uses `k8s.io`. */
  namespace: string;
  /** The ctr binary; `ctr` from PATH by default. */
  ctr?: string;
  archives: string[];
}

function socketPath(address: string): string {
  return address.startsWith('unix://') ? address.slice('unix://'.length) : address;
}

function runCtr(ctr: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(ctr, args, { maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (!err) {
        resolve(stdout);
        return;
      }
      const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? `${ctr} not found (install containerd: \`make deps\`)` : stderr.trim() || err.message;
      reject(new Error(`${ctr} ${args.join(' ')}: ${why}`));
    });
  });
}

/** Imports every archive, in order; the first failure stops the rest and carries ctr's stderr. */
export async function importImages(opts: ImportOptions): Promise<void> {
  const ctr = opts.ctr ?? 'ctr';
  const sock = socketPath(opts.address);
  const st = await fs.promises.stat(sock).catch(() => undefined);
  if (!st || !st.isSocket()) throw new Error(`import images: no containerd socket at ${sock}`);
  for (const archive of opts.archives) {
    if (!fs.existsSync(archive)) throw new Error(`import images: archive ${archive} does not exist`);
    try {
      await runCtr(ctr, ['-a', sock, '-n', opts.namespace, 'images', 'import', archive]);
    } catch (err) {
      throw new Error(`import ${archive} into ${sock} (namespace ${opts.namespace}): ${(err as Error).message}`);
    }
  }
}
