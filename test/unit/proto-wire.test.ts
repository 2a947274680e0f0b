// The wire-level codec the shim uses on its hot path, checked against protobufjs
// reading the project's .proto files (the specification).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { decode, encode } from '../../src/proto';
import { readFields, MessageWriter, replaceField, decodeTimestamp, int64 } from '../../src/proto/wire';
import { decodeRequest, encodeRequest, decodeResponse, encodeResponse } from '../../src/ttrpc/messages';
import * as m from '../../src/taskapi/messages';

const T = 'containerd.task.v2.';

test('ttrpc Request: ours decodes protobufjs, protobufjs decodes ours', () => {
  const req = { service: 'containerd.task.v2.Task', method: 'Wait', payload: Buffer.from([1, 2, 3]), timeout_nano: 5_000_000_000, metadata: [{ key: 'containerd-namespace-ttrpc', value: 'k8s.io' }] };
  assert.equal(decodeRequest(encode('ttrpc.Request', req)), req);
  assert.equal(decode('ttrpc.Request', encodeRequest(req)), req);
  assert.equal([...encodeRequest(req)], [...encode('ttrpc.Request', req)]);
});

test('ttrpc Response: status and payload both ways', () => {
  const err = { status: { code: 5, message: 'task x: not found' }, payload: Buffer.alloc(0) };
  assert.equal(decodeResponse(encode('ttrpc.Response', err)).status, err.status);
  assert.equal((decode('ttrpc.Response', encodeResponse(err)) as { status: { code: number } }).status.code, 5);
  const ok = decodeResponse(encode('ttrpc.Response', { payload: Buffer.from('x') }));
  assert.equal([ok.status, ok.payload.toString()], [null, 'x']);
});

test('taskRef reads id and exec_id only where field 2 is exec_id', () => {
  assert.equal(m.taskRef('Kill', encode(`${T}KillRequest`, { id: 'c', exec_id: 'e', signal: 9, all: true })), { id: 'c', execId: 'e' });
  const update = encode(`${T}UpdateTaskRequest`, { id: 'c', resources: { type_url: 'x', value: Buffer.from('{}') } });
  assert.equal(m.taskRef('Update', update), { id: 'c', execId: '' });
  assert.equal(m.taskRef('Stats', encode(`${T}StatsRequest`, { id: 'c' })), { id: 'c', execId: '' });
});

test('Create: options replaced, every other field kept', () => {
  const req = {
    id: 'c1', bundle: '/b', rootfs: [{ type: 'overlay', source: 'overlay', target: '', options: ['lowerdir=/l', 'upperdir=/u'] }],
    terminal: true, stdin: '/i', stdout: '/o', stderr: '/e', checkpoint: '', parent_checkpoint: '',
    options: { type_url: 'runtimeoptions.v1.Options', value: encode('runtimeoptions.v1.Options', { config_path: '/etc/x' }) },
  };
  const payload = encode(`${T}CreateTaskRequest`, req);
  const create = m.createTask(payload);
  assert.is(create.hasOptions, true);
  const spec = { raw: Buffer.from('{}'), parsed: {} };
  const call = m.createCall(payload, create, spec);
  assert.equal(call.ref, { id: 'c1', execId: '' });
  const withRunc = m.withCreateOptions(call, m.runcOptions({ root: '/run/r', binaryName: '', systemdCgroup: true }));
  const replaced = decode<typeof req>(`${T}CreateTaskRequest`, withRunc.payload);
  assert.equal({ ...replaced, options: null }, { ...req, options: null });
  assert.is(replaced.options.type_url, 'containerd.runc.v1.Options');
  assert.equal(decode('containerd.runc.v1.Options', replaced.options.value), decode('containerd.runc.v1.Options', encode('containerd.runc.v1.Options', { root: '/run/r', systemd_cgroup: true })));
  assert.ok(withRunc.create.hasOptions && withRunc.spec === spec && withRunc.ref === call.ref, 'the parsed parts kept');
  const stripped = m.withCreateOptions(call, null);
  assert.is(decode<typeof req>(`${T}CreateTaskRequest`, stripped.payload).options, null);
  assert.equal(stripped.create, { ...create, hasOptions: false });
  assert.ok(call.payload.equals(payload), 'the call replaced is not changed');
});

test('taskCall: the bytes as given and the task they name', () => {
  const payload = encode(`${T}DeleteRequest`, { id: 'c', exec_id: 'e' });
  const call = m.taskCall('Delete', payload);
  assert.equal({ method: call.method, ref: call.ref }, { method: 'Delete', ref: { id: 'c', execId: 'e' } });
  assert.is(call.payload, payload);
  assert.not.ok(m.isCreateCall(m.taskCall('Create', encode(`${T}CreateTaskRequest`, { id: 'c' }))), 'a Create without its parsed parts is no CreateCall');
});

test('createTask reads what an offloaded Create needs, as protobufjs does', () => {
  const req = {
    id: 'c1', bundle: '/b', terminal: false, stdin: '', stdout: '/o', stderr: '/e',
    rootfs: [
      { type: 'overlay', source: 'overlay', target: '', options: ['index=off', 'lowerdir=/l2:/l1'] },
      { type: 'bind', source: '/s', target: '/t', options: [] },
    ],
  };
  const payload = encode(`${T}CreateTaskRequest`, { ...req, checkpoint: 'x', options: { type_url: 'u', value: Buffer.from('v') } });
  assert.equal(m.createTask(payload), { ...req, rootfs: req.rootfs.map(({ target: _t, ...r }) => r), hasOptions: true });
  assert.equal(m.createTask(encode(`${T}CreateTaskRequest`, { id: 'c2', terminal: true, stdout: '/o' })), { id: 'c2', bundle: '', rootfs: [], terminal: true, stdin: '', stdout: '/o', stderr: '', hasOptions: false });
  assert.is(m.createTaskPid(encode(`${T}CreateTaskResponse`, { pid: 4242 })), 4242);
  assert.is(m.createTaskPid(Buffer.alloc(0)), 0);
});

test('Connect, Shutdown, Kill, Wait, Delete encodings equal protobufjs', () => {
  assert.equal([...m.encodeConnectResponse(77, 1234)], [...encode(`${T}ConnectResponse`, { shim_pid: 77, task_pid: 1234 })]);
  assert.is(m.connectTaskPid(encode(`${T}ConnectResponse`, { shim_pid: 1, task_pid: 99, version: '2' })), 99);
  assert.equal(m.shutdownRequest(encode(`${T}ShutdownRequest`, { id: 'a', now: true })), { id: 'a', now: true });
  assert.equal([...m.encodeShutdownRequest('a')], [...encode(`${T}ShutdownRequest`, { id: 'a' })]);
  assert.equal([...m.encodeKillRequest('a', 9, true)], [...encode(`${T}KillRequest`, { id: 'a', signal: 9, all: true })]);
  assert.equal([...m.encodeIdRequest('a', 'e')], [...encode(`${T}WaitRequest`, { id: 'a', exec_id: 'e' })]);
  const ts = { seconds: 1763700000, nanos: 5 };
  assert.equal([...m.encodeDeleteResponse(3, 137, ts)], [...encode(`${T}DeleteResponse`, { pid: 3, exit_status: 137, exited_at: ts })]);
  assert.equal(m.decodeDeleteResponse(encode(`${T}DeleteResponse`, { pid: 3, exit_status: 137, exited_at: ts })), { pid: 3, exitStatus: 137, exitedAt: ts });
});

test('Go’s zero time (negative int64 seconds) decodes exactly', () => {
  const zero = { seconds: -62135596800, nanos: 0 };
  assert.equal(decodeTimestamp(encode('google.protobuf.Timestamp', zero)), zero);
  assert.is(int64(readFields(new MessageWriter().varint(1, -1).finish()), 1), -1);
});

test('events: topic and TaskExit out of a ForwardRequest', () => {
  const exit = encode('containerd.events.TaskExit', { container_id: 'c1', id: 'e1', pid: 5, exit_status: 3 });
  const fwd = encode('containerd.services.events.ttrpc.v1.ForwardRequest', {
    envelope: { timestamp: { seconds: 1, nanos: 0 }, namespace: 'k8s.io', topic: '/tasks/exit', event: { type_url: 'containerd.events.TaskExit', value: exit } },
  });
  const e = m.forwardedEvent(fwd);
  assert.equal([e.topic, e.typeUrl], ['/tasks/exit', 'containerd.events.TaskExit']);
  assert.equal(m.taskExit(e.value), { containerId: 'c1', id: 'e1' });
});

test('malformed input throws, never loops or reads past the end', () => {
  for (const bad of [[0x0a, 0x50], [0x08], [0x80, 0x80, 0x80], [0x00, 0x01], [0x0b], [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]]) {
    assert.throws(() => readFields(Buffer.from(bad)), /malformed protobuf/, `bytes ${bad}`);
  }
  assert.equal(replaceField(Buffer.alloc(0), 10, null).length, 0);
});

test.run();
