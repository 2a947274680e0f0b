// A process that holds one half of a pod's split network namespace, as the
// shim (host half) and the agent (DPU half) will, with the exchange of
// listening ports between the halves as JSON lines:
//
//   node dist/src/netns/half-process.js host|dpu --pod ID --netns PATH [--pod-ip IP] [--ports ANNOTATION]
//
// stdout: {"ready":true,"window":…} once open, then {"listening":[…]} whenever
// this half's listening ports change. stdin: {"peerListening":[…]} lines, the
// other half's ports. SIGTERM, SIGINT or the end of stdin closes the half
// (exit 0, or 1 with the error). --ports takes heteropod.io/ports' value.
import * as readline from 'node:readline';
import { declaredPortList, parsePortsAnnotation } from './ports';
import { NetnsHalf, openDpuHalf, openHostHalf } from './half';

const USAGE = 'usage: half-process host|dpu --pod ID --netns PATH [--pod-ip IP] [--ports ANNOTATION]';

function parse(argv: string[]): { side: string; flags: Map<string, string> } {
  const [side, ...rest] = argv;
  if (side !== 'host' && side !== 'dpu') throw new Error(USAGE);
  const flags = new Map<string, string>();
  for (let i = 0; i < rest.length; i += 2) {
    if (!['--pod', '--netns', '--pod-ip', '--ports'].includes(rest[i]) || rest[i + 1] === undefined) throw new Error(`unexpected argument "${rest[i]}"\n${USAGE}`);
    flags.set(rest[i], rest[i + 1]);
  }
  if (!flags.has('--pod') || !flags.has('--netns')) throw new Error(USAGE);
  return { side, flags };
}

async function main(argv: string[]): Promise<void> {
  const print = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');
  let half: NetnsHalf;
  try {
    const { side, flags } = parse(argv);
    const opts = {
      podId: flags.get('--pod')!,
      netnsPath: flags.get('--netns')!,
      podIp: flags.get('--pod-ip'),
      declaredDpuPorts: declaredPortList(parsePortsAnnotation(flags.get('--ports'))),
      onListeningPorts: (ports: number[]) => print({ listening: ports }),
      log: (level: string, msg: string) => process.stderr.write(`${level}: ${msg}\n`),
    };
    half = side === 'host' ? await openHostHalf({ ...opts, podIp: opts.podIp ?? '' }) : await openDpuHalf(opts);
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`);
    process.exit(1);
  }
  let closing = false;
  const shutdown = () => {
    if (closing) return;
    closing = true;
    half.close().then(
      () => process.exit(0),
      (err: Error) => {
        process.stderr.write(`${err.message}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  const lines = readline.createInterface({ input: process.stdin });
  lines.on('line', (line) => {
    try {
      const msg = JSON.parse(line) as { peerListening?: number[] };
      if (msg.peerListening) {
        half.setPeerListeningPorts(msg.peerListening).catch((err: Error) => process.stderr.write(`update rules: ${err.message}\n`));
      }
    } catch (err) {
      process.stderr.write(`bad input line "${line}": ${(err as Error).message}\n`);
    }
  });
  lines.on('close', shutdown);
  print({ ready: true, window: half.windowPath });
}

void main(process.argv.slice(2));
