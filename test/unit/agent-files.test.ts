// The DPU's copies of a container's mounts (src/agent/mounted-files.ts, and the
// pods' UpdateFiles and exit events around them): an update must be what a
// container sees through the bind mount runc made of the copy before the update.
// Such a mount resolves names through the copy's original inode (a directory) or
// is that inode (a file): a path through a file descriptor held open since
// before the update stands for it here, and, as root, a real bind mount in a
// private mount namespace of a child process.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { agentMethod, MountedFile } from '../../src/agentapi/proto';
import { AgentError } from '../../src/agent/errors';
import { EventHub } from '../../src/agent/events';
import { readTerminationMessage, updateCopy, writeCopy } from '../../src/agent/mounted-files';
import { DpuPods } from '../../src/agent/pods';
import { Code } from '../../src/common/status';
import { Logger } from '../../src/common/log';
import { MAX_TERMINATION_MESSAGE_BYTES } from '../../src/oci/mounts';
import { MessageWriter, encodeAny, readFields, str, uint } from '../../src/proto/wire';
import { decodeDeleteResponse, encodeIdRequest, encodeKillRequest, forwardedEvent } from '../../src/taskapi/messages';
import { skip } from '../lib/skip';
import { kubeletWrite, scratchDirs } from '../lib/volumes';

const { scratch, root, remove } = scratchDirs('hp-agent-files-');
const log = new Logger({ write: () => undefined }, false, { test: 'agent-files' });


function tarOf(dir: string): Buffer {
  return spawnSync('tar', ['-c', '-C', dir, '.'], { maxBuffer: 1 << 24 }).stdout;
}

const dirFile = (destination: string, content: Buffer, mode = 0o755): MountedFile => ({ destination, content, directory: true, mode, termination_log: false });
const oneFile = (destination: string, content: string, mode = 0o644): MountedFile => ({ destination, content: Buffer.from(content), directory: false, mode, termination_log: false });

test.after(() => {
  remove();
});

test('a directory: a kubelet `..data` swap seen through the copy\'s original inode; unchanged entries kept; nothing left beside it', () => {
  const host = path.join(scratch('host'), 'config');
  kubeletWrite(host, '..2024_01_01_00_00_00.1', { 'app.conf': 'v1\n', 'old.key': 'gone soon\n' });
  const files = scratch('files');
  const copy = path.join(files, '0');
  writeCopy(copy, dirFile('/etc/config', tarOf(host)));
  assert.is(fs.readFileSync(path.join(copy, 'app.conf'), 'utf8'), 'v1\n', 'through ..data');
  assert.is(fs.readlinkSync(path.join(copy, 'app.conf')), '..data/app.conf', 'the key stays a symlink');

  // What the container's bind mount resolves names through: the copy's inode.
  const held = fs.openSync(copy, 'r');
  try {
    const mounted = `/proc/self/fd/${held}`;
    const ino = fs.statSync(copy).ino;
    kubeletWrite(host, '..2024_01_01_00_01_00.2', { 'app.conf': 'v2\n', 'new.key': 'added\n' });
    updateCopy(copy, dirFile('/etc/config', tarOf(host)));

    assert.is(fs.statSync(copy).ino, ino, 'the same directory: a bind mount of it shows the update');
    assert.is(fs.readFileSync(path.join(mounted, 'app.conf'), 'utf8'), 'v2\n');
    assert.is(fs.readFileSync(path.join(mounted, 'new.key'), 'utf8'), 'added\n', 'a key added');
    assert.not.ok(fs.existsSync(path.join(mounted, 'old.key')), 'a key removed');
    assert.is(fs.readlinkSync(path.join(mounted, '..data')), '..2024_01_01_00_01_00.2');
    assert.equal(fs.readdirSync(mounted).sort(), ['..2024_01_01_00_01_00.2', '..data', 'app.conf', 'new.key'], 'the old data directory gone');
    assert.equal(fs.readdirSync(files), ['0'], 'no staging or trash left beside the copy');

    // The same content again changes nothing: every entry keeps its inode.
    const before = fs.lstatSync(path.join(copy, '..data')).ino;
    const dataFile = fs.statSync(path.join(copy, 'app.conf')).ino;
    updateCopy(copy, dirFile('/etc/config', tarOf(host)));
    assert.is(fs.lstatSync(path.join(copy, '..data')).ino, before);
    assert.is(fs.statSync(path.join(copy, 'app.conf')).ino, dataFile);
  } finally {
    fs.closeSync(held);
  }
});

test('a directory: files and subdirectories changed, added, removed, and a file turned into a directory', () => {
  const host = scratch('plain');
  fs.mkdirSync(path.join(host, 'sub'));
  fs.writeFileSync(path.join(host, 'a'), 'a1');
  fs.writeFileSync(path.join(host, 'sub', 'b'), 'b1');
  fs.writeFileSync(path.join(host, 'flip'), 'a file');
  const copy = path.join(scratch('files'), '0');
  writeCopy(copy, dirFile('/data', tarOf(host), 0o750));
  assert.is(fs.statSync(copy).mode & 0o7777, 0o750, 'the host\'s mode, whatever the umask');
  const held = fs.openSync(copy, 'r');
  try {
    fs.writeFileSync(path.join(host, 'a'), 'a2');
    fs.writeFileSync(path.join(host, 'sub', 'b'), 'b2 longer');
    fs.mkdirSync(path.join(host, 'sub', 'deeper'));
    fs.writeFileSync(path.join(host, 'sub', 'deeper', 'c'), 'c1');
    fs.rmSync(path.join(host, 'flip'));
    fs.mkdirSync(path.join(host, 'flip'));
    fs.writeFileSync(path.join(host, 'flip', 'inside'), 'now a directory');
    fs.chmodSync(path.join(host, 'a'), 0o600);
    updateCopy(copy, dirFile('/data', tarOf(host), 0o755));
    const mounted = `/proc/self/fd/${held}`;
    assert.is(fs.readFileSync(path.join(mounted, 'a'), 'utf8'), 'a2');
    assert.is(fs.statSync(path.join(mounted, 'a')).mode & 0o777, 0o600, 'a mode change is a change');
    assert.is(fs.readFileSync(path.join(mounted, 'sub', 'b'), 'utf8'), 'b2 longer');
    assert.is(fs.readFileSync(path.join(mounted, 'sub', 'deeper', 'c'), 'utf8'), 'c1');
    assert.is(fs.readFileSync(path.join(mounted, 'flip', 'inside'), 'utf8'), 'now a directory');
    assert.is(fs.statSync(copy).mode & 0o7777, 0o755, 'the directory\'s new mode');
  } finally {
    fs.closeSync(held);
  }
  assert.throws(() => updateCopy(copy, oneFile('/data', 'a file now')), /directory/, 'a file for a directory is refused');
});

test('a single file: rewritten in place, so a bind mount (which holds its inode) shows the new content', () => {
  const copy = path.join(scratch('files'), '1');
  writeCopy(copy, oneFile('/etc/hosts', '127.0.0.1 localhost\n10.0.0.1 old-name\n', 0o644));
  const held = fs.openSync(copy, 'r');
  try {
    const ino = fs.statSync(copy).ino;
    updateCopy(copy, oneFile('/etc/hosts', '127.0.0.1 localhost\n'));
    assert.is(fs.statSync(copy).ino, ino, 'the same inode');
    assert.is(fs.readFileSync(`/proc/self/fd/${held}`, 'utf8'), '127.0.0.1 localhost\n', 'shorter: the rest cut off');
    updateCopy(copy, oneFile('/etc/hosts', '127.0.0.1 localhost\n10.0.0.2 a-much-longer-new-name\n', 0o640));
    assert.is(fs.readFileSync(`/proc/self/fd/${held}`, 'utf8'), '127.0.0.1 localhost\n10.0.0.2 a-much-longer-new-name\n');
    assert.is(fs.statSync(copy).mode & 0o777, 0o640);
  } finally {
    fs.closeSync(held);
  }
  assert.throws(() => updateCopy(copy, dirFile('/etc/hosts', Buffer.alloc(0))), /file/, 'a directory for a file is refused');
});

test('real bind mounts (a private mount namespace): a directory\'s and a file\'s mounts, made before, show the update', async () => {
  if (process.getuid?.() !== 0 || spawnSync('unshare', ['--mount', '--propagation', 'private', 'true']).status !== 0) {
    skip('real bind mounts', 'needs root and unshare --mount');
    return;
  }
  const host = path.join(scratch('host'), 'config');
  kubeletWrite(host, '..2024_01_01_00_00_00.1', { key: 'v1' });
  const files = scratch('files');
  const dirCopy = path.join(files, '0');
  const fileCopy = path.join(files, '1');
  writeCopy(dirCopy, dirFile('/etc/config', tarOf(host)));
  writeCopy(fileCopy, oneFile('/etc/hosts', 'hosts v1'));
  const mnt = scratch('mnt');
  fs.mkdirSync(path.join(mnt, 'config'));
  fs.writeFileSync(path.join(mnt, 'hosts'), '');
  // The child mounts, says what it sees, waits for a line, and says it again.
  const script = [
    `mount --bind ${dirCopy} ${mnt}/config`,
    `mount --bind ${fileCopy} ${mnt}/hosts`,
    `echo "$(cat ${mnt}/config/key) $(cat ${mnt}/hosts)"`,
    'read line',
    `echo "$(cat ${mnt}/config/key) $(cat ${mnt}/hosts)"`,
  ].join(' && ');
  const child = spawn('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines: string[] = [];
  let partial = '';
  child.stdout.on('data', (d: Buffer) => {
    const parts = (partial + d.toString()).split('\n');
    partial = parts.pop() ?? '';
    lines.push(...parts);
  });
  // 'close', not 'exit': its stdout is read to the end by then (the last line may come after the exit).
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  const deadline = Date.now() + 5000;
  while (lines.length < 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.equal(lines, ['v1 hosts v1'], 'mounted before the update');
  kubeletWrite(host, '..2024_01_01_00_01_00.2', { key: 'v2' });
  updateCopy(dirCopy, dirFile('/etc/config', tarOf(host)));
  updateCopy(fileCopy, oneFile('/etc/hosts', 'hosts v2'));
  child.stdin.end('go\n');
  assert.is(await exited, 0);
  assert.equal(lines, ['v1 hosts v1', 'v2 hosts v2'], 'the same mounts show the new content');
  assert.equal(fs.readdirSync(path.join(mnt, 'config')), [], 'the mounts died with the namespace');
});

test('the termination-message file: mode 0666 whatever the umask; read back as its last 4096 bytes', () => {
  const copy = path.join(scratch('files'), '2');
  const old = process.umask(0o077);
  try {
    writeCopy(copy, { destination: '/dev/termination-log', content: Buffer.alloc(0), directory: false, mode: 0o600, termination_log: true });
  } finally {
    process.umask(old);
  }
  assert.is(fs.statSync(copy).mode & 0o777, 0o666, 'any user of the container may write it, as on the host');
  assert.is(readTerminationMessage(copy).length, 0);
  fs.writeFileSync(copy, 'short message');
  assert.is(readTerminationMessage(copy).toString(), 'short message');
  const long = Buffer.concat([Buffer.alloc(1000, 'a'), Buffer.alloc(MAX_TERMINATION_MESSAGE_BYTES - 3, 'b'), Buffer.from('END')]);
  fs.writeFileSync(copy, long);
  const read = readTerminationMessage(copy);
  assert.is(read.length, MAX_TERMINATION_MESSAGE_BYTES, 'capped as the kubelet caps it');
  assert.ok(read.equals(long.subarray(long.length - MAX_TERMINATION_MESSAGE_BYTES)), 'the end of it, as the kubelet reads it');
  assert.is(readTerminationMessage(path.join(root, 'no-such-file')).length, 0);
});

// A pod as a previous agent's record leaves it, with one container: taken over by recover().
async function recoveredPod(): Promise<{ pods: DpuPods; copies: Record<string, string>; terminationLog: string; events: EventHub }> {
  const state = scratch('agent-state');
  const podDir = path.join(state, 'pods', 'pod-1');
  const bundle = path.join(podDir, 'containers', 'c1');
  fs.mkdirSync(path.join(podDir, 'shim'), { recursive: true });
  fs.mkdirSync(path.join(bundle, 'files'), { recursive: true });
  const host = path.join(scratch('host'), 'config');
  kubeletWrite(host, '..2024_01_01_00_00_00.1', { key: 'v1' });
  const copies = { '/etc/config': path.join(bundle, 'files', '0'), '/etc/hosts': path.join(bundle, 'files', '1'), '/dev/termination-log': path.join(bundle, 'files', '2') };
  writeCopy(copies['/etc/config'], dirFile('/etc/config', tarOf(host)));
  writeCopy(copies['/etc/hosts'], oneFile('/etc/hosts', 'hosts v1'));
  writeCopy(copies['/dev/termination-log'], { destination: '/dev/termination-log', content: Buffer.alloc(0), directory: false, mode: 0o666, termination_log: true });
  const record = {
    id: 'pod-1', namespace: 'k8s.io', pod_name: 'web', pod_namespace: 'default', netns: 'hp-pod-test', cgroup: 'heteropod-test/hp-pod-1',
    containers: { c1: { name: 'proxy', bundle, copies, termination_log: copies['/dev/termination-log'] } },
    processes: {},
  };
  fs.writeFileSync(path.join(podDir, 'pod.json'), JSON.stringify(record));
  const paths = { stateDir: state, runDir: state, netnsDir: path.join(state, 'netns'), cgroupRoot: path.join(state, 'cgroup'), cgroupParent: 'heteropod-test', runcShim: '/bin/false', fifoKeeper: '/bin/false' };
  const events = new EventHub();
  const pods = new DpuPods(paths, { path: (d: string) => path.join(state, d), missing: () => [] }, events, log);
  await pods.recover();
  return { pods, copies, terminationLog: copies['/dev/termination-log'], events };
}

function code(fn: () => unknown): Code | 'ok' {
  try {
    fn();
    return 'ok';
  } catch (err) {
    assert.instance(err, AgentError);
    return (err as AgentError).code;
  }
}

test('UpdateFiles: by destination, checked before anything is written; the termination-message file is refused', async () => {
  const { pods, copies } = await recoveredPod();
  try {
    const host = path.join(scratch('host'), 'config');
    kubeletWrite(host, '..2024_01_01_00_01_00.2', { key: 'v2' });
    const update = (files: MountedFile[], container = 'c1') => () => pods.updateFiles({ pod_id: 'pod-1', container_id: container, files });
    assert.is(code(update([dirFile('/etc/config', tarOf(host))], 'c9')), Code.NOT_FOUND, 'an unknown container');
    assert.is(code(() => pods.updateFiles({ pod_id: 'pod-9', container_id: 'c1', files: [] })), Code.NOT_FOUND, 'an unknown pod');
    assert.is(code(update([dirFile('/etc/config', tarOf(host)), oneFile('/etc/nothing', 'x')])), Code.NOT_FOUND, 'a mount it does not have');
    assert.is(code(update([oneFile('/dev/termination-log', 'from the host')])), Code.INVALID_ARGUMENT);
    assert.is(code(update([dirFile('/etc/hosts', Buffer.alloc(0))])), Code.INVALID_ARGUMENT, 'a directory for a file');
    assert.is(fs.readFileSync(path.join(copies['/etc/config'], 'key'), 'utf8'), 'v1', 'nothing written by a refused update');
    assert.is(fs.readFileSync(copies['/dev/termination-log'], 'utf8'), '');

    assert.is(code(update([dirFile('/etc/config', tarOf(host)), oneFile('/etc/hosts', 'hosts v2')])), 'ok');
    assert.is(fs.readFileSync(path.join(copies['/etc/config'], 'key'), 'utf8'), 'v2');
    assert.is(fs.readFileSync(copies['/etc/hosts'], 'utf8'), 'hosts v2');
  } finally {
    await pods.removePod('pod-1').catch(() => undefined); // its runc shim never ran: that part fails
  }
});

// A ForwardRequest of a task event whose message has container_id (1) and id (2).
function taskEvent(topic: string, type: string, containerId: string, id = ''): Buffer {
  const event = encodeAny(type, new MessageWriter().bytes(1, containerId).bytes(2, id).varint(3, 42).finish());
  const envelope = new MessageWriter().bytes(2, 'k8s.io').bytes(3, topic).message(4, event).finish();
  return new MessageWriter().message(1, envelope).finish();
}

test('events: the exit of a container\'s init carries its termination message (capped), other events and exec exits none', async () => {
  const { pods, terminationLog, events } = await recoveredPod();
  try {
    fs.writeFileSync(terminationLog, Buffer.concat([Buffer.alloc(100, 'x'), Buffer.alloc(MAX_TERMINATION_MESSAGE_BYTES, 'y')]));
    // The fixture's pod has no runc shim running: the agent reported its
    // container lost (exit 255) as it took the pod over, before these events.
    const earlier: number[] = [];
    events.subscribe('pod-1', 0, (e) => earlier.push(e.sequence))();
    assert.is(earlier.length, 1, 'one exit: the lost container');
    const seen: { topic: string; message?: string }[] = [];
    const stop = events.subscribe('pod-1', earlier[0], (e) => seen.push({ topic: e.topic, message: e.terminationMessage?.toString() }));
    assert.ok(pods.publishEvent(taskEvent('/tasks/start', 'containerd.events.TaskStart', 'c1')));
    assert.ok(pods.publishEvent(taskEvent('/tasks/exit', 'containerd.events.TaskExit', 'c1', 'exec-1')));
    assert.ok(pods.publishEvent(taskEvent('/tasks/exit', 'containerd.events.TaskExit', 'c1', 'c1')));
    assert.is(pods.publishEvent(taskEvent('/tasks/exit', 'containerd.events.TaskExit', 'c9', 'c9')), null, 'a container of no pod');
    stop();
    assert.equal(seen.map((e) => e.topic), ['/tasks/start', '/tasks/exit', '/tasks/exit']);
    assert.is(seen[0].message, undefined);
    assert.is(seen[1].message, undefined, 'an exec\'s exit');
    assert.is(seen[2].message, 'y'.repeat(MAX_TERMINATION_MESSAGE_BYTES), 'the init\'s: the file\'s last 4096 bytes');
  } finally {
    await pods.removePod('pod-1').catch(() => undefined);
  }
});

test('a pod whose runc shim is gone (a DPU reboot): its container is reported exited 255 and answers as an exited process', async () => {
  const { pods, events, copies } = await recoveredPod();
  try {
    const exits: { containerId: string; id: string; status: number }[] = [];
    events.subscribe('pod-1', 0, (e) => {
      const f = readFields(forwardedEvent(e.forward).value);
      exits.push({ containerId: str(f, 1), id: str(f, 2), status: uint(f, 4) });
    })();
    assert.equal(exits, [{ containerId: 'c1', id: 'c1', status: 255 }]);
    const state = readFields(await pods.relay('State', 'pod-1', encodeIdRequest('c1')));
    assert.equal([str(state, 1), uint(state, 4), uint(state, 9)], ['c1', 3, 255], 'State: STOPPED, exit 255');
    assert.is(uint(readFields((await pods.wait('pod-1', encodeIdRequest('c1'))).response), 1), 255, 'Wait: 255');
    const refused = async (p: Promise<unknown>) => p.then(() => 'ok', (e: AgentError) => `${Code[e.code]}: ${e.message}`);
    assert.match(await refused(pods.relay('Kill', 'pod-1', encodeKillRequest('c1', 9, false))), /^NOT_FOUND: c1: process already finished \(the DPU restarted/);
    assert.match(await refused(pods.relay('Start', 'pod-1', encodeIdRequest('c1'))), /^FAILED_PRECONDITION: Start c1: not running: the DPU restarted/);
    assert.is(decodeDeleteResponse(await pods.relay('Delete', 'pod-1', encodeIdRequest('c1'))).exitStatus, 255, 'Delete: 255');
    assert.not.ok(fs.existsSync(path.dirname(path.dirname(copies['/etc/config']))), 'the bundle is gone with the Delete');
    assert.match(await refused(pods.relay('State', 'pod-1', encodeIdRequest('c1'))), /^NOT_FOUND/);
  } finally {
    await pods.removePod('pod-1').catch(() => undefined);
  }
});

test('a pod removed while a process still runs in its runc shim\'s directory (a shim that would not exit): it is killed', async () => {
  const { pods, copies } = await recoveredPod();
  // <pod>/containers/c1/files/0
  const shimDir = path.join(path.dirname(path.dirname(path.dirname(path.dirname(copies['/etc/config'])))), 'runc-shim');
  fs.mkdirSync(shimDir, { recursive: true });
  const stuck = spawn('sleep', ['60'], { cwd: shimDir, stdio: 'ignore' });
  try {
    await new Promise((r) => stuck.once('spawn', r));
    const exited = new Promise((r) => stuck.once('exit', (_code, signal) => r(signal)));
    await pods.removePod('pod-1');
    assert.is(await Promise.race([exited, new Promise((r) => setTimeout(() => r('still running after 5 s'), 5000))]), 'SIGKILL');
  } finally {
    stuck.kill('SIGKILL');
  }
});

test('the API: UpdateFiles, and the termination message on Wait\'s answer and on the event, as the wire carries them', () => {
  const updateFiles = agentMethod('UpdateFiles');
  assert.is(updateFiles.kind, 'unary', 'UpdateFiles is served');
  const request = { pod_id: 'pod-1', container_id: 'c1', files: [{ destination: '/etc/config', content: Buffer.from('tar'), directory: true, mode: 0o755, termination_log: false }] };
  const update = updateFiles.decodeRequest(updateFiles.encodeRequest(request)) as typeof request;
  assert.equal(update, request);
  const wait = agentMethod('Wait');
  const reply = wait.decodeResponse(wait.encodeResponse({ response: Buffer.from([8, 1]), termination_message: Buffer.from('bye') })) as { termination_message: Buffer };
  assert.is(reply.termination_message.toString(), 'bye');
  // An earlier agent's answer (no field 2) reads as an empty message.
  const old = wait.decodeResponse(Buffer.from([0x0a, 0x02, 8, 1])) as { termination_message: Buffer };
  assert.is(old.termination_message.length, 0);
  const events = agentMethod('Events');
  assert.is(events.kind, 'server');
  const event = events.decodeResponse(events.encodeResponse({ sequence: 7, topic: '/tasks/exit', forward: Buffer.from('f'), termination_message: Buffer.from('msg') })) as { termination_message: Buffer };
  assert.is(event.termination_message.toString(), 'msg');
});

test.run();
