// The host end of an offloaded process's stdio: containerd's fifos on the host,
// joined to the agent's Output and Input streams.
//
// Output: the shim writes containerd's stdout/stderr fifos, holding a read end of
// each as runc's shim does, so a write never fails while containerd is away (a
// restart): the pipe fills, the shim stops reading the agent's stream, the agent
// stops reading the DPU's fifo, and the process waits — nothing is dropped. A
// stream that breaks (the agent restarting) is opened again; the agent keeps what
// it read meanwhile. Each stream's end on the DPU closes the host fifo, which is
// containerd's end-of-file.
//
// Input: containerd's stdin fifo is opened read-write, so it never reads as ended;
// CloseIO ends input: what was read goes first, then the agent closes the DPU side.
import * as fs from 'node:fs';
import * as net from 'node:net';
import type { AgentReadStream, AgentWriteStream, DpuAgentClient, DpuAgentError } from '../agentapi/client';
import { Code } from '../common/status';
import type { InputChunk, OutputChunkMessage } from '../agentapi/proto';
import type { Logger } from '../common/log';

export interface StdioPaths {
  stdin: string;
  stdout: string;
  stderr: string;
}

const RETRY_MS = 500;

function openWriter(path: string): { socket: net.Socket; keep: number } {
  const keep = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  try {
    const fd = fs.openSync(path, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    return { socket: new net.Socket({ fd, readable: false, writable: true }), keep };
  } catch (err) {
    fs.closeSync(keep);
    throw err;
  }
}

export class HostStdio {
  // `ended`: the DPU side ended; `flushed`: everything is in containerd's fifo.
  private readonly writers: Partial<Record<'STDOUT' | 'STDERR', { socket: net.Socket; keep: number; ended: boolean; flushed: boolean }>> = {};
  private stdin: net.Socket | null = null;
  private input: AgentWriteStream<InputChunk> | null = null;
  private inputDone: Promise<void> = Promise.resolve();
  private output: AgentReadStream<OutputChunkMessage> | null = null;
  private closed = false;
  // Output chunks: the last received, the last acknowledged to the agent, the last to acknowledge.
  private generation = 0;
  private received = 0;
  private acked = 0;
  private toAck = 0;
  private acking = false;
  /** Resolves when both output streams have ended and all of it is in containerd's fifos. */
  readonly done: Promise<void>;
  private resolveDone!: () => void;

  constructor(
    private readonly client: () => DpuAgentClient,
    private readonly ref: { pod_id: string; container_id: string; exec_id: string },
    private readonly paths: StdioPaths,
    private readonly log: Logger,
  ) {
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
  }

  start(): void {
    try {
      if (this.paths.stdout) this.writers.STDOUT = { ...openWriter(this.paths.stdout), ended: false, flushed: false };
      if (this.paths.stderr) this.writers.STDERR = { ...openWriter(this.paths.stderr), ended: false, flushed: false };
      for (const w of Object.values(this.writers)) w.socket.on('error', (err) => this.log.warn('write to containerd stdio', { error: err.message }));
      if (this.paths.stdin) {
        const fd = fs.openSync(this.paths.stdin, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
        this.stdin = new net.Socket({ fd, readable: true, writable: false });
        this.stdin.on('data', (data: Buffer) => this.sendInput(data));
        this.stdin.on('error', () => undefined);
      }
    } catch (err) {
      this.close();
      throw new Error(`open containerd's stdio fifos: ${(err as Error).message}`);
    }
    this.checkDone();
    if (Object.keys(this.writers).length) this.follow();
  }

  private follow(): void {
    if (this.closed) return;
    const stream = this.client().serverStream<OutputChunkMessage>('Output', this.ref);
    this.output = stream;
    stream.on('data', (chunk: OutputChunkMessage) => {
      const seq = Number(chunk.seq);
      // A restarted agent numbers its chunks anew.
      if (Number(chunk.generation) !== this.generation) {
        this.generation = Number(chunk.generation);
        this.received = this.acked = this.toAck = 0;
      }
      // Sent again after a stream broke (AckOutput had not reached the agent): written already.
      if (seq <= this.received) return;
      this.received = seq;
      const w = this.writers[chunk.stream];
      if (!w || w.ended) return this.written(seq);
      if (chunk.data.length && !w.socket.write(chunk.data, () => this.written(seq))) {
        stream.pause();
        w.socket.once('drain', () => stream.resume());
      }
      if (chunk.eof) this.endWriter(w, () => this.written(seq));
      else if (!chunk.data.length) this.written(seq);
    });
    // A stream ends well only with status OK: containerd's fifos end only after
    // 'end', which comes once chunks held back by a pause (containerd reading
    // slowly) are delivered. A stream that fails must not end them.
    let ok = false;
    stream.on('status', (status: { code: Code }) => {
      ok = status.code === Code.OK;
    });
    stream.on('end', () => {
      if (ok && this.output === stream) this.endAll();
    });
    stream.on('error', (err: DpuAgentError) => {
      if (this.closed) return;
      // NOT_FOUND: the agent has no such process (any more); nothing more will come.
      if (err.code === Code.NOT_FOUND) {
        this.endAll();
        return;
      }
      this.log.debug('output stream broken; reopening', { container: this.ref.container_id, exec: this.ref.exec_id, error: err.message });
      setTimeout(() => this.follow(), RETRY_MS).unref();
    });
  }

  private endWriter(w: { socket: net.Socket; ended: boolean; flushed: boolean }, then?: () => void): void {
    if (w.ended) return;
    w.ended = true;
    w.socket.end(() => {
      w.flushed = true;
      then?.();
      this.checkDone();
    });
  }

  /**
   * Chunk `seq` is in containerd's fifo: the agent may let go of it and those
   * before (one AckOutput at a time, the latest seq each time). Until then it
   * keeps them, for a node daemon that restarts.
   */
  private written(seq: number): void {
    if (seq <= this.acked) return;
    this.toAck = Math.max(this.toAck, seq);
    if (this.acking || this.closed) return;
    const seqNow = this.toAck;
    const generation = this.generation;
    this.acking = true;
    this.client()
      .call('AckOutput', { ...this.ref, seq: seqNow, generation })
      .then(
        () => {
          if (generation === this.generation) this.acked = Math.max(this.acked, seqNow);
        },
        (err: Error) => this.log.debug('acknowledge output', { container: this.ref.container_id, exec: this.ref.exec_id, error: err.message }),
      )
      .finally(() => {
        this.acking = false;
        if (this.toAck > this.acked && !this.closed) setTimeout(() => this.written(this.toAck), this.toAck > seqNow ? 0 : RETRY_MS).unref();
      });
  }

  private endAll(): void {
    for (const w of Object.values(this.writers)) this.endWriter(w);
  }

  private checkDone(): void {
    if (Object.values(this.writers).every((w) => w.flushed)) this.resolveDone();
  }

  private sendInput(data: Buffer): void {
    if (!this.input) {
      this.inputDone = new Promise((resolve) => {
        this.input = this.client().clientStream<InputChunk, object>('Input', (err) => {
          if (err) this.log.warn('stdin to the DPU', { container: this.ref.container_id, error: err.message });
          resolve();
        });
      });
      this.input!.write({ ...this.ref, data: Buffer.alloc(0) });
    }
    this.input!.write({ ...this.ref, data });
  }

  /** CloseIO(stdin): everything read so far reaches the DPU before input ends there. */
  async closeStdin(): Promise<void> {
    const stdin = this.stdin;
    this.stdin = null;
    if (stdin) {
      // Data already in the fifo arrives as 'data' before this turn ends.
      await new Promise((r) => setImmediate(r));
      stdin.destroy();
    }
    const input = this.input;
    this.input = null;
    if (input) {
      input.end();
      await this.inputDone;
    }
  }

  close(): void {
    this.closed = true;
    this.output?.cancel();
    this.input?.end();
    this.stdin?.destroy();
    for (const w of Object.values(this.writers)) {
      w.socket.destroy();
      fs.closeSync(w.keep);
    }
    this.resolveDone();
  }
}
