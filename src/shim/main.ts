// containerd-shim-heteropod-v2: the binary containerd runs for runtime type
// io.containerd.heteropod.v2. Actions: `start`, `delete`, and `serve` (the daemon
// `start` spawns). containerd starts this cold for every task, so only what an
// action needs is loaded.
import { parseFlags } from './flags';

const VERSION = '0.1.0';

async function main(argv: string[]): Promise<number> {
  if (argv.includes('-v') || argv.includes('--version')) {
    process.stdout.write(`containerd-shim-heteropod-v2:\n  Version: ${VERSION}\n`);
    return 0;
  }
  const flags = parseFlags(argv);
  if (!flags.namespace) throw new Error('-namespace is required');
  if (!flags.id && flags.action !== 'spare') throw new Error('-id is required');
  switch (flags.action) {
    case 'start': {
      const address = await (require('./start') as typeof import('./start')).startShim(flags);
      // Exit at once: the listening socket must not be closed (and unlinked) here.
      process.stdout.write(address, () => process.exit(0));
      return -1;
    }
    case 'delete': {
      const response = await (require('./delete') as typeof import('./delete')).deleteTask(flags);
      process.stdout.write(response);
      return 0;
    }
    case 'spare': {
      await (require('./spare') as typeof import('./spare')).serveSpare(flags);
      return -1; // keeps running
    }
    case 'serve': {
      const daemon = require('./daemon') as typeof import('./daemon');
      await daemon.serveDaemon(flags, flags.id, daemon.hasListener() ? 'inherited' : 'bind');
      return -1; // keeps running
    }
    default:
      throw new Error(`unknown action ${JSON.stringify(flags.action)} (want start or delete)`);
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exitCode = code;
  },
  (err: Error) => {
    process.stderr.write(`containerd-shim-heteropod-v2: ${err.message}\n`);
    process.exitCode = 1;
  },
);
