// Runs the C tests of the node daemon's shipped mounts (test/unit/noded-mounts.c),
// plain and under AddressSanitizer and UBSan: the watch on kubelet-style volume
// updates, failures and their retries, the termination message, tar's limit,
// the encoding. Then compares the C with the TS it ports on the same files:
// sourceFingerprint of directories (names in every UTF-16 order, names and link
// targets that are not UTF-8, paths to normalize), and mountedFiles (content,
// kind, mode, termination log, the error of a missing source) as the agent
// decodes the C's UpdateFilesRequest.files.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { agentMethod } from '../../src/agentapi/proto';
import type { MountedFile } from '../../src/agentapi/proto';
import type { OciMount } from '../../src/oci/mounts';
import { mountedFiles, sourceFingerprint } from '../../src/shim/mounted-files';
import { kubeletWrite, scratchDirs } from '../lib/volumes';

const build = path.resolve(__dirname, '..', '..', '..', 'build');
const { scratch, remove } = scratchDirs('hp-noded-mounts-');

function binary(name: string): string {
  const file = path.join(build, name);
  assert.ok(fs.existsSync(file), `${file} is missing: run "make build"`);
  return file;
}

function run(name: string): void {
  const r = spawnSync(binary(name), [], { encoding: 'utf8', timeout: 120_000 });
  const output = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  if (r.status !== 0) assert.unreachable(`${name} failed (${r.error?.message ?? r.signal ?? `exit ${r.status}`}):\n${output}`);
  assert.match(output, /all mounts tests passed/);
}

/** A mode of the C test binary: its one line of output. */
function mode(...args: string[]): string {
  const r = spawnSync(binary('noded-test-mounts'), args, { encoding: 'utf8', timeout: 30_000 });
  assert.is(r.status, 0, `noded-test-mounts ${args.join(' ')}: ${r.stderr}`);
  return r.stdout.trim();
}

function cFingerprint(source: string): string | null {
  const out = mode('fingerprint', source);
  return out === 'gone' ? null : out;
}

test.after(() => remove());

test('mounts in C: the watch, the termination message, tar, the encoding', () => {
  run('noded-test-mounts');
});

test('mounts in C under AddressSanitizer and UBSan', () => {
  run('noded-test-mounts-asan');
});

test('the C fingerprint is the TS sourceFingerprint: a kubelet volume, nested directories, names in UTF-16 order', () => {
  const dir = scratch('fp');
  const volume = path.join(dir, 'config');
  kubeletWrite(volume, '..2024_01_01_00_00_00.1', { 'app.conf': 'v1', 'other.conf': 'x' });
  fs.mkdirSync(path.join(dir, 'sub', 'deeper'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'sub', 'deeper', 'f'), 'deep');
  // UTF-16 order is not UTF-8's: U+1F600 (a surrogate pair) before U+E000 and U+FF21
  for (const name of ['b', 'a', 'Z', '\u00e9', '\u{1F600}', '\uE000', '\uFF21', 'a b', '..hidden']) fs.writeFileSync(path.join(dir, name), name);
  fs.symlinkSync('/nowhere/at/all', path.join(dir, 'dangling'));
  fs.symlinkSync(Buffer.from([0x74, 0xff, 0xc3, 0x28, 0xe2, 0x82]), path.join(dir, 'not-utf8-target'));
  fs.chmodSync(path.join(dir, 'a'), 0o4755);

  const ts = sourceFingerprint(dir);
  assert.ok(ts);
  assert.is(cFingerprint(dir), ts, 'the directory');
  assert.is(cFingerprint(volume), sourceFingerprint(volume), 'the kubelet volume');
  assert.is(cFingerprint(path.join(volume, 'app.conf')), sourceFingerprint(path.join(volume, 'app.conf')), 'a key: its symlinks followed');
  assert.is(cFingerprint(path.join(dir, 'b')), sourceFingerprint(path.join(dir, 'b')), 'a file');
  const unnormal = `${dir}/./sub/../sub//deeper/../`;
  assert.is(cFingerprint(unnormal), sourceFingerprint(unnormal), 'a source path.join normalizes under it');
  assert.is(cFingerprint(path.join(dir, 'gone')), null, 'gone');
  assert.is(sourceFingerprint(path.join(dir, 'gone')), null);

  kubeletWrite(volume, '..2024_01_01_00_01_00.2', { 'app.conf': 'v2', 'other.conf': 'x' });
  assert.is(cFingerprint(volume), sourceFingerprint(volume), 'after a ..data swap');
  assert.is.not(cFingerprint(volume), ts);
});

test('a name that is not UTF-8: Node reads it with U+FFFD and cannot lstat it, so both say gone', () => {
  const dir = scratch('not-utf8');
  fs.writeFileSync(Buffer.concat([Buffer.from(`${dir}/`), Buffer.from([0x61, 0xff, 0x62])]), 'x');
  assert.is(sourceFingerprint(dir), null);
  assert.is(cFingerprint(dir), null);
});

test('the C mountedFiles is the TS mountedFiles, as the agent decodes UpdateFilesRequest.files', () => {
  const dir = scratch('kubelet');
  const volume = path.join(dir, 'pods', 'uid-1', 'volumes', 'kubernetes.io~configmap', 'config');
  kubeletWrite(volume, '..2024_01_01_00_00_00.1', { 'app.conf': 'v1' });
  const hosts = path.join(dir, 'hosts');
  fs.writeFileSync(hosts, '127.0.0.1 localhost\n');
  fs.chmodSync(hosts, 0o640);
  const empty = path.join(dir, 'empty');
  fs.writeFileSync(empty, '');
  const terminationLog = path.join(dir, 'pods', 'uid-1', 'containers', 'proxy', '8badf00d');
  fs.mkdirSync(path.dirname(terminationLog), { recursive: true });
  fs.writeFileSync(terminationLog, '');
  const mounts: OciMount[] = [
    { destination: '/proc', type: 'proc', source: 'proc' },
    { destination: '/etc/hosts', type: 'bind', source: hosts, options: ['rbind', 'rprivate', 'rw'] },
    { destination: '/etc/config', type: 'bind', source: volume, options: ['rbind', 'rprivate', 'ro'] },
    { destination: '/etc/empty', source: empty, options: ['bind', 'ro'] },
    { destination: '/dev/termination-log', type: 'bind', source: terminationLog, options: ['rbind', 'rprivate', 'rw'] },
    { destination: '/dev/shm', type: 'bind', source: '/run/containerd/io.containerd.grpc.v1.cri/sandboxes/s1/shm', options: ['rbind'] },
  ];
  const specFile = path.join(dir, 'config.json');
  fs.writeFileSync(specFile, JSON.stringify({ ociVersion: '1.0.2', mounts }));

  const hex = mode('files', specFile, '3');
  assert.match(hex, /^[0-9a-f]+$/, hex);
  const decoded = agentMethod('UpdateFiles').decodeRequest(Buffer.from(hex, 'hex')) as { files: MountedFile[] };
  const view = (f: MountedFile) => ({ destination: f.destination, content: Buffer.from(f.content).toString('hex'), directory: f.directory, mode: f.mode, termination_log: f.termination_log });
  assert.equal(decoded.files.map(view), mountedFiles(mounts).map(view));
  assert.equal(decoded.files.map((f) => f.destination), ['/etc/hosts', '/etc/config', '/etc/empty', '/dev/termination-log']);

  // A source gone: the same message.
  const missing = path.join(dir, 'missing');
  fs.writeFileSync(specFile, JSON.stringify({ mounts: [{ destination: '/x', type: 'bind', source: missing }] }));
  let tsError = '';
  try {
    mountedFiles([{ destination: '/x', type: 'bind', source: missing }]);
  } catch (err) {
    tsError = (err as Error).message;
  }
  assert.is(mode('files', specFile, '5'), `error: ${tsError}`);
});

test.run();
