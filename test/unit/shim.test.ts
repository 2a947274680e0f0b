// The shim's routing and its small parsers, with a fake runtime standing in at the
// Runtime boundary: no containerd, no runc.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { TtrpcServer, TtrpcClient, RpcError, Code, notFound } from '../../src/ttrpc';
import { decode, encode } from '../../src/proto';
import { TaskService } from '../../src/shim/task-service';
import type { Runtime, FirstTask } from '../../src/runcshim/runtime';
import type { CreateCall, TaskCall, TaskRef } from '../../src/taskapi/messages';
import { Logger, LogSink } from '../../src/common/log';
import { parseFlags, formatFlags } from '../../src/taskapi/flags';
import { loadConfig } from '../../src/shim/config';
import { decodeRuntimeOptions } from '../../src/shim/options';
import { groupOf, groupPaths } from '../../src/shim/paths';
import { encodeDeleteResponse } from '../../src/taskapi/messages';
import { Task } from '../../src/shim/tasks';

const T = 'containerd.task.v2.';
const TASK = 'containerd.task.v2.Task';

class FakeRuntime implements Runtime {
  readonly name = 'fake';
  calls: { method: string; req: Record<string, unknown>; call: TaskCall }[] = [];
  prepared: FirstTask[] = [];
  exited = new Set<string>();

  async prepare(first: FirstTask): Promise<void> {
    this.prepared.push(first);
  }
  taskOptions(): Buffer | null {
    return encode('google.protobuf.Any', { type_url: 'containerd.runc.v1.Options', value: encode('containerd.runc.v1.Options', { root: '/run/x' }) });
  }
  async call(call: TaskCall): Promise<Buffer> {
    const { method } = call;
    const type = { Create: 'CreateTaskRequest', Kill: 'KillRequest', Connect: 'ConnectRequest', Delete: 'DeleteRequest', State: 'StateRequest' }[method];
    const req = type ? decode<Record<string, unknown>>(`${T}${type}`, call.payload) : {};
    this.calls.push({ method, req, call });
    if (method === 'Kill' && this.exited.has(req.id as string)) throw notFound('process already finished');
    if (method === 'Create') return encode(`${T}CreateTaskResponse`, { pid: 1234 });
    if (method === 'Connect') return encode(`${T}ConnectResponse`, { shim_pid: 999, task_pid: 1234 });
    if (method === 'Delete') return encode(`${T}DeleteResponse`, { pid: 1234, exit_status: 3 });
    return Buffer.alloc(0);
  }
  async shutdown(): Promise<void> {}
}

const lines: string[] = [];
const sink: LogSink = { write: (l) => lines.push(l) };
const runtime = new FakeRuntime();
// Tasks whose spec says `test/where: host` are the proxy's to give to runc's shim.
const routed: CreateCall[] = [];
const service = new TaskService(
  (create) => {
    routed.push(create);
    return create.spec.parsed.annotations?.['test/where'] === 'host' ? null : runtime;
  },
  new Logger(sink, true),
  { shimPid: () => 4242 },
);
const server = new TtrpcServer();
server.registerService(TASK, service.handlers());
server.register(TASK, 'Create', async (payload) => {
  const placed = await service.create(payload);
  return placed.placed === 'daemon' ? placed.response : Buffer.from('proxy');
});
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shim-unit-'));
const sock = path.join(dir, 's');

/** A bundle directory whose config.json carries `annotations`. */
function bundle(id: string, annotations: Record<string, string> = {}): string {
  const b = path.join(dir, 'bundles', id);
  fs.mkdirSync(b, { recursive: true });
  fs.writeFileSync(path.join(b, 'config.json'), JSON.stringify({ ociVersion: '1.0.2', annotations }, null, 2));
  return b;
}
let client: TtrpcClient;

const call = (method: string, type: string, req: object): Promise<Buffer> => client.call(TASK, method, encode(`${T}${type}`, req));
const codeOf = (p: Promise<unknown>): Promise<number> => p.then(() => 0, (e: RpcError) => e.code);

test.before(async () => {
  await server.listen(sock);
  client = await TtrpcClient.connect(sock, { namespace: 'k8s.io' });
});

test.after(async () => {
  client.close();
  await server.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('unknown task id: NOT_FOUND, for every per-task method', async () => {
  for (const [method, type] of [['State', 'StateRequest'], ['Start', 'StartRequest'], ['Kill', 'KillRequest'], ['Wait', 'WaitRequest'], ['Stats', 'StatsRequest'], ['Delete', 'DeleteRequest'], ['Exec', 'ExecProcessRequest'], ['Update', 'UpdateTaskRequest']]) {
    assert.is(await codeOf(call(method, type, { id: 'nope' })), Code.NOT_FOUND, method);
  }
});

test('unsupported method: UNIMPLEMENTED', async () => {
  assert.is(await codeOf(client.call(TASK, 'Teleport', Buffer.alloc(0))), Code.UNIMPLEMENTED);
});

test('malformed request: INVALID_ARGUMENT, and the service goes on', async () => {
  assert.is(await codeOf(client.call(TASK, 'State', Buffer.from([0x0a, 0x50]))), Code.INVALID_ARGUMENT);
  assert.is(await codeOf(call('State', 'StateRequest', { id: 'nope' })), Code.NOT_FOUND);
});

test('Create: prepares the runtime, replaces our runtime options with the runtime’s own', async () => {
  const ours = { type_url: 'runtimeoptions.v1.Options', value: encode('runtimeoptions.v1.Options', { config_path: '/etc/heteropod/shim.toml' }) };
  const b = bundle('c1');
  const res = decode<{ pid: number }>(`${T}CreateTaskResponse`, await call('Create', 'CreateTaskRequest', { id: 'c1', bundle: b, stdout: '/fifo/out', options: ours }));
  assert.is(res.pid, 1234);
  assert.equal(runtime.prepared, [{ id: 'c1', bundle: b }]);
  const forwarded = runtime.calls.find((c) => c.method === 'Create')!.req as { options: { type_url: string }; stdout: string };
  assert.is(forwarded.options.type_url, 'containerd.runc.v1.Options');
  assert.is(forwarded.stdout, '/fifo/out');
  assert.is(await codeOf(call('Create', 'CreateTaskRequest', { id: 'c1', bundle: b })), Code.ALREADY_EXISTS);
});

test('Create: decoded and its config.json read once, the same parts for the router and the runtime', async () => {
  const created = runtime.calls.find((c) => c.method === 'Create')!.call as CreateCall;
  const placed = routed.find((r) => r.ref.id === 'c1')!;
  assert.equal(created.create, placed.create, 'the router\'s decoded Create is the runtime\'s');
  assert.is(created.spec, placed.spec, 'the router\'s spec is the runtime\'s');
  assert.equal(created.ref, { id: 'c1', execId: '' });
  const b = path.join(dir, 'bundles', 'c1');
  assert.equal([created.create.bundle, created.create.stdout, created.create.hasOptions], [b, '/fifo/out', true]);
  assert.ok(created.spec.raw.equals(fs.readFileSync(path.join(b, 'config.json'))), 'config.json\'s bytes');
  assert.not.ok(placed.payload.equals(created.payload), 'options replaced for the runtime only');
});

test('Create: a bundle without a readable config.json, a malformed request: INVALID_ARGUMENT, nothing held', async () => {
  const b = bundle('c8');
  fs.rmSync(path.join(b, 'config.json'));
  const missing = await call('Create', 'CreateTaskRequest', { id: 'c8', bundle: b }).catch((e: RpcError) => e);
  assert.instance(missing, RpcError);
  assert.is((missing as RpcError).code, Code.INVALID_ARGUMENT);
  assert.match((missing as RpcError).message, `create task c8: read bundle spec ${b}/config.json: ENOENT`);
  fs.writeFileSync(path.join(b, 'config.json'), '{ not json');
  assert.is(await codeOf(call('Create', 'CreateTaskRequest', { id: 'c8', bundle: b })), Code.INVALID_ARGUMENT);
  assert.is(await codeOf(client.call(TASK, 'Create', Buffer.from([0x0a, 0x05, 0x61]))), Code.INVALID_ARGUMENT);
  assert.is(service.tasks.find('c8'), undefined);
});

test('Kill of an exited process: NOT_FOUND from the runtime reaches containerd', async () => {
  runtime.exited.add('c1');
  assert.is(await codeOf(call('Kill', 'KillRequest', { id: 'c1', signal: 9 })), Code.NOT_FOUND);
});

test('Connect: the shim pid is the pod proxy’s, the task pid the runtime’s', async () => {
  const res = decode<{ shim_pid: number; task_pid: number }>(`${T}ConnectResponse`, await call('Connect', 'ConnectRequest', { id: 'c1' }));
  assert.equal([res.shim_pid, res.task_pid], [4242, 1234]);
  const unknown = decode<{ shim_pid: number; task_pid: number }>(`${T}ConnectResponse`, await call('Connect', 'ConnectRequest', { id: 'other' }));
  assert.equal([unknown.shim_pid, unknown.task_pid], [4242, 0]);
});

test('Create of a task the daemon does not hold: answered `proxy`, not held, the runtime not called', async () => {
  const before = runtime.calls.length;
  const res = await call('Create', 'CreateTaskRequest', { id: 'h1', bundle: bundle('h1', { 'test/where': 'host' }) });
  assert.is(res.toString(), 'proxy');
  assert.is(runtime.calls.length, before);
  assert.is(await codeOf(call('State', 'StateRequest', { id: 'h1' })), Code.NOT_FOUND);
});

test('a call reaches the runtime with the ids parsed once, and its bytes as sent', async () => {
  const payload = encode(`${T}StateRequest`, { id: 'c1', exec_id: 'e1' });
  await client.call(TASK, 'State', payload);
  const last = runtime.calls.at(-1)!.call;
  assert.is(last.method, 'State');
  assert.equal(last.ref, { id: 'c1', execId: 'e1' } satisfies TaskRef);
  assert.ok(last.payload.equals(payload));
});

test('Delete: the task leaves the table', async () => {
  const del = decode<{ exit_status: number }>(`${T}DeleteResponse`, await call('Delete', 'DeleteRequest', { id: 'c1' }));
  assert.is(del.exit_status, 3);
  assert.is(service.tasks.size, 0);
});

test('task lifecycle refuses illegal moves', () => {
  const t = new Task('x', '/b', runtime);
  t.transition('created');
  t.transition('running');
  assert.throws(() => t.transition('created'), /cannot go from running to created/);
  t.observe('created'); // a late event changes nothing
  assert.is(t.status, 'running');
});

test('flags: Go style, both forms', () => {
  const f = parseFlags(['-namespace', 'k8s.io', '-address=/run/c.sock', '-publish-binary', '/usr/bin/containerd', '-id', 'abc', '-debug', 'start']);
  assert.equal([f.namespace, f.address, f.publishBinary, f.id, f.debug, f.action], ['k8s.io', '/run/c.sock', '/usr/bin/containerd', 'abc', true, 'start']);
  assert.equal(parseFlags(formatFlags(f).concat('delete')).address, '/run/c.sock');
  assert.throws(() => parseFlags(['-bogus', 'x']), /unknown flag -bogus/);
});

// The reader itself is tested in shim-config.test.ts.
test('config: defaults when the file is absent, HETEROPOD_DEBUG on top', () => {
  const saved = process.env.HETEROPOD_DEBUG;
  delete process.env.HETEROPOD_DEBUG;
  const d = loadConfig(path.join(dir, 'absent.toml'));
  assert.is(d.stateDir, '/run/heteropod-shim');
  assert.is(d.debug, false);
  process.env.HETEROPOD_DEBUG = '1';
  assert.is(loadConfig(path.join(dir, 'absent.toml')).debug, true);
  if (saved === undefined) delete process.env.HETEROPOD_DEBUG;
  else process.env.HETEROPOD_DEBUG = saved;
  const file = path.join(dir, 'shim.toml');
  fs.writeFileSync(file, 'state_dir = "/run/y"\n[runc]\nroot = "/run/yr"\n');
  const c = loadConfig(file);
  assert.equal([c.stateDir, c.runc.root], ['/run/y', '/run/yr']);
  assert.is(c.xpu.hostMode, 'served', 'the DPU end serves the host end of a link unless told otherwise');
  fs.writeFileSync(file, '[xpu]\nhost_mode = "elastic"\n');
  assert.is(loadConfig(file).xpu.hostMode, 'elastic');
  fs.writeFileSync(file, '[xpu]\nhost_mode = "spin"\n');
  assert.throws(() => loadConfig(file), (err: Error) => err.message === `${file}:2: xpu.host_mode: must be one of served, sleep, elastic, poll, not "spin"`);
});

test('runtime options: ConfigPath out of runtimeoptions.v1.Options in an Any', () => {
  const value = encode('runtimeoptions.v1.Options', { type_url: '', config_path: '/etc/heteropod/shim.toml' });
  const any = encode('google.protobuf.Any', { type_url: 'runtimeoptions.v1.Options', value });
  assert.is(decodeRuntimeOptions(any).configPath, '/etc/heteropod/shim.toml');
  assert.is(decodeRuntimeOptions(Buffer.alloc(0)).configPath, '');
  assert.throws(() => decodeRuntimeOptions(Buffer.from([0x0a, 0x7f])), /truncated/);
});

test('one shim per pod: grouped by sandbox id; our socket never equals runc’s', () => {
  assert.is(groupOf('c2', { 'io.kubernetes.cri.sandbox-id': 'pod1' }), 'pod1');
  assert.is(groupOf('c2', {}), 'c2');
  const a = groupPaths('/run/heteropod-shim', '/run/containerd/containerd.sock', 'k8s.io', 'pod1');
  const b = groupPaths('/run/heteropod-shim', '/run/containerd/containerd.sock', 'k8s.io', 'pod2');
  assert.is.not(a.socket, b.socket);
  assert.ok(a.socket.length <= 106);
  assert.throws(() => groupPaths('/' + 'x'.repeat(60), 'a', 'b', 'c'), /longer than/);
});

test('DeleteResponse encoded by hand equals protobufjs', () => {
  const ts = { seconds: 1763700000, nanos: 123000000 };
  const mine = encodeDeleteResponse(4321, 137, ts);
  assert.equal(decode(`${T}DeleteResponse`, mine), { pid: 4321, exit_status: 137, exited_at: ts });
  assert.equal([...mine], [...encode(`${T}DeleteResponse`, { pid: 4321, exit_status: 137, exited_at: ts })]);
});

test('log lines are logrus-style key=value', () => {
  const log = new Logger(sink, false, { runtime: 'io.containerd.heteropod.v2' });
  log.debug('hidden');
  log.info('task created', { id: 'c1', note: 'two words' });
  const last = lines.at(-1)!;
  assert.match(last, /^time="[^"]+" level=info msg="task created" runtime=io.containerd.heteropod.v2 id=c1 note="two words"\n$/);
  assert.not.match(lines.join(''), /hidden/);
});

test.run();
