// `heteropod install`: the HeteroPod runtime handler on this node; `heteropod
// node`: the node daemon that serves the DPU side of every offloading pod.
import * as path from 'node:path';
import { Command } from 'commander';
import { install, runtimeClassManifest } from '../shim/install';

export function registerShimCommands(program: Command): void {
  program
    .command('node')
    .description('run the node daemon: the DPU side of every offloading pod on this node (one per node; installed as a systemd unit)')
    .option('--config <file>', 'the shim configuration file (its state_dir holds node.sock)', '/etc/heteropod/shim.toml')
    .option('--socket <path>', 'listen here instead of <state_dir>/node.sock')
    .action(async (o: { config: string; socket?: string }) => {
      const { serveNode } = await import('../shim/node-daemon');
      await serveNode({ configPath: o.config, socket: o.socket });
    });
  program
    .command('install')
    .description('install the shim on PATH and a containerd drop-in for handler "heteropod"; prints the RuntimeClass manifest')
    .option('--root <dir>', 'install under this directory instead of / (staging)', '/')
    .option('--bin-dir <dir>', 'where containerd finds shims (on its PATH)', '/usr/local/bin')
    .option('--drop-in-dir <dir>', 'a directory containerd imports config from', '/etc/containerd/conf.d')
    .option('--config-path <file>', 'the shim configuration file (options.ConfigPath)', '/etc/heteropod/shim.toml')
    .option('--containerd-config <file>', "containerd's main config", '/etc/containerd/config.toml')
    .option('--systemd-dir <dir>', "where the node daemon's unit goes", '/etc/systemd/system')
    .action((o: { root: string; binDir: string; dropInDir: string; configPath: string; containerdConfig: string; systemdDir: string }) => {
      const result = install({ ...o, repoRoot: path.resolve(__dirname, '../../..'), nodePath: process.execPath });
      for (const f of result.written) process.stderr.write(`wrote ${f}\n`);
      for (const n of result.notes) process.stderr.write(`note: ${n}\n`);
      process.stderr.write('RuntimeClass (apply with: heteropod install | kubectl apply -f -):\n');
      process.stdout.write(runtimeClassManifest());
    });
}
