// `heteropod xpu ...`: the XPU transport from the command line.
//   xpu stats [--json]                 every link on this machine, read from the windows
//   xpu link NETNS_A NETNS_B [--mode]  join two namespaces (tests, benchmarks)
import { Command, Option } from 'commander';
import { DEFAULT_TAP, DPU_ADDR, HOST_ADDR, startLink } from '../xpu/link';
import { MODES, XpuMode, XpuStats, listWindows, readStats } from '../xpu/window';

function human(n: number): string {
  const units = ['', 'K', 'M', 'G', 'T'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return i === 0 ? String(n) : `${n.toFixed(1)}${units[i]}`;
}

export function formatStats(all: XpuStats[]): string {
  if (all.length === 0) return 'no XPU links on this machine\n';
  const lines: string[] = [];
  for (const s of all) {
    const side = (name: string, x: XpuStats['host']) =>
      `  ${name.padEnd(4)} ${x.state.padEnd(8)} ${x.alive ? 'alive' : 'dead '} pid ${String(x.pid).padEnd(7)} ` +
      `${x.mode.padEnd(7)} ${x.tap || '-'} in ${x.netns || '-'} (link downs ${x.linkDowns})`;
    lines.push(`${s.path}: link ${s.linkUp ? 'up' : 'down'}, ring ${s.ringBytes / 1024} KiB x 2`);
    lines.push(side('host', s.host));
    lines.push(side('dpu', s.dpu));
    lines.push('  direction  frames    bytes     drops  wakeups  sleeps   spins    tap-err  full');
    const dir = (name: string, d: XpuStats['hostToDpu']) =>
      `  ${name.padEnd(10)} ${human(d.frames).padEnd(9)} ${human(d.bytes).padEnd(9)} ${human(d.drops).padEnd(6)} ` +
      `${human(d.wakeups).padEnd(8)} ${human(d.sleeps).padEnd(8)} ${human(d.spins).padEnd(8)} ` +
      `${human(d.tapErrors).padEnd(8)} ${human(d.fullWaits)}`;
    lines.push(dir('host->dpu', s.hostToDpu));
    lines.push(dir('dpu->host', s.dpuToHost));
  }
  return lines.join('\n') + '\n';
}

export function registerXpuCommands(program: Command): void {
  const xpu = program.command('xpu').description('the XPU transport: shared-memory links between network namespaces');

  xpu
    .command('stats')
    .description('list every XPU link on this machine with its statistics')
    .option('--json', 'print JSON')
    .action((opts: { json?: boolean }) => {
      const all: XpuStats[] = [];
      for (const file of listWindows()) {
        try {
          all.push(readStats(file));
        } catch (err) {
          process.stderr.write(`heteropod: skipping ${file}: ${err instanceof Error ? err.message : String(err)}\n`);
        }
      }
      process.stdout.write(opts.json ? JSON.stringify(all, null, 2) + '\n' : formatStats(all));
    });

  xpu
    .command('link')
    .description('join two network namespaces (names under /run/netns or paths) with an XPU link until interrupted')
    .argument('<netns-a>', 'host half')
    .argument('<netns-b>', 'DPU half (its end runs in a separate process)')
    .addOption(new Option('--mode <mode>', 'notification mode').choices([...MODES]).default('elastic'))
    .option('--tap <name>', 'TAP device name in both namespaces', DEFAULT_TAP)
    .option('--addr-a <cidr>', 'address of the device in netns-a', HOST_ADDR)
    .option('--addr-b <cidr>', 'address of the device in netns-b', DPU_ADDR)
    .option('--no-addr', 'leave both devices without an address')
    .option('--ring <bytes>', 'bytes per ring (a power of two, 256 KiB to 64 MiB)', (v) => Number.parseInt(v, 10))
    .action(async (a: string, b: string, opts: { mode: XpuMode; tap: string; addrA: string; addrB: string; addr: boolean; ring?: number }) => {
      if (opts.ring !== undefined && !Number.isFinite(opts.ring)) throw new Error('--ring needs a number of bytes');
      const link = await startLink(a, b, {
        mode: opts.mode,
        tap: opts.tap,
        hostAddr: opts.addr ? opts.addrA : null,
        dpuAddr: opts.addr ? opts.addrB : null,
        ringBytes: opts.ring,
      });
      process.stdout.write(
        `xpu link up: ${a} ${opts.tap}${opts.addr ? ' ' + opts.addrA : ''} <-> ${b} ${opts.tap}${opts.addr ? ' ' + opts.addrB : ''}` +
          ` (mode ${opts.mode}, window ${link.windowPath}, DPU end pid ${link.child.pid})\n`,
      );
      await new Promise<void>((resolve, reject) => {
        let stopping = false;
        const stop = (why: string, err?: Error) => {
          if (stopping) return;
          stopping = true;
          process.stdout.write(`xpu link: ${why}, closing\n`);
          link.stop().then(() => (err ? reject(err) : resolve()), reject);
        };
        process.once('SIGINT', () => stop('interrupted'));
        process.once('SIGTERM', () => stop('terminated'));
        link.peerExit.then(({ code, signal }) => {
          stop('DPU end exited', new Error(`DPU end of the link exited unexpectedly (${signal ?? `code ${code}`})`));
        });
      });
    });
}
