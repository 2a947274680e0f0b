// The host end of an offloaded process's output (src/shim/stdio-relay.ts) against
// a stand-in for the agent's Output stream, into real fifos that a slow reader
// drains. The stand-in ends a server stream the least kind way: the
// end is pushed and 'status' emitted at once, while chunks held back by a pause
// are still buffered. Everything must reach the fifo before its end-of-file.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { DpuAgentClient } from '../../src/agentapi/client';
import type { OutputChunkMessage } from '../../src/agentapi/proto';
import { Logger, StderrSink } from '../../src/common/log';
import { HostStdio } from '../../src/shim/stdio-relay';

const log = new Logger(new StderrSink(), false, { test: 'stdio-relay' });

/** A server stream that delivers `chunks`, then ends with `code`, 'status' before what a pause holds back. */
function outputStream(chunks: OutputChunkMessage[], code: number): Readable {
  const stream = new Readable({ objectMode: true, read() {} });
  setImmediate(() => {
    for (const c of chunks) stream.push(c);
    stream.push(null);
    if (code !== 0) stream.emit('error', Object.assign(new Error(`status ${code}`), { code }));
    stream.emit('status', { code, details: '', metadata: null });
  });
  (stream as unknown as { cancel: () => void }).cancel = () => stream.destroy();
  return stream;
}

/** The agent's Output streams in turn; AckOutput calls recorded (their seq). */
function fakeClient(streams: Readable[], acks: number[] = []): () => DpuAgentClient {
  return () =>
    ({
      serverStream: () => streams.shift(),
      call: async (method: string, req: { seq: number }) => {
        if (method === 'AckOutput') acks.push(req.seq);
        return {};
      },
    }) as unknown as DpuAgentClient;
}

/** Reads a fifo slowly (a pause after each read) until end-of-file; what it read. */
function slowReader(file: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    const rs = fs.createReadStream(file, { highWaterMark: 4096 });
    rs.on('data', (d: string | Buffer) => {
      parts.push(Buffer.from(d));
      rs.pause();
      setTimeout(() => rs.resume(), 1);
    });
    rs.on('end', () => resolve(Buffer.concat(parts)));
    rs.on('error', reject);
  });
}

function fifoDir(): { dir: string; stdout: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-stdio-'));
  const stdout = path.join(dir, 'stdout');
  execFileSync('mkfifo', [stdout]);
  return { dir, stdout };
}

test('output held back by a slow reader all arrives before end-of-file, after an OK status', async () => {
  const { dir, stdout } = fifoDir();
  try {
    const line = (i: number) => `${i}\n`;
    const chunks: OutputChunkMessage[] = [];
    let want = '';
    // 2,000 chunks of ~1 KiB: far more than a pipe holds, so the relay must pause.
    for (let i = 0; i < 2000; i++) {
      const text = Array.from({ length: 200 }, (_, j) => line(i * 200 + j)).join('');
      want += text;
      chunks.push({ stream: 'STDOUT', data: Buffer.from(text), eof: false, seq: i + 1, generation: 7 });
    }
    const reading = slowReader(stdout);
    const acks: number[] = [];
    const relay = new HostStdio(fakeClient([outputStream(chunks, 0)], acks), { pod_id: 'p', container_id: 'c', exec_id: 'e' }, { stdin: '', stdout, stderr: '' }, log);
    relay.start();
    const got = (await reading).toString();
    await relay.done;
    assert.is(got.length, want.length, 'every byte reached the fifo');
    assert.ok(got === want, 'in order');
    // Acknowledged as written, one call at a time, up to the last chunk.
    await new Promise((r) => setTimeout(r, 50));
    assert.is(acks[acks.length - 1], 2000);
    assert.equal([...acks].sort((a, b) => a - b), acks, 'acknowledgements only go forward');
    relay.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a stream that breaks is opened again: what comes again is not written twice; end-of-file only from the next one', async () => {
  const { dir, stdout } = fifoDir();
  try {
    const chunk = (seq: number, text: string, eof = false, generation = 7) => ({ stream: 'STDOUT', data: Buffer.from(text), eof, seq, generation }) as OutputChunkMessage;
    const reading = slowReader(stdout);
    const UNAVAILABLE = 14;
    const acks: number[] = [];
    // The agent sends chunk 1 again: its acknowledgement had not arrived when the stream broke.
    const relay = new HostStdio(
      fakeClient([outputStream([chunk(1, 'one\n')], UNAVAILABLE), outputStream([chunk(1, 'one\n'), chunk(2, 'two\n'), chunk(3, '', true)], 0)], acks),
      { pod_id: 'p', container_id: 'c', exec_id: 'e' },
      { stdin: '', stdout, stderr: '' },
      log,
    );
    relay.start();
    assert.is((await reading).toString(), 'one\ntwo\n');
    await relay.done;
    await new Promise((r) => setTimeout(r, 50));
    assert.is(acks[acks.length - 1], 3, 'the end acknowledged');
    relay.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a restarted agent numbers its chunks anew: they are written, not taken for ones sent again', async () => {
  const { dir, stdout } = fifoDir();
  try {
    const chunk = (seq: number, text: string, generation: number, eof = false) => ({ stream: 'STDOUT', data: Buffer.from(text), eof, seq, generation }) as OutputChunkMessage;
    const reading = slowReader(stdout);
    const UNAVAILABLE = 14;
    const relay = new HostStdio(
      fakeClient([outputStream([chunk(1, 'started\n', 7), chunk(2, 'more\n', 7)], UNAVAILABLE), outputStream([chunk(1, 'finishing\n', 8), chunk(2, '', 8, true)], 0)]),
      { pod_id: 'p', container_id: 'c', exec_id: '' },
      { stdin: '', stdout, stderr: '' },
      log,
    );
    relay.start();
    assert.is((await reading).toString(), 'started\nmore\nfinishing\n');
    await relay.done;
    relay.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
