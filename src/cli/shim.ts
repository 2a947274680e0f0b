// `heteropod install`: the HeteroPod runtime handler on this node.
import * as path from 'node:path';
import { Command } from 'commander';
import { install, runtimeClassManifest } from '../shim/install';

export function registerShimCommands(program: Command): void {
  program
    .command('install')
    .description('install the shim on PATH and a containerd drop-in for handler "heteropod"; prints the RuntimeClass manifest')
    .option('--root <dir>', 'install under this directory instead of / (staging)', '/')
    .option('--bin-dir <dir>', 'where containerd finds shims (on its PATH)', '/usr/local/bin')
    .option('--drop-in-dir <dir>', 'a directory containerd imports config from', '/etc/containerd/conf.d')
    .option('--config-path <file>', 'the shim configuration file (options.ConfigPath)', '/etc/heteropod/shim.toml')
    .option('--containerd-config <file>', "containerd's main config", '/etc/containerd/config.toml')
    .action((o: { root: string; binDir: string; dropInDir: string; configPath: string; containerdConfig: string }) => {
      const result = install({ ...o, repoRoot: path.resolve(__dirname, '../../..'), nodePath: process.execPath });
      for (const f of result.written) process.stderr.write(`wrote ${f}\n`);
      for (const n of result.notes) process.stderr.write(`note: ${n}\n`);
      process.stderr.write('RuntimeClass (apply with: heteropod install | kubectl apply -f -):\n');
      process.stdout.write(runtimeClassManifest());
    });
}
