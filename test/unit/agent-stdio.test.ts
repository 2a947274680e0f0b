// The agent's stdio fifos: made by mknod(2) with the mode runc's shim expects,
// replacing whatever a previous container left at the path.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { makeFifo, NumberedChunk, ProcessOutput } from '../../src/agent/stdio';

test('makeFifo makes a 0600 fifo whatever the umask, replacing a file', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-agent-stdio-'));
  const old = process.umask(0o277);
  try {
    const fifo = path.join(dir, 'init-stdout');
    fs.writeFileSync(fifo, 'left over');
    makeFifo(fifo);
    const st = fs.lstatSync(fifo);
    assert.ok(st.isFIFO());
    assert.is(st.mode & 0o7777, 0o600);
    // A reader and a writer meet in it.
    const r = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    const w = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    fs.writeSync(w, 'x');
    const buf = Buffer.alloc(4);
    assert.is(fs.readSync(r, buf, 0, 4, null), 1);
    fs.closeSync(w);
    fs.closeSync(r);
  } finally {
    process.umask(old);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('makeFifo names the path when it cannot make the fifo', () => {
  assert.throws(() => makeFifo('/nonexistent-dir-hp/init-stdout'), /mknod \/nonexistent-dir-hp\/init-stdout.*ENOENT/);
});

const until = async (what: string, cond: () => boolean): Promise<void> => {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(cond(), what);
};

test('output handed to a host that goes away unacknowledged goes to the next one; acknowledged, it is let go; finished once all of it is acknowledged', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-agent-output-'));
  try {
    const fifo = path.join(dir, 'init-stdout');
    makeFifo(fifo);
    const out = new ProcessOutput({ stdout: fifo }, true);
    const w = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK); // runc's shim's end
    out.releasePlaceholders();
    const first: NumberedChunk[] = [];
    const firstSink = (c: NumberedChunk) => (first.push(c), true);
    out.attach(firstSink);
    fs.writeSync(w, 'one\n');
    await until('the first host gets chunk 1', () => first.length === 1);
    fs.writeSync(w, 'two\n');
    await until('the first host gets chunk 2', () => first.length === 2);
    assert.equal(first.map((c) => [c.seq, c.data.toString()]), [[1, 'one\n'], [2, 'two\n']]);
    out.ack(1); // the first host wrote chunk 1 out, then died
    out.detach(firstSink);
    fs.writeSync(w, 'three\n');
    fs.closeSync(w);
    await until('the output ends', () => (out as unknown as { ended: number }).ended === 1);
    const second: NumberedChunk[] = [];
    let finished = 0;
    out.attach((c) => (second.push(c), true), () => finished++);
    assert.equal(second.map((c) => [c.seq, c.data.toString(), c.eof]), [[2, 'two\n', false], [3, 'three\n', false], [4, '', true]]);
    assert.not.ok(out.finished, 'not finished before the host acknowledges the end');
    out.ack(3);
    assert.is(finished, 0);
    out.ack(4);
    assert.is(finished, 1);
    assert.ok(out.finished);
    out.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
