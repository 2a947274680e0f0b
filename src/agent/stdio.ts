// A DPU process's stdio, as the agent holds it: fifos the agent makes (as
// containerd does on the host) and the DPU's runc shim opens. Output is read as it
// comes and handed to the one Output stream the host has open, or held until one
// opens; input from the host's Input stream is written to the stdin fifo.
//
// Fifo rules this file relies on:
// - the agent opens the read end with O_NONBLOCK, which never waits for a writer;
//   until runc's shim has opened its write end, the agent holds a write end of its
//   own ("placeholder"), or the first read would see end-of-file;
// - runc's shim keeps a read end of each output fifo open itself, so the process
//   never gets EPIPE while the agent is down (a restarted agent reopens the fifo
//   and reads on); what it writes meanwhile waits in the pipe;
// - but only while the process runs: once it has exited, runc's shim closes its
//   ends, and a pipe nobody has open loses what it holds. The pod's fifo keeper
//   (fifo-keeper.ts) holds a read end of each output fifo from before runc's
//   shim opens it until the agent has read it to end-of-file, so what a process
//   wrote before it exited waits for the next agent. It never reads, and a reader
//   never delays another's end-of-file, which depends on writers only;
// - a fifo that runc's shim has opened (`fresh` false: reopened after an agent
//   restart) gets no placeholder: its writers are runc's shim's, or gone, and a
//   reader of a fifo whose writers are gone must see what is buffered, then
//   end-of-file (OutputFifo says how the kernel is made to tell it so);
// - stdin is opened read-write: a writer that never sees "no reader" and that
//   CloseIO closes, which is the end of input for runc's shim.
import * as fs from 'node:fs';
import * as net from 'node:net';
import { mknodDevice } from '../common/linux-fs';

export type StreamName = 'stdout' | 'stderr';

export interface OutputChunk {
  stream: StreamName;
  data: Buffer;
  eof: boolean;
}

/** A chunk with its place in the process's output (from 1). */
export interface NumberedChunk extends OutputChunk {
  seq: number;
}

/**
 * This agent's numbering of output chunks: a restarted agent reads the same
 * fifos from its own first chunk on, so its numbers mean nothing to the chunks
 * an earlier agent sent (milliseconds since the epoch at start: always larger).
 */
export const OUTPUT_GENERATION = Date.now();

export type OutputSink = (chunk: NumberedChunk) => boolean; // false: the sink is full, wait for resume()

// Held back past this much undelivered output: the process then waits on its pipe.
const HIGH_WATER = 1 << 20;

// mknod(2), not a mkfifo process: on the DPU's one core a fork and exec costs
// milliseconds of every container's start.
export function makeFifo(path: string): void {
  fs.rmSync(path, { force: true });
  mknodDevice(path, 'fifo', 0o600);
  fs.chmodSync(path, 0o600); // exactly, whatever the umask
}

class OutputFifo {
  private socket: net.Socket | null = null;
  private placeholder = -1;

  constructor(readonly name: StreamName, readonly path: string, owner: ProcessOutput, fresh: boolean) {
    const fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    if (fresh) this.placeholder = fs.openSync(path, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    // Reopened: a reader that opened while no writer was left is told of no
    // hang-up until it has seen a writer (the kernel's rule for O_NONBLOCK
    // readers), so it would wait for ever for the end of a process that exited
    // meanwhile. A write end opened and closed at once is that writer.
    else fs.closeSync(fs.openSync(path, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK));
    const socket = new net.Socket({ fd, readable: true, writable: false });
    socket.on('data', (data: Buffer) => owner.push({ stream: name, data, eof: false }));
    socket.on('end', () => owner.push({ stream: name, data: Buffer.alloc(0), eof: true }));
    socket.on('error', () => owner.push({ stream: name, data: Buffer.alloc(0), eof: true }));
    this.socket = socket;
  }

  // runc's shim has its write end now: end-of-file is up to it from here on.
  releasePlaceholder(): void {
    if (this.placeholder >= 0) fs.closeSync(this.placeholder);
    this.placeholder = -1;
  }

  pause(): void {
    this.socket?.pause();
  }

  resume(): void {
    this.socket?.resume();
  }

  close(): void {
    this.releasePlaceholder();
    this.socket?.destroy();
    this.socket = null;
  }
}

/**
 * A process's output between its fifos and the host. Every chunk is numbered;
 * one handed to the host stays here until the host acknowledges it (ack), so a
 * host that restarts gets again what it had not written out yet: nothing is lost
 * (what it wrote but had not acknowledged comes twice).
 */
export class ProcessOutput {
  private readonly fifos: OutputFifo[] = [];
  private pending: NumberedChunk[] = [];
  private pendingBytes = 0;
  // handed to the host, not yet acknowledged
  private unacked: NumberedChunk[] = [];
  private unackedBytes = 0;
  private seq = 0;
  private sink: OutputSink | null = null;
  private onFinished: (() => void) | null = null;
  private ended = 0;

  // `fresh`: runc's shim has not opened the fifos yet (they were just made, or
  // reopened after an agent restart before runc's shim opened them).
  constructor(paths: { stdout?: string; stderr?: string }, fresh: boolean) {
    if (paths.stdout) this.fifos.push(new OutputFifo('stdout', paths.stdout, this, fresh));
    if (paths.stderr) this.fifos.push(new OutputFifo('stderr', paths.stderr, this, fresh));
  }

  /** The fifos read here (what the pod's fifo keeper holds for this process). */
  get fifoPaths(): string[] {
    return this.fifos.map((f) => f.path);
  }

  /** Every stream ended, and all of it acknowledged by the host. */
  get finished(): boolean {
    return this.ended === this.fifos.length && this.pending.length === 0 && this.unacked.length === 0;
  }

  releasePlaceholders(): void {
    for (const f of this.fifos) f.releasePlaceholder();
  }

  push(chunk: OutputChunk): void {
    if (chunk.eof) this.ended++;
    const numbered = { ...chunk, seq: ++this.seq };
    if (this.sink && this.pending.length === 0) {
      if (!this.deliver(this.sink, numbered)) this.pauseAll();
      return;
    }
    this.pending.push(numbered);
    this.pendingBytes += chunk.data.length;
    if (this.pendingBytes > HIGH_WATER) this.pauseAll();
  }

  private deliver(sink: OutputSink, chunk: NumberedChunk): boolean {
    this.unacked.push(chunk);
    this.unackedBytes += chunk.data.length;
    return sink(chunk) && this.unackedBytes <= HIGH_WATER;
  }

  /**
   * Attaches the one consumer (a newer one replaces an older): what an earlier
   * one did not acknowledge goes first, then what is held. `finished` is told
   * once the output has ended and is all acknowledged.
   */
  attach(sink: OutputSink, finished: () => void = () => {}): void {
    this.sink = sink;
    this.onFinished = finished;
    const again = this.unacked;
    this.unacked = [];
    this.unackedBytes = 0;
    this.pending = [...again, ...this.pending];
    this.pendingBytes += again.reduce((n, c) => n + c.data.length, 0);
    this.flush();
    if (this.finished) finished();
  }

  detach(sink: OutputSink): void {
    if (this.sink === sink) {
      this.sink = null;
      this.onFinished = null;
    }
  }

  /** The host has written out every chunk up to `seq`. */
  ack(seq: number): void {
    let n = 0;
    while (n < this.unacked.length && this.unacked[n].seq <= seq) this.unackedBytes -= this.unacked[n++].data.length;
    if (n === 0) return;
    this.unacked.splice(0, n);
    if (this.finished) this.onFinished?.();
    else this.flush();
  }

  /** The consumer has room again. */
  flush(): void {
    const sink = this.sink;
    if (!sink) return;
    while (this.pending.length > 0) {
      const chunk = this.pending.shift()!;
      this.pendingBytes -= chunk.data.length;
      if (!this.deliver(sink, chunk)) return this.pauseAll();
    }
    if (this.unackedBytes <= HIGH_WATER) for (const f of this.fifos) f.resume();
  }

  close(): void {
    for (const f of this.fifos) f.close();
    this.sink = null;
    this.onFinished = null;
    this.pending = [];
    this.unacked = [];
  }

  private pauseAll(): void {
    for (const f of this.fifos) f.pause();
  }
}

export class ProcessInput {
  private socket: net.Socket | null;

  constructor(readonly path: string) {
    const fd = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    this.socket = new net.Socket({ fd, readable: false, writable: true });
    this.socket.on('error', () => this.close());
  }

  get closed(): boolean {
    return this.socket === null;
  }

  write(data: Buffer): Promise<void> {
    const socket = this.socket;
    if (!socket) return Promise.reject(new Error('stdin is closed'));
    return new Promise((resolve, reject) => socket.write(data, (err) => (err ? reject(err) : resolve())));
  }

  /** Ends input: what was written is flushed first. */
  async end(): Promise<void> {
    const socket = this.socket;
    if (!socket) return;
    this.socket = null;
    await new Promise<void>((resolve) => {
      if (socket.writableLength === 0) return resolve();
      socket.once('drain', () => resolve());
      socket.once('error', () => resolve());
    });
    socket.destroy();
  }

  close(): void {
    this.socket?.destroy();
    this.socket = null;
  }
}
