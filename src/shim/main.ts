// containerd-shim-heteropod-v2's actions in Node.js: `delete` (containerd's
// clean-up after a shim that is gone) and -v. `start` and the pod's proxy are
// the C launcher's (launcher.c, proxy.c); it hands every other action here.
import { parseFlags } from '../taskapi/flags';

const VERSION = '0.1.0';

async function main(argv: string[]): Promise<number> {
  if (argv.includes('-v') || argv.includes('--version')) {
    process.stdout.write(`containerd-shim-heteropod-v2:\n  Version: ${VERSION}\n`);
    return 0;
  }
  const flags = parseFlags(argv);
  if (!flags.namespace) throw new Error('-namespace is required');
  if (!flags.id) throw new Error('-id is required');
  switch (flags.action) {
    case 'delete': {
      const response = await (require('./delete') as typeof import('./delete')).deleteTask(flags);
      process.stdout.write(response);
      return 0;
    }
    default:
      throw new Error(`unknown action ${JSON.stringify(flags.action)} (want delete; start is the C launcher's)`);
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
