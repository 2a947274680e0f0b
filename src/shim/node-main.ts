// The node daemon's own entry point (what the systemd unit and the test bed run):
// it loads the daemon alone, not every command of the `heteropod` CLI.
//
//   node [NODE_DAEMON_FLAGS] dist/src/shim/node-main.js [--config FILE] [--socket PATH]
import { serveNode } from './node-daemon';

function option(argv: string[], name: string): string | undefined {
  const i = argv.indexOf(name);
  if (i < 0) return undefined;
  if (!argv[i + 1]) throw new Error(`${name} needs a value`);
  return argv[i + 1];
}

const argv = process.argv.slice(2);
const unknown = argv.filter((a, i) => a.startsWith('--') && !['--config', '--socket'].includes(a) && !['--config', '--socket'].includes(argv[i - 1]));
if (unknown.length) {
  process.stderr.write(`heteropod-node: unknown option ${unknown[0]} (want --config FILE, --socket PATH)\n`);
  process.exit(2);
}
serveNode({ configPath: option(argv, '--config') ?? '/etc/heteropod/shim.toml', socket: option(argv, '--socket') }).catch((err: Error) => {
  process.stderr.write(`heteropod-node: ${err.message}\n`);
  process.exit(1);
});
