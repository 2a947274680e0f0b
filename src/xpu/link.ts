// A link between two network namespaces on this machine, its two ends in two
// processes as in production: the host end in this process (as in the shim), the
// DPU end in a child process (as in the agent). Used by `heteropod xpu link`,
// the end-to-end tests and the benchmark.
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { WINDOW_DIR, XpuMode, XpuPort, XpuWindow, readStats, removeWindow, windowPath } from './window';

export const DEFAULT_TAP = 'xpu0';
export const HOST_ADDR = '169.254.77.1/30';
export const DPU_ADDR = '169.254.77.2/30';

export interface LinkOptions {
  mode?: XpuMode;
  tap?: string;
  hostAddr?: string | null; // null: leave the device without an address
  dpuAddr?: string | null;
  ringBytes?: number;
  windowName?: string;
}

/** A namespace given by name (/run/netns/NAME, as `ip netns` makes) or by path. */
export function netnsPath(arg: string): string {
  const p = arg.includes('/') ? arg : path.join('/run/netns', arg);
  if (!fs.existsSync(p)) throw new Error(`network namespace ${arg} does not exist (${p})`);
  return p;
}

function nsBase(p: string): string {
  return path.basename(p).replace(/[^A-Za-z0-9_.-]/g, '_');
}

export function addAddress(ns: string, dev: string, cidr: string): void {
  try {
    execFileSync('nsenter', [`--net=${ns}`, 'ip', 'addr', 'add', cidr, 'dev', dev], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
    throw new Error(`add address ${cidr} to ${dev} in ${ns}: ${stderr || String(err)}`);
  }
}

/** Remove a window left by a link whose processes are all gone. */
function removeStaleWindow(file: string): void {
  if (!fs.existsSync(file)) return;
  let stale = false;
  try {
    const s = readStats(file);
    stale = !s.host.alive && !s.dpu.alive;
  } catch {
    stale = false;
  }
  if (!stale) throw new Error(`XPU window ${file} already exists and is in use (another link between these namespaces?)`);
  removeWindow(file);
}

export class RunningLink {
  private stopped = false;
  /** Settles when the DPU-end process exits, with its exit code or signal. */
  readonly peerExit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(
    readonly window: XpuWindow,
    readonly hostPort: XpuPort,
    readonly child: ChildProcess,
    readonly hostNetns: string,
    readonly dpuNetns: string,
    readonly mode: XpuMode,
  ) {
    this.peerExit = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  }

  get windowPath(): string {
    return this.window.path;
  }

  /** Close both ends and remove the window. Idempotent; never waits long on the child. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    try {
      this.hostPort.close();
    } finally {
      this.window.close();
      if (this.child.exitCode === null && this.child.signalCode === null) {
        this.child.kill('SIGTERM');
        const timer = setTimeout(() => this.child.kill('SIGKILL'), 3000);
        await this.peerExit;
        clearTimeout(timer);
      }
      removeWindow(this.window.path);
    }
  }
}

/** Start a link: window, host end here, DPU end in a child process, addresses. */
export async function startLink(nsA: string, nsB: string, opts: LinkOptions = {}): Promise<RunningLink> {
  const hostNs = netnsPath(nsA);
  const dpuNs = netnsPath(nsB);
  const mode = opts.mode ?? 'elastic';
  const tap = opts.tap ?? DEFAULT_TAP;
  const file = windowPath(opts.windowName ?? `link-${nsBase(hostNs)}-${nsBase(dpuNs)}`);
  fs.mkdirSync(WINDOW_DIR, { recursive: true, mode: 0o700 });
  removeStaleWindow(file);

  // Clean-up stack: undone in reverse order if any later step fails.
  const undo: Array<() => void | Promise<void>> = [];
  try {
    const window = XpuWindow.create(file, { ringBytes: opts.ringBytes });
    undo.push(() => removeWindow(file));
    undo.push(() => window.close());
    const hostPort = window.openPort('host', hostNs, tap, mode);
    undo.push(() => hostPort.close());

    // A served host end is served by the DPU end, which waits as elastic does.
    const dpuMode = mode === 'served' ? 'elastic' : mode;
    const child = spawn(process.execPath, [path.join(__dirname, 'port-process.js'), file, 'dpu', dpuNs, tap, dpuMode], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    undo.push(async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await new Promise((r) => child.once('exit', r));
      }
    });
    await new Promise<void>((resolve, reject) => {
      let out = '';
      let err = '';
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('ready\n')) resolve();
      });
      child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      child.once('exit', (code, signal) =>
        reject(new Error(err.trim().replace(/^xpu port: /, '') || `DPU end exited (${code ?? signal}) before it was ready`)),
      );
      child.once('error', reject);
    });
    child.stderr!.on('data', (d: Buffer) => process.stderr.write(d));

    if (opts.hostAddr !== null) addAddress(hostNs, tap, opts.hostAddr ?? HOST_ADDR);
    if (opts.dpuAddr !== null) addAddress(dpuNs, tap, opts.dpuAddr ?? DPU_ADDR);
    if (!(await hostPort.waitUp(5000))) throw new Error(`XPU link ${file} did not come up within 5 s`);
    return new RunningLink(window, hostPort, child, hostNs, dpuNs, mode);
  } catch (err) {
    for (const step of undo.reverse()) {
      try {
        await step();
      } catch {
        // keep undoing; the first error is the one reported
      }
    }
    throw err;
  }
}
