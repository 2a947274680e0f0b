// A process that owns one end of an XPU link, as the DPU agent will:
//   node dist/src/xpu/port-process.js WINDOW SIDE NETNS_PATH TAP MODE
// It attaches the window, opens its port, prints "ready" once the port is open,
// and closes everything on SIGINT/SIGTERM or when its standard input closes (the
// parent that started it is gone).
import { XpuMode, XpuSide, XpuWindow } from './window';

function main(argv: string[]): void {
  const [file, side, netns, tap, mode] = argv;
  if (!file || !side || !netns || !tap || !mode) {
    process.stderr.write('usage: port-process WINDOW SIDE NETNS_PATH TAP MODE\n');
    process.exit(2);
  }
  let window: XpuWindow;
  try {
    window = XpuWindow.attach(file);
    window.openPort(side as XpuSide, netns, tap, mode as XpuMode);
  } catch (err) {
    process.stderr.write(`xpu port: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  }
  let done = false;
  const shutdown = (code: number) => {
    if (done) return;
    done = true;
    window.close();
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
