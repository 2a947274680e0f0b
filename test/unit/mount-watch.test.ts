// The host's watch of an offloaded container's mounts (src/shim/mount-watch.ts)
// and what it reads (src/shim/mounted-files.ts), with a stand-in for the agent's
// UpdateFiles: kubelet-style volume updates reach it in well under the kubelet's
// own propagation time, the re-check catches what a watch cannot see, failures
// are retried or given up as the code says, and a closed watch sends nothing.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { MountedFile } from '../../src/agentapi/proto';
import { DpuAgentError } from '../../src/agentapi/client';
import { Code } from '../../src/common/status';
import { Logger } from '../../src/common/log';
import type { OciMount } from '../../src/oci/mounts';
import { MountWatch, MountWatchOptions } from '../../src/shim/mount-watch';
import { mountedFiles, sourceFingerprint, terminationLogSource, writeTerminationMessage } from '../../src/shim/mounted-files';
import { fileInTar, kubeletWrite, scratchDirs } from '../lib/volumes';

const { scratch, root, remove } = scratchDirs('hp-mount-watch-');
const lines: string[] = [];
const log = new Logger({ write: (l: string) => void lines.push(l) }, false, { test: 'mount-watch' });


/** A tar stream's file, read as a reader in the container would (symlinks followed inside it). */
function fromTar(tar: Buffer, name: string): string {
  return fileInTar(tar, name, scratch('untar'));
}

/** The agent's UpdateFiles as the watch sees it: each call recorded, answered by `answer`. */
class Agent {
  readonly sent: MountedFile[][] = [];
  answer: (files: MountedFile[]) => Promise<void> = async () => undefined;
  send = (files: MountedFile[]): Promise<void> => {
    this.sent.push(files);
    return this.answer(files);
  };
}

const live: MountWatch[] = [];
function watch(opts: Partial<MountWatchOptions> & { mounts: OciMount[]; agent: Agent }): MountWatch {
  const w = new MountWatch({ containerId: 'c1', log, send: opts.agent.send, ...opts });
  live.push(w);
  return w;
}

async function until(what: string, cond: () => boolean, timeoutMs = 3000): Promise<number> {
  const started = Date.now();
  while (!cond()) {
    if (Date.now() - started > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  return Date.now() - started;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test.after.each(() => {
  for (const w of live.splice(0)) w.close();
});

test.after(() => {
  remove();
});

test('a kubelet `..data` swap is sent within a second (the watch, not the 10 s re-check), once, as a tar whose key reads v2', async () => {
  const volume = path.join(scratch('volume'), 'config');
  kubeletWrite(volume, '..2024_01_01_00_00_00.1', { 'app.conf': 'v1' });
  const agent = new Agent();
  const w = watch({ agent, mounts: [{ destination: '/etc/config', type: 'bind', source: volume, options: ['rbind', 'ro'] }] });
  w.start();
  await sleep(200);
  assert.is(agent.sent.length, 0, 'nothing changed, nothing sent');

  kubeletWrite(volume, '..2024_01_01_00_01_00.2', { 'app.conf': 'v2' });
  const took = await until('the update', () => agent.sent.length === 1);
  assert.ok(took < 1000, `sent after ${took} ms`);
  const [file] = agent.sent[0];
  assert.equal({ ...file, content: null }, { destination: '/etc/config', content: null, directory: true, mode: fs.statSync(volume).mode & 0o7777, termination_log: false });
  assert.is(fromTar(file.content, 'app.conf'), 'v2', 'the key through the new ..data');
  await sleep(300);
  assert.is(agent.sent.length, 1, 'the writer\'s several steps make one update');

  await w.check();
  assert.is(agent.sent.length, 1, 'a look with nothing new sends nothing');
});

test('the re-check catches what the watch cannot see (a change deep in a plain directory, a file replaced); a file\'s writes are watched', async () => {
  const dir = scratch('plain');
  fs.mkdirSync(path.join(dir, 'sub'));
  fs.writeFileSync(path.join(dir, 'sub', 'deep'), 'one');
  const agent = new Agent();
  const deep = watch({ agent, recheckMs: 400, mounts: [{ destination: '/data', type: 'bind', source: dir, options: ['rbind', 'ro'] }] });
  deep.start();
  fs.writeFileSync(path.join(dir, 'sub', 'deep'), 'two');
  await until('the re-check', () => agent.sent.length === 1, 5000);
  assert.equal(agent.sent[0].map((f) => f.destination), ['/data']);
  assert.is(fromTar(agent.sent[0][0].content, 'sub/deep'), 'two');

  const hosts = path.join(scratch('files'), 'hosts');
  fs.writeFileSync(hosts, '127.0.0.1 localhost\n');
  const fileAgent = new Agent();
  const file = watch({ agent: fileAgent, recheckMs: 3000, mounts: [{ destination: '/etc/hosts', type: 'bind', source: hosts, options: ['rbind', 'rw'] }] });
  assert.equal(file.destinations, ['/etc/hosts']);
  file.start();
  fs.appendFileSync(hosts, '10.0.0.5 peer\n');
  const took = await until('the file\'s update', () => fileAgent.sent.length === 1);
  assert.ok(took < 2000, `by the watch, after ${took} ms`);
  assert.equal(fileAgent.sent[0].map((f) => [f.destination, f.content.toString()]), [['/etc/hosts', '127.0.0.1 localhost\n10.0.0.5 peer\n']]);

  // Replaced by another file: the old watch sees its file go (or the re-check
  // sees the new one); the new one is watched from then on.
  fs.writeFileSync(`${hosts}.new`, 'replaced\n');
  fs.renameSync(`${hosts}.new`, hosts);
  await until('the replaced file', () => fileAgent.sent.length === 2, 8000);
  assert.is(fileAgent.sent[1][0].content.toString(), 'replaced\n');
  fs.appendFileSync(hosts, 'more\n');
  const again = await until('a write to the new file', () => fileAgent.sent.length === 3);
  assert.ok(again < 2000, `the new file is watched (${again} ms)`);
});

test('the termination log and the sandbox\'s /dev/shm are not watched; start(true) sends everything at once', async () => {
  const hosts = path.join(scratch('files'), 'hosts');
  fs.writeFileSync(hosts, 'h');
  const termination = path.join(scratch('kubelet'), 'pods', 'uid-1', 'containers', 'proxy', '0badcafe');
  fs.mkdirSync(path.dirname(termination), { recursive: true });
  fs.writeFileSync(termination, '');
  const mounts: OciMount[] = [
    { destination: '/proc', type: 'proc', source: 'proc' },
    { destination: '/etc/hosts', type: 'bind', source: hosts, options: ['rbind', 'rw'] },
    { destination: '/dev/termination-log', type: 'bind', source: termination, options: ['rbind', 'rw'] },
    { destination: '/custom/message', type: 'bind', source: termination.replace('0badcafe', '12345678'), options: ['rbind', 'rw'] },
    { destination: '/dev/shm', type: 'bind', source: '/run/containerd/io.containerd.grpc.v1.cri/sandboxes/s1/shm', options: ['rbind', 'rw'] },
  ];
  fs.writeFileSync(termination.replace('0badcafe', '12345678'), '');
  const agent = new Agent();
  const w = watch({ agent, mounts });
  assert.equal(w.destinations, ['/etc/hosts'], 'a kubelet termination-message file is known by its path too');
  w.start(true);
  await until('the resend', () => agent.sent.length === 1);
  assert.equal(agent.sent[0].map((f) => f.destination), ['/etc/hosts']);
  fs.writeFileSync(termination, 'written by someone');
  await sleep(300);
  assert.is(agent.sent.length, 1);

  // What Create ships: every bind mount but /dev/shm, the termination log marked.
  const shipped = mountedFiles(mounts.slice(0, 3));
  assert.equal(shipped.map((f) => [f.destination, f.termination_log]), [['/etc/hosts', false], ['/dev/termination-log', true]]);
  assert.is(terminationLogSource(mounts), termination);
  assert.is(terminationLogSource(mounts.slice(0, 2)), '');
});

test('an agent away is asked again soon; content it refuses is not sent again until it changes; NOT_FOUND ends the watch', async () => {
  const hosts = path.join(scratch('files'), 'hosts');
  fs.writeFileSync(hosts, 'v1');
  const agent = new Agent();
  let failures = 2;
  agent.answer = async () => {
    if (failures-- > 0) throw new DpuAgentError('unreachable', 'DPU agent unreachable: connect ECONNREFUSED');
  };
  const w = watch({ agent, retryMs: 100, recheckMs: 60_000, mounts: [{ destination: '/etc/hosts', type: 'bind', source: hosts }] });
  w.start();
  lines.length = 0;
  fs.writeFileSync(hosts, 'v2');
  await until('sent after two failures', () => agent.sent.length === 3);
  assert.ok(agent.sent.every((files) => files[0].content.toString() === 'v2'));
  assert.is(lines.filter((l) => l.includes('trying again')).length, 1, 'the outage said once');

  agent.answer = async () => {
    throw new DpuAgentError('call', 'DPU agent: INVALID_ARGUMENT: a directory for a file', Code.INVALID_ARGUMENT);
  };
  fs.writeFileSync(hosts, 'v3');
  await until('the refused send', () => agent.sent.length === 4);
  await w.check();
  assert.is(agent.sent.length, 4, 'the same content is not sent again');
  agent.answer = async () => {
    throw new DpuAgentError('call', 'DPU agent: NOT_FOUND: container c1: not found', Code.NOT_FOUND);
  };
  fs.writeFileSync(hosts, 'v4 longer');
  await until('the send to a gone container', () => agent.sent.length === 5);
  await until('the watch closed', () => w.isClosed);
  fs.writeFileSync(hosts, 'v5');
  await w.check();
  await sleep(300);
  assert.is(agent.sent.length, 5, 'nothing more');
});

test('a change between the fingerprint and the read is sent again; close() stops the watch and its timers', async () => {
  const hosts = path.join(scratch('files'), 'hosts');
  fs.writeFileSync(hosts, 'v1');
  const agent = new Agent();
  // Taken now, as before Create reads the content.
  const w = watch({ agent, recheckMs: 60_000, mounts: [{ destination: '/etc/hosts', type: 'bind', source: hosts }] });
  fs.writeFileSync(hosts, 'v2 (written before the Create read it)');
  w.start();
  await w.check();
  assert.equal(agent.sent.map((f) => f[0].content.toString()), ['v2 (written before the Create read it)'], 'sent: harmless when the DPU already had it, needed when it did not');
  w.close();
  fs.writeFileSync(hosts, 'v3');
  await sleep(300);
  await w.check();
  assert.is(agent.sent.length, 1);
});

test('sourceFingerprint: a symlink retargeted, a rewrite of the same size, a gone source', () => {
  const dir = scratch('fp');
  fs.writeFileSync(path.join(dir, 'a'), 'same');
  fs.symlinkSync('a', path.join(dir, 'link'));
  const one = sourceFingerprint(dir);
  assert.is(sourceFingerprint(dir), one, 'stable');
  fs.writeFileSync(path.join(dir, 'b'), 'same');
  const two = sourceFingerprint(dir);
  assert.is.not(two, one);
  fs.unlinkSync(path.join(dir, 'link'));
  fs.symlinkSync('b', path.join(dir, 'link'));
  assert.is.not(sourceFingerprint(dir), two, 'a retargeted symlink');
  const file = path.join(dir, 'a');
  const before = sourceFingerprint(file);
  fs.writeFileSync(file, 'SAME');
  assert.is.not(sourceFingerprint(file), before, 'same size, new content (mtime and ctime)');
  assert.is(sourceFingerprint(path.join(dir, 'gone')), null);
});

test('writeTerminationMessage: the kubelet\'s file, in place, its last 4096 bytes; a file gone is not made again', () => {
  const file = path.join(scratch('kubelet'), 'abcdef01');
  fs.writeFileSync(file, 'an older, longer message');
  fs.chmodSync(file, 0o666);
  const ino = fs.statSync(file).ino;
  assert.ok(writeTerminationMessage(file, Buffer.from('crashed: config invalid')));
  assert.is(fs.readFileSync(file, 'utf8'), 'crashed: config invalid');
  assert.is(fs.statSync(file).ino, ino);
  assert.is(fs.statSync(file).mode & 0o777, 0o666, 'the kubelet\'s mode kept');
  const long = Buffer.concat([Buffer.alloc(5000, 'x'), Buffer.from('the end')]);
  writeTerminationMessage(file, long);
  const written = fs.readFileSync(file);
  assert.is(written.length, 4096);
  assert.ok(written.equals(long.subarray(long.length - 4096)));
  assert.not.ok(writeTerminationMessage(path.join(root, 'gone', 'abcdef02'), Buffer.from('x')));
  assert.not.ok(fs.existsSync(path.join(root, 'gone')));
});

test.run();
