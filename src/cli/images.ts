// `heteropod images build|import`: build HeteroPod's images from files on this
// machine and import them into a containerd. Errors are thrown; main prints them.
import { Command } from 'commander';
import { DEFAULT_ARCHIVE_DIR, EnsuredImage, ensureImageArchives, importImages } from '../images';

export const DEFAULT_CONTAINERD_ADDRESS = '/run/heteropod/containerd.sock';
export const DEFAULT_NAMESPACE = 'k8s.io';

function formatSize(bytes: number): string {
  if (bytes >= 1 << 20) return `${(bytes / (1 << 20)).toFixed(1)} MiB`;
  return `${(bytes / 1024).toFixed(1)} KiB`;
}

/** One row per image: reference, layer size, short digest, archive path, and whether it was reused. */
export function formatImageTable(images: readonly EnsuredImage[]): string {
  const rows = [
    ['IMAGE', 'LAYER SIZE', 'DIGEST', 'ARCHIVE'],
    ...images.map((i) => [
      i.ref,
      formatSize(i.layerSize),
      i.manifestDigest.replace(/^sha256:/, '').slice(0, 12),
      i.cached ? `${i.archive} (up to date)` : i.archive,
    ]),
  ];
  const widths = rows[0].map((_, col) => Math.max(...rows.map((r) => r[col].length)));
  return rows.map((r) => r.map((cell, col) => (col === r.length - 1 ? cell : cell.padEnd(widths[col]))).join('  ')).join('\n');
}

export function registerImageCommands(program: Command): void {
  const images = program.command('images').description('build and import the images HeteroPod runs (no registry needed)');

  images
    .command('build')
    .description('build OCI image archives from files on this machine (all images when no NAME is given)')
    .argument('[names...]', 'image names, short (busybox) or full (heteropod.local/busybox:1)')
    .option('--out <dir>', 'directory for the archives', DEFAULT_ARCHIVE_DIR)
    .action(async (names: string[], opts: { out: string }) => {
      const built = await ensureImageArchives(opts.out, names);
      process.stdout.write(`${formatImageTable(built)}\n`);
    });

  images
    .command('import')
    .description('build (if needed) and import image archives into containerd')
    .argument('[names...]', 'image names, short (busybox) or full (heteropod.local/busybox:1)')
    .option('--address <socket>', 'containerd socket path', DEFAULT_CONTAINERD_ADDRESS)
    .option('--namespace <ns>', 'containerd namespace', DEFAULT_NAMESPACE)
    .option('--out <dir>', 'directory for the archives', DEFAULT_ARCHIVE_DIR)
    .action(async (names: string[], opts: { address: string; namespace: string; out: string }) => {
      const built = await ensureImageArchives(opts.out, names);
      await importImages({ address: opts.address, namespace: opts.namespace, archives: built.map((b) => b.archive) });
      for (const b of built) process.stdout.write(`imported ${b.ref} (${b.manifestDigest}) into ${opts.address} namespace ${opts.namespace}\n`);
    });
}
