// The agent's stdio fifos: made by mknod(2) with the mode runc's shim expects,
// replacing whatever a previous container left at the path; output numbered and
// held until acknowledged; and the pod's fifo keeper, which keeps the output of a
// process that exits while no agent reads for the next agent.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Logger } from '../../src/common/log';
import { EventHub } from '../../src/agent/events';
import { DpuPods } from '../../src/agent/pods';
import { pidAlive } from '../../src/common/processes';
import { FIFO_KEEPER_NAME, FifoKeeper, fifoKeeperBinary, fifoKeeperSocket, isFifoKeeper, KeeperRecord } from '../../src/agent/fifo-keeper';
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

// The keeper under the sanitizers: a memory error kills it, and the test sees that.
const KEEPER_ASAN = path.join(path.dirname(fifoKeeperBinary()), `${FIFO_KEEPER_NAME}-asan`);

// Keepers run detached, as on the DPU: whatever ends this file (a failed
// assertion, a crash) takes every keeper a test started with it.
const keeperPids = new Set<number>();
process.once('exit', () => {
  for (const pid of keeperPids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
});

function keeperOf(dir: string, binary: string, lines: string[] = []): { keeper: FifoKeeper; started: KeeperRecord[]; options: ConstructorParameters<typeof FifoKeeper>[0] } {
  const started: KeeperRecord[] = [];
  const options = {
    binary,
    socket: path.join(dir, 'keeper.sock'),
    podId: 'pod-1',
    log: new Logger({ write: (line: string) => lines.push(line) }, true),
    onStarted: (r: KeeperRecord) => {
      keeperPids.add(r.pid);
      started.push(r);
    },
  };
  return { keeper: new FifoKeeper(options, undefined), started, options };
}

/** The fifos (by path) a process has open. */
/** The named fifos pid holds open: each as its /proc/PID/fd link and the path it names. */
function fifoFdsIn(pid: number): Array<{ fd: string; target: string }> {
  const out: Array<{ fd: string; target: string }> = [];
  for (const n of fs.readdirSync(`/proc/${pid}/fd`)) {
    const fd = `/proc/${pid}/fd/${n}`;
    try {
      const target = fs.readlinkSync(fd);
      if (target.startsWith('/') && fs.statSync(fd).isFIFO()) out.push({ fd, target }); // an anonymous pipe (the sanitizers') reads pipe:[…]
    } catch {
      // closed meanwhile (the connection of a request just answered)
    }
  }
  return out;
}

function fifosOpenIn(pid: number): string[] {
  return fifoFdsIn(pid)
    .map((f) => f.target)
    .sort();
}

// As runc's shim runs a process: a read end of its own (so writes never fail),
// the write ends as stdout and stderr; all of them closed when the process exits.
function runWriter(stdout: string, stderr: string, script: string): number | null {
  const r = spawnSync('sh', ['-c', `exec 3<>"$1" 4<>"$2"; exec >"$1" 2>"$2"; ${script}`, 'writer', stdout, stderr], { stdio: 'ignore' });
  return r.status;
}

async function readToEnd(out: ProcessOutput): Promise<{ stdout: string; stderr: string; eofs: string[]; last: number }> {
  const chunks: NumberedChunk[] = [];
  out.attach((c) => (chunks.push(c), true));
  await until('both streams end', () => chunks.filter((c) => c.eof).length === 2);
  const text = (stream: string) => chunks.filter((c) => c.stream === stream && !c.eof).map((c) => c.data.toString()).join('');
  return { stdout: text('stdout'), stderr: text('stderr'), eofs: chunks.filter((c) => c.eof).map((c) => c.stream).sort(), last: chunks[chunks.length - 1].seq };
}

test('a process that exits while no agent reads: its output waits in the keeper\'s fifos, and the next agent gets all of it, then end-of-file; then the keeper lets go and ends', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-agent-keeper-'));
  const { keeper, started, options } = keeperOf(dir, fifoKeeperBinary());
  let next: FifoKeeper | null = null;
  try {
    const paths = { stdout: path.join(dir, 'init-stdout'), stderr: path.join(dir, 'init-stderr') };
    makeFifo(paths.stdout);
    makeFifo(paths.stderr);
    // The first agent: the fifos made, read, and held by the pod's keeper.
    const first = new ProcessOutput(paths, true);
    await keeper.hold(first.fifoPaths);
    assert.is(started.length, 1, 'one keeper started');
    const { pid } = started[0];
    assert.ok(isFifoKeeper(pid, options.socket));
    const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    assert.ok(cmdline[0].endsWith(`/${FIFO_KEEPER_NAME}`) && cmdline.includes('pod-1'), `a recognisable command line: ${cmdline.join(' ')}`);
    // Started by libxpu and gone on in a child of its own session: not the agent's child (no zombie for the agent to reap).
    const statLine = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const stat = statLine.slice(statLine.lastIndexOf(')') + 2).split(' ');
    assert.is.not(Number(stat[1]), process.pid, 'its parent is not the agent');
    assert.is(Number(stat[3]), pid, 'it leads a session of its own');
    assert.equal(fifosOpenIn(pid), [paths.stderr, paths.stdout]);
    // The agent dies before reading anything; the keeper stays.
    first.close();
    await keeper.detach();
    assert.is(runWriter(paths.stdout, paths.stderr, 'echo one; echo two; echo three; echo oops >&2; exit 5'), 5);

    // The next agent: the pod's record names the keeper, and the fifos are reopened.
    next = new FifoKeeper(options, started[0]);
    const again = new ProcessOutput(paths, false);
    await next.hold(again.fifoPaths);
    assert.is(next.current?.pid, pid, 'the same keeper, found by its record');
    assert.is(started.length, 1, 'none started anew');
    const got = await readToEnd(again);
    assert.is(got.stdout, 'one\ntwo\nthree\n');
    assert.is(got.stderr, 'oops\n');
    assert.equal(got.eofs, ['stderr', 'stdout']);
    again.ack(got.last);
    assert.ok(again.finished);

    // Delivered: the keeper lets the fifos go; the pod goes: the keeper ends.
    again.close();
    next.drop(again.fifoPaths);
    await until('the keeper lets go of the fifos', () => fifosOpenIn(pid).length === 0);
    assert.ok(pidAlive(pid), 'the keeper stays while the pod does');
    await next.stop();
    await until('the keeper has exited', () => !pidAlive(pid));
    assert.not.ok(fs.existsSync(options.socket), 'its socket is removed');
    await next.stop(); // again: nothing to do
  } finally {
    await next?.stop();
    await keeper.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('without a keeper, what a process wrote before it exited is gone before the next agent opens the fifo', async () => {
  // The loss the keeper prevents, so that the test above means something.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-agent-nokeeper-'));
  try {
    const paths = { stdout: path.join(dir, 'init-stdout'), stderr: path.join(dir, 'init-stderr') };
    makeFifo(paths.stdout);
    makeFifo(paths.stderr);
    new ProcessOutput(paths, true).close();
    assert.is(runWriter(paths.stdout, paths.stderr, 'echo one; echo two; echo three; exit 5'), 5);
    const again = new ProcessOutput(paths, false);
    const got = await readToEnd(again);
    assert.is(got.stdout, '');
    again.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a keeper lost while the agent holds fifos is started again and told them; a recorded one that is gone is replaced at the next hold', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-agent-keeper-lost-'));
  const lines: string[] = [];
  const { keeper, started, options } = keeperOf(dir, KEEPER_ASAN, lines);
  let next: FifoKeeper | null = null;
  try {
    const fifo = path.join(dir, 'init-stdout');
    makeFifo(fifo);
    await keeper.hold([fifo]);
    process.kill(started[0].pid, 'SIGKILL');
    await until('a keeper started again', () => started.length === 2 && fifosOpenIn(started[1].pid).length === 1);
    assert.equal(fifosOpenIn(started[1].pid), [fifo]);
    assert.ok(lines.some((l) => /fifo keeper lost/.test(l)), lines.join(''));
    assert.is(keeper.current?.pid, started[1].pid);

    // The agent dies, then the keeper: the next agent starts another from the record.
    await keeper.detach();
    process.kill(started[1].pid, 'SIGKILL');
    await until('the keeper has exited', () => !pidAlive(started[1].pid));
    next = new FifoKeeper(options, started[1]);
    await next.hold([fifo]);
    assert.is(started.length, 3);
    assert.equal(fifosOpenIn(started[2].pid), [fifo]);
    await next.stop();
    await until('the keeper has exited', () => !pidAlive(started[2].pid));
    assert.not.ok(fs.existsSync(options.socket));
  } finally {
    await next?.stop();
    await keeper.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('reopened after a restart before runc\'s shim opened it (an exec not started yet), a fifo waits for its writer', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-agent-unopened-'));
  try {
    const paths = { stdout: path.join(dir, 'exec-e1-stdout'), stderr: path.join(dir, 'exec-e1-stderr') };
    makeFifo(paths.stdout);
    makeFifo(paths.stderr);
    const out = new ProcessOutput(paths, true);
    const chunks: NumberedChunk[] = [];
    out.attach((c) => (chunks.push(c), true));
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(chunks, [], 'no end before the writer came');
    assert.is(runWriter(paths.stdout, paths.stderr, 'echo late'), 0); // Start, then the exec exits
    out.releasePlaceholders(); // Start answered
    const got = await readToEnd(out);
    assert.is(got.stdout, 'late\n');
    out.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a restarted agent finds the pod\'s keeper by its record and reads what a process wrote meanwhile; the output delivered, the keeper lets go; RemovePod ends it and leaves nothing', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-agent-pods-keeper-'));
  const lines: string[] = [];
  const log = new Logger({ write: (line: string) => lines.push(line) }, false);
  const paths = {
    stateDir: dir,
    runDir: path.join(dir, 'run'),
    netnsDir: path.join(dir, 'netns'),
    cgroupRoot: path.join(dir, 'cgroup'),
    cgroupParent: 'heteropod-dpu',
    runcShim: '/bin/false',
    fifoKeeper: fifoKeeperBinary(),
  };
  const podDir = path.join(dir, 'pods', 'p1');
  const io = path.join(podDir, 'containers', 'c1', 'io');
  fs.mkdirSync(path.join(podDir, 'shim'), { recursive: true });
  fs.mkdirSync(io, { recursive: true });
  fs.mkdirSync(paths.runDir);
  const init = { stdin: '', stdout: path.join(io, 'init-stdout'), stderr: path.join(io, 'init-stderr') };
  const exec = { stdin: '', stdout: path.join(io, 'exec-e1-stdout'), stderr: path.join(io, 'exec-e1-stderr'), unopened: true };
  for (const f of [init.stdout, init.stderr, exec.stdout, exec.stderr]) makeFifo(f);
  // The first agent: the pod's keeper holds the init process's fifos; the agent dies.
  const started: KeeperRecord[] = [];
  const first = new FifoKeeper({ binary: paths.fifoKeeper, socket: fifoKeeperSocket(paths.runDir, 'p1'), podId: 'p1', log, onStarted: (r) => (keeperPids.add(r.pid), started.push(r)) }, undefined);
  const firstOutput = new ProcessOutput(init, true);
  await first.hold(firstOutput.fifoPaths);
  firstOutput.close();
  await first.detach();
  const record = { id: 'p1', namespace: 'k8s.io', pod_name: 'p', pod_namespace: 'default', netns: 'hp-pod-p1', cgroup: 'heteropod-dpu/hp-p1', keeper: started[0], containers: {}, processes: { 'c1/': init, 'c1/e1': exec } };
  fs.writeFileSync(path.join(podDir, 'pod.json'), JSON.stringify(record));
  assert.is(runWriter(init.stdout, init.stderr, 'echo one; echo two; echo three; exit 5'), 5);

  const pods = new DpuPods(paths, { path: (d: string) => path.join(dir, d), missing: () => [] }, new EventHub(), log);
  try {
    pods.recover();
    const out = pods.output('p1', 'c1', '');
    const got = await readToEnd(out);
    assert.is(got.stdout, 'one\ntwo\nthree\n');
    assert.equal(got.eofs, ['stderr', 'stdout']);
    const { pid } = started[0];
    await until('the keeper holds the exec\'s fifos too', () => fifosOpenIn(pid).length === 4);
    assert.is(started.length, 1, 'the recorded keeper, not a new one');
    assert.ok(pods.output('p1', 'c1', 'e1').fifoPaths.length === 2);
    out.ack(got.last);
    pods.forgetOutput('p1', 'c1', '', out); // what the Output stream does once all is acknowledged
    await until('the keeper lets go of the delivered output\'s fifos', () => fifosOpenIn(pid).length === 2);
    assert.equal(fifosOpenIn(pid), [exec.stderr, exec.stdout]);
    await pods.removePod('p1');
    await until('the keeper has exited', () => !pidAlive(pid));
    assert.not.ok(fs.existsSync(started[0].socket), 'its socket is removed');
    assert.not.ok(fs.existsSync(podDir));
    assert.equal(fs.readdirSync(paths.runDir), []);
    assert.not.ok(lines.some((l) => /level=(warning|error)/.test(l)), lines.join(''));
  } finally {
    await pods.removePod('p1').catch(() => undefined);
    await first.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

/** Sends request lines on one connection to a keeper; its answers. */
async function ask(socket: string, request: string): Promise<string[]> {
  const wanted = request.split('\n').length - 1;
  const conn = net.connect(socket);
  // The keeper may close a connection while a long request is still being
  // written (ECONNRESET): its answers are what is checked.
  conn.on('error', () => undefined);
  let text = '';
  conn.setEncoding('utf8').on('data', (d: string) => (text += d));
  conn.write(request);
  await until(`${wanted} answers`, () => text.split('\n').length - 1 >= wanted);
  conn.destroy();
  return text.split('\n').slice(0, -1);
}

test('keeper requests: only fifos, by absolute path, each held once; a fifo made anew replaces the old one; a gone one is let go; nonsense is refused', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-agent-keeper-req-'));
  const { keeper, started, options } = keeperOf(dir, KEEPER_ASAN);
  try {
    const a = path.join(dir, 'a');
    const b = path.join(dir, 'b');
    makeFifo(a);
    makeFifo(b);
    fs.writeFileSync(path.join(dir, 'file'), '');
    await keeper.ready();
    const { pid } = started[0];
    assert.equal(await ask(options.socket, `hold ${a}\nhold ${a}\nhold ${path.join(dir, 'file')}\nhold a\nhold ${path.join(dir, 'none')}\nforget ${a}\ndrop ${path.join(dir, 'none')}\n`), [
      'ok',
      'ok',
      'error not a fifo',
      'error Invalid argument',
      'error No such file or directory',
      'error Bad message',
      'ok',
    ]);
    assert.equal(fifosOpenIn(pid), [a], 'held once');
    makeFifo(a); // the same path, another fifo
    assert.equal(await ask(options.socket, `hold ${a}\n`), ['ok']);
    const held = fifoFdsIn(pid);
    assert.is(held.length, 1);
    assert.is(fs.statSync(held[0].fd).ino, fs.statSync(a).ino, 'the new fifo in place of the old');
    fs.rmSync(a);
    assert.equal(await ask(options.socket, `hold ${b}\n`), ['ok']);
    assert.equal(fifosOpenIn(pid), [b], 'the fifo whose path has gone let go');
    // A line longer than any request ends the connection; the keeper goes on.
    assert.equal(await ask(options.socket, `hold /${'x'.repeat(8000)}\n`), ['error File name too long']);
    assert.equal(await ask(options.socket, `drop ${b}\n`), ['ok']);
    assert.equal(fifosOpenIn(pid), []);
    assert.ok(pidAlive(pid));
  } finally {
    await keeper.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
