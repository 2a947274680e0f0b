// A process that owns one end of one or more XPU links, as the DPU agent will:
//   node dist/src/xpu/port-process.js WINDOW SIDE NETNS_PATH TAP MODE [WINDOW SIDE NETNS_PATH TAP MODE ...]
// It attaches each window, opens its port, prints "ready" once all are open, and
// closes everything on SIGINT/SIGTERM or when its standard input closes (the
// parent that started it is gone).
import { XpuMode, XpuSide, XpuWindow } from './window';

function main(argv: string[]): void {
  if (argv.length === 0 || argv.length % 5 !== 0) {
    process.stderr.write('usage: port-process WINDOW SIDE NETNS_PATH TAP MODE [...]\n');
    process.exit(2);
  }
  const windows: XpuWindow[] = [];
  const closeAll = () => {
    for (const w of windows.splice(0)) w.close();
  };
  try {
    for (let i = 0; i < argv.length; i += 5) {
      const [file, side, netns, tap, mode] = argv.slice(i, i + 5);
      const w = XpuWindow.attach(file);
      windows.push(w);
      w.openPort(side as XpuSide, netns, tap, mode as XpuMode);
    }
  } catch (err) {
    closeAll();
    process.stderr.write(`xpu port: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  }
  let done = false;
  const shutdown = (code: number) => {
    if (done) return;
    done = true;
    closeAll();
    process.exit(code);
  };
  process.on('SIGINT', () => shutdown(0));
  process.on('SIGTERM', () => shutdown(0));
  process.stdin.on('end', () => shutdown(0));
  process.stdin.on('error', () => shutdown(0));
  process.stdin.resume();
  process.stdout.write('ready\n');
}

main(process.argv.slice(2));
