// A DPU pod's fifo keeper as the agent drives it: the small process of
// fifo-keeper.c that holds a read end of each of the pod's output fifos, so that
// a process that exits while the agent is down keeps its last output for the
// next agent (stdio.ts says why the pipe would lose it otherwise).
//
// Contract:
// - one keeper per pod, in a session of its own and nobody's child (it outlives the
//   agent) when the pod is made, or by the first hold that finds none; the pod's
//   record names it (pid and socket), and a restarted agent reconnects to it;
// - it holds a process's output fifos while the agent has that process's output
//   (stdio.ts ProcessOutput): from before runc's shim opens them (hold, awaited
//   before Create and Exec) until the output has been read to end-of-file and
//   acknowledged by the host, or the process is deleted (drop);
// - a keeper found or started anew is told every fifo held; one lost while the
//   pod lives is found or started again after a pause, so a keeper that dies at
//   once costs one start a second, not a loop;
// - a drop while no keeper is connected is not sent: the fifo is empty by then
//   (read to end-of-file) or its process deleted, and the keeper lets a fifo go
//   by itself once its path has gone;
// - it ends with the pod (stop): killed, its socket removed, nothing left.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import type { Logger } from '../common/log';
import { OneConnection } from '../common/sockets';
import { runProgram } from '../xpu/run-program';

/** What the pod's record says of its keeper. */
export interface KeeperRecord {
  pid: number;
  socket: string;
}

export interface FifoKeeperOptions {
  binary: string;
  /** Where a keeper started from here listens. */
  socket: string;
  podId: string;
  log: Logger;
  /** A keeper was started: the pod's record must name it from now on. */
  onStarted(record: KeeperRecord): void;
}

export const FIFO_KEEPER_NAME = 'heteropod-fifo-keeper';
const RESTART_DELAY_MS = 1000;
const EXIT_TIMEOUT_MS = 2000;

/**
 * Where a pod's keeper listens: in the agent's run dir, a short path (a unix
 * socket's is at most 107 bytes; a pod's directory with a 64-character id comes
 * close). Named by the pod id's first 12 characters, as the pod's netns is.
 */
export function fifoKeeperSocket(runDir: string, podId: string): string {
  return path.join(runDir, `fifo-keeper-${podId.slice(0, 12)}.sock`);
}

/** A keeper's socket among the run dir's files (the test bed's leak check). */
export const FIFO_KEEPER_SOCKET = /^fifo-keeper-.+\.sock$/;

/** build/heteropod-fifo-keeper of this checkout. */
export function fifoKeeperBinary(): string {
  // dist/src/agent/fifo-keeper.js -> <root>/build/heteropod-fifo-keeper
  return path.resolve(__dirname, '..', '..', '..', 'build', FIFO_KEEPER_NAME);
}

/** Whether `pid` is the keeper listening on `socket` (and not a process that took its pid since). */
export function isFifoKeeper(pid: number, socket: string): boolean {
  if (!(pid > 0)) return false;
  try {
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return path.basename(argv[0]).startsWith(FIFO_KEEPER_NAME) && argv[1] === socket;
  } catch {
    return false;
  }
}

// Gone, or a zombie: it holds nothing any more.
function exited(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

/** One connection to a keeper: requests are lines, answered in order by "ok" or "error <what>". */
class KeeperConnection {
  private waiting: Array<{ line: string; resolve: () => void; reject: (err: Error) => void }> = [];
  private rest = '';
  closed = false;

  static open(socketPath: string, onClose: (conn: KeeperConnection, err: Error) => void): Promise<KeeperConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(socketPath);
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new KeeperConnection(socket, onClose));
      });
    });
  }

  private constructor(private readonly socket: net.Socket, private readonly onClose: (conn: KeeperConnection, err: Error) => void) {
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => this.read(text));
    socket.on('error', (err) => this.end(err));
    socket.on('close', () => this.end(new Error('the keeper closed the connection')));
  }

  request(line: string): Promise<void> {
    if (this.closed) return Promise.reject(new Error(`${line}: not connected to the keeper`));
    return new Promise((resolve, reject) => {
      this.waiting.push({ line, resolve, reject });
      this.socket.write(`${line}\n`);
    });
  }

  close(): void {
    this.socket.destroy();
    this.end(new Error('closed'));
  }

  private read(text: string): void {
    const lines = (this.rest + text).split('\n');
    this.rest = lines.pop() ?? '';
    for (const answer of lines) {
      const w = this.waiting.shift();
      if (!w) continue; // nothing asks this: the keeper says nothing unasked
      if (answer === 'ok') w.resolve();
      else w.reject(new Error(`${w.line}: ${answer.replace(/^error /, '')}`));
    }
  }

  private end(err: Error): void {
    if (this.closed) return;
    this.closed = true;
    const waiting = this.waiting;
    this.waiting = [];
    for (const w of waiting) w.reject(new Error(`${w.line}: ${err.message}`));
    this.onClose(this, err);
  }
}

/** Starts a keeper (in a session of its own, nobody's child); resolved once it listens ("ready PID"). */
async function startKeeper(binary: string, socket: string, podId: string): Promise<KeeperRecord> {
  // libxpu starts it, not node's child_process: no fork of the agent on a pod's start.
  const said = (await runProgram([binary, socket, podId], { cwd: '/' }).catch((err: Error) => {
    throw new Error(`start ${binary}: ${err.message}`);
  })).stdout;
  const ready = /^ready (\d+)\n$/.exec(said);
  if (!ready) throw new Error(`start ${binary}: said ${JSON.stringify(said.trim())}, not "ready PID"`);
  return { pid: Number(ready[1]), socket };
}

export class FifoKeeper {
  private readonly held = new Set<string>();
  private readonly conn = new OneConnection<KeeperConnection>();
  private retry: NodeJS.Timeout | null = null;
  // stopped: the pod is going; detached: the keeper is left to a later agent
  private stopped = false;
  private detached = false;

  constructor(private readonly opts: FifoKeeperOptions, private record: KeeperRecord | undefined) {}

  /** The keeper serving the pod, as its record names it; undefined before one was started. */
  get current(): KeeperRecord | undefined {
    return this.record;
  }

  /** Finds the pod's keeper or starts one (the pod was just made: its first Create need not wait). */
  async ready(): Promise<void> {
    await this.connected();
  }

  /** Resolved once the keeper has the fifos open; the ones held are held once. */
  async hold(paths: readonly string[]): Promise<void> {
    if (this.stopped || this.detached) throw new Error(`hold ${paths.join(' ')}: the pod's fifo keeper was let go`);
    for (const p of paths) this.held.add(p);
    const conn = await this.connected();
    await Promise.all(paths.map((p) => conn.request(`hold ${p}`)));
  }

  /** The fifos' output has been read to the end and delivered, or their process is gone. */
  drop(paths: readonly string[]): void {
    for (const p of paths) this.held.delete(p);
    const pending = this.conn.pending();
    if (!pending) return;
    void pending
      .then((conn) => Promise.all(paths.map((p) => conn.request(`drop ${p}`))))
      .catch((err: Error) => this.opts.log.debug('fifo keeper: drop', { error: err.message }));
  }

  /** Ends the keeper, the pod going: no process and no socket left. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.cancelRetry();
    await this.conn.close();
    this.held.clear();
    try {
      if (this.record) await this.kill(this.record);
    } finally {
      for (const socket of new Set([this.opts.socket, this.record?.socket ?? this.opts.socket])) fs.rmSync(socket, { force: true });
    }
  }

  /** Lets go of the keeper and leaves it running, as an agent that exits does. */
  async detach(): Promise<void> {
    this.detached = true;
    this.cancelRetry();
    await this.conn.close();
  }

  private connected(): Promise<KeeperConnection> {
    return this.conn.get(() => this.findOrStart());
  }

  private async findOrStart(): Promise<KeeperConnection> {
    const onClose = (conn: KeeperConnection, err: Error): void => this.lost(conn, err);
    let conn = this.record ? await KeeperConnection.open(this.record.socket, onClose).catch(() => null) : null;
    if (!conn) {
      // A recorded keeper that does not answer must not outlive its successor.
      if (this.record) await this.kill(this.record);
      const started = await startKeeper(this.opts.binary, this.opts.socket, this.opts.podId);
      this.record = started;
      this.opts.onStarted(started);
      this.opts.log.info('fifo keeper started', { pid: started.pid, socket: started.socket });
      conn = await KeeperConnection.open(started.socket, onClose);
    }
    // One found may lack what was held since it was lost; one started has nothing.
    const held = [...this.held];
    const results = await Promise.allSettled(held.map((p) => conn.request(`hold ${p}`)));
    for (const r of results) if (r.status === 'rejected') this.opts.log.warn('fifo keeper: hold', { error: (r.reason as Error).message });
    return conn;
  }

  private lost(conn: KeeperConnection, err: Error): void {
    if (this.conn.current !== conn || this.stopped || this.detached) return;
    this.conn.forget();
    this.opts.log.warn('fifo keeper lost', { pid: this.record?.pid, error: err.message });
    if (this.held.size === 0 || this.retry) return; // the next hold finds or starts one
    this.retry = setTimeout(() => {
      this.retry = null;
      if (this.stopped || this.detached || this.conn.current) return;
      this.connected().catch((e: Error) => this.opts.log.warn('fifo keeper: start again', { error: e.message }));
    }, RESTART_DELAY_MS);
    this.retry.unref();
  }

  private cancelRetry(): void {
    if (this.retry) clearTimeout(this.retry);
    this.retry = null;
  }

  private async kill(record: KeeperRecord): Promise<void> {
    if (!isFifoKeeper(record.pid, record.socket)) return; // gone already
    try {
      process.kill(record.pid, 'SIGKILL');
    } catch {
      return; // gone meanwhile
    }
    for (const end = Date.now() + EXIT_TIMEOUT_MS; !exited(record.pid); ) {
      if (Date.now() > end) throw new Error(`fifo keeper ${record.pid} did not exit after SIGKILL`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}
