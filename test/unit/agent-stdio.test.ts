// The agent's stdio fifos: made by mknod(2) with the mode runc's shim expects,
// replacing whatever a previous container left at the path.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { makeFifo } from '../../src/agent/stdio';

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

test.run();
