// The Runtime of offloaded containers (src/shim/dpu-runtime.ts) at its interface,
// with a fake DPU agent standing in at the agent client's boundary: no agent, no
// DPU, no connection. The fake answers unary calls from per-method handlers, keeps a
// layer cache as the agent does (Create names the layers it lacks), and hands
// out streams the test drives by emitting 'data', 'error' and 'status' as
// the agent client's streams do. containerd's side of stdio is real fifos in a temporary directory.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { EventEmitter, once } from 'node:events';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DpuAgentClient, DpuAgentError } from '../../src/agentapi/client';
import type { CreateRequest, LayerChunk, MountedFile, PutLayerResponse, TaskEventMessage } from '../../src/agentapi/proto';
import { Code, RpcError } from '../../src/common/status';
import { Logger } from '../../src/common/log';
import { decode, encode } from '../../src/proto';
import { MessageWriter, encodeAny } from '../../src/proto/wire';
import { DpuAgentRuntime, RelayedProcess } from '../../src/shim/dpu-runtime';
import { readSpecFile } from '../../src/shim/bundle';
import { CreateCall, createCall, createTask, taskCall } from '../../src/taskapi/messages';
import { fileInTar, kubeletWrite } from '../lib/volumes';

const T = 'containerd.task.v2.';
const POD = { podId: 'pod-1', namespace: 'k8s.io', podName: 'web-0', podNamespace: 'default' };
// The runtime waits this long before it asks again (RETRY_MS in dpu-runtime.ts).
const RETRY_MS = 500;

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-dpu-runtime-'));
const layerIndexDir = path.join(root, 'layer-index');
const log = new Logger({ write: () => undefined }, false, { test: 'dpu-runtime' });

type CallOpts = { timeoutMs?: number | null; signal?: AbortSignal };
type Handler = (request: any, opts: CallOpts) => unknown;

/** A server stream as the runtime uses one: events, and cancel(). */
class FakeServerStream extends EventEmitter {
  cancelled = false;
  constructor(readonly method: string, readonly request: Record<string, unknown>) {
    super();
  }
  cancel(): void {
    this.cancelled = true;
  }
  pause(): void {}
  resume(): void {}
}

/** A client stream (PutLayer, Input): what was written, and the one answer at end(). */
class FakeUpload extends EventEmitter {
  readonly chunks: LayerChunk[] = [];
  constructor(readonly method: string, private readonly answer: (chunks: LayerChunk[]) => object, private readonly done: (err: DpuAgentError | null, res?: object) => void) {
    super();
  }
  write(chunk: LayerChunk): boolean {
    this.chunks.push(chunk);
    return true;
  }
  end(): void {
    setImmediate(() => this.done(null, this.answer(this.chunks)));
  }
  cancel(): void {}
}

/** The DPU agent as its client presents it, recording every call. */
class FakeAgent {
  readonly calls: { method: string; request: any; opts: CallOpts }[] = [];
  readonly streams: FakeServerStream[] = [];
  readonly uploads: FakeUpload[] = [];
  // Layers the agent's cache holds, by digest.
  readonly layers = new Set<string>();
  closed = false;
  private readonly handlers = new Map<string, Handler>();

  constructor() {
    this.answer('CreatePod', (req) => ({ pod_id: req.pod_id, netns_path: '/run/netns/dpu-pod-1', netns_inode: 4026532000, cgroup_parent: '/heteropod', containers: [] }));
    this.answer('RemovePod', () => ({}));
    this.answer('MissingLayers', (req: { digests: string[] }) => ({ digests: req.digests.filter((d) => !this.layers.has(d)) }));
  }

  answer(method: string, handler: Handler): this {
    this.handlers.set(method, handler);
    return this;
  }

  call<Res>(method: string, request: object = {}, opts: CallOpts = {}): Promise<Res> {
    this.calls.push({ method, request, opts });
    const handler = this.handlers.get(method);
    if (!handler) return Promise.reject(new DpuAgentError('call', `fake agent: UNIMPLEMENTED: ${method}`, Code.UNIMPLEMENTED));
    return Promise.resolve().then(() => handler(request, opts)) as Promise<Res>;
  }

  serverStream(method: string, request: Record<string, unknown>): FakeServerStream {
    const stream = new FakeServerStream(method, request);
    this.streams.push(stream);
    return stream;
  }

  clientStream(method: string, done: (err: DpuAgentError | null, res?: object) => void): FakeUpload {
    const upload = new FakeUpload(method, (chunks) => this.putLayer(chunks), done);
    this.uploads.push(upload);
    return upload;
  }

  health(): Promise<unknown> {
    return this.call('Health');
  }

  capacity(): Promise<unknown> {
    return this.call('Capacity');
  }

  close(): void {
    this.closed = true;
  }

  callsOf(method: string) {
    return this.calls.filter((c) => c.method === method);
  }

  streamsOf(method: string): FakeServerStream[] {
    return this.streams.filter((s) => s.method === method);
  }

  // A header chunk (digest, size), then the tar: stored under the digest it names.
  private putLayer(chunks: LayerChunk[]): PutLayerResponse {
    const bytes = chunks.slice(1).reduce((n, c) => n + c.data.length, 0);
    this.layers.add(chunks[0].digest);
    return { digest: chunks[0].digest, bytes_received: bytes, already_present: false };
  }
}

// Every runtime a test made, shut down after it even when it fails: a relay
// left open holds fifos and timers that would keep this process alive.
const live: DpuAgentRuntime[] = [];

// `atForward`: told of each event as it is forwarded (what is true at that moment).
function newRuntime(agent: FakeAgent, atForward: () => void = () => undefined) {
  const events: { forward: Buffer; topic: string }[] = [];
  const seen = { changes: 0 };
  const runtime = new DpuAgentRuntime(
    {
      pod: POD,
      client: agent as unknown as DpuAgentClient,
      layerIndexDir,
      onEvent: (forward, topic) => {
        atForward();
        events.push({ forward, topic });
      },
      onChange: () => seen.changes++,
    },
    log,
  );
  live.push(runtime);
  return { runtime, events, seen };
}

async function until(what: string, cond: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What a promise rejects with (fails the test if it resolves). */
async function rejection(p: Promise<unknown>): Promise<RpcError> {
  try {
    await p;
  } catch (err) {
    return err as RpcError;
  }
  throw new Error('expected a rejection');
}

let serial = 0;
function scratch(name: string): string {
  const dir = path.join(root, `${name}-${++serial}`);
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

function fifo(dir: string, name: string): string {
  const file = path.join(dir, name);
  execFileSync('mkfifo', [file]);
  return file;
}

/** A bundle whose config.json carries the CRI container name and one bound file; its bytes. */
function bundle(name: string, mountedFile: string): { dir: string; config: Buffer } {
  const dir = scratch(`bundle-${name}`);
  const spec = {
    ociVersion: '1.0.2',
    process: { args: ['/bin/sh'] },
    annotations: { 'io.kubernetes.cri.container-name': name, 'io.kubernetes.cri.container-type': 'container' },
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc' },
      { destination: '/etc/hosts', type: 'bind', source: mountedFile, options: ['rbind', 'ro'] },
    ],
  };
  // Indented: the agent must get these bytes, not a re-serialization.
  const config = Buffer.from(JSON.stringify(spec, null, 2));
  fs.writeFileSync(path.join(dir, 'config.json'), config);
  return { dir, config };
}

/** A committed snapshot as containerd's overlay rootfs names it: one lower directory. */
function layer(): string {
  const dir = scratch('layer');
  fs.mkdirSync(path.join(dir, 'etc'));
  fs.writeFileSync(path.join(dir, 'etc', 'os-release'), 'ID=test\n');
  fs.writeFileSync(path.join(dir, 'hello'), 'hello from the layer\n');
  return dir;
}

const OUR_OPTIONS = { type_url: 'runtimeoptions.v1.Options', value: encode('runtimeoptions.v1.Options', { config_path: '/etc/heteropod/shim.toml' }) };

function createRequest(id: string, bundleDir: string, lowerdir: string, stdio: { stdin?: string; stdout?: string; stderr?: string } = {}, options: object | null = OUR_OPTIONS): Buffer {
  return encode(`${T}CreateTaskRequest`, {
    id,
    bundle: bundleDir,
    rootfs: [{ type: 'overlay', source: 'overlay', options: [`lowerdir=${lowerdir}`, 'index=off'] }],
    stdin: stdio.stdin ?? '',
    stdout: stdio.stdout ?? '',
    stderr: stdio.stderr ?? '',
    ...(options ? { options } : {}),
  });
}

/** A Create as the task service hands it on: decoded, and its bundle's config.json read, once. */
function createCallOf(payload: Buffer): CreateCall {
  const create = createTask(payload);
  return createCall(payload, create, readSpecFile(create.bundle));
}

/** A Task call as the task service makes it. */
const call = (runtime: DpuAgentRuntime, method: string, payload: Buffer, signal?: AbortSignal): Promise<Buffer> =>
  runtime.call(method === 'Create' ? createCallOf(payload) : taskCall(method, payload), signal);

/** The agent's Create: names the layers its cache lacks (creating nothing), else answers with `pid`. */
function answerCreate(agent: FakeAgent, pid: number): void {
  agent.answer('Create', (req: CreateRequest) => {
    const missing = req.layers.filter((d) => !agent.layers.has(d));
    if (missing.length) return { response: Buffer.alloc(0), missing_layers: missing };
    return { response: encode(`${T}CreateTaskResponse`, { pid }), missing_layers: [] };
  });
}

const connect = async (runtime: DpuAgentRuntime, id: string) => decode<{ shim_pid: number; task_pid: number }>(`${T}ConnectResponse`, await call(runtime, 'Connect', encode(`${T}ConnectRequest`, { id })));

test.after.each(async () => {
  await Promise.all(live.splice(0).map((r) => r.shutdown()));
});

test.after(() => {
  fs.rmSync(root, { recursive: true, force: true });
});

test('Create: the request without our options, the spec\'s bytes, the CRI name; missing layers shipped, Create asked again', async () => {
  const agent = new FakeAgent();
  answerCreate(agent, 4711);
  const { runtime } = newRuntime(agent);
  const hosts = path.join(scratch('files'), 'hosts');
  fs.writeFileSync(hosts, '127.0.0.1 localhost\n');
  fs.chmodSync(hosts, 0o640);
  const b = bundle('nginx', hosts);
  const lower = layer();
  const request = createRequest('c1', b.dir, lower);

  const res = decode<{ pid: number }>(`${T}CreateTaskResponse`, await call(runtime, 'Create', request));
  assert.is(res.pid, 4711, 'the agent\'s answer, as is');

  assert.is(agent.callsOf('CreatePod').length, 1, 'the pod\'s DPU half made first');
  assert.equal(agent.callsOf('CreatePod')[0].request, { pod_id: 'pod-1', namespace: 'k8s.io', pod_name: 'web-0', pod_namespace: 'default' });
  const creates = agent.callsOf('Create').map((c) => c.request as CreateRequest);
  assert.is(creates.length, 2, 'Create, the layer shipped, Create again');
  const withoutOptions = createRequest('c1', b.dir, lower, {}, null);
  assert.ok(!request.equals(withoutOptions), 'the request as containerd sent it carries options');
  for (const c of creates) {
    assert.is(c.pod_id, 'pod-1');
    assert.ok(c.request.equals(withoutOptions), 'field 10 removed, every other byte kept');
    assert.is(decode<{ options: unknown }>(`${T}CreateTaskRequest`, c.request).options, null);
    assert.ok(c.spec.equals(b.config), 'config.json\'s bytes');
    assert.is(c.container_name, 'nginx', 'from io.kubernetes.cri.container-name');
    assert.is(c.files.length, 1, 'the bind-mounted file only');
    assert.is(c.files[0].destination, '/etc/hosts');
    assert.is(c.files[0].content.toString(), '127.0.0.1 localhost\n');
    assert.is(c.files[0].directory, false);
    assert.is(c.files[0].mode, 0o640);
  }
  const digest = creates[0].layers[0];
  assert.equal(creates[0].layers, [digest], 'one layer, by digest');
  assert.equal(creates[1].layers, [digest], 'the same layer, now in the cache');
  assert.match(digest, /^sha256:[0-9a-f]{64}$/);

  assert.equal(agent.callsOf('MissingLayers').map((c) => c.request.digests), [[digest]]);
  assert.is(agent.uploads.length, 1, 'one upload');
  const [upload] = agent.uploads;
  assert.is(upload.method, 'PutLayer');
  const [header, ...data] = upload.chunks;
  assert.is(header.digest, digest, 'the first chunk names the layer');
  assert.is(header.data.length, 0);
  const tar = Buffer.concat(data.map((c) => c.data));
  assert.is(tar.length, header.size, 'as many bytes as announced');
  assert.is(`sha256:${createHash('sha256').update(tar).digest('hex')}`, digest, 'bytes that hash to the digest');
  assert.ok(tar.includes(Buffer.from('hello from the layer\n')), 'the layer\'s files are in the tar');

  // Connect answers from Create's pid, with no round trip to the DPU.
  const before = agent.calls.length;
  const first = await connect(runtime, 'c1');
  const again = await connect(runtime, 'c1');
  assert.equal(first, { shim_pid: process.pid, task_pid: 4711, version: '' });
  assert.equal(again, first);
  assert.is(agent.calls.length, before, 'no agent call for Connect');

  // Empty stdio paths: nothing to relay, no Output stream.
  assert.equal(runtime.relayedProcesses(), [{ id: 'c1', execId: '', paths: { stdin: '', stdout: '', stderr: '' } }]);
  assert.is(agent.streamsOf('Output').length, 0);

  // A second container of the same image: the agent has the layer, one Create.
  const b2 = bundle('sidecar', hosts);
  const res2 = decode<{ pid: number }>(`${T}CreateTaskResponse`, await call(runtime, 'Create', createRequest('c2', b2.dir, lower)));
  assert.is(res2.pid, 4711);
  assert.is(agent.callsOf('Create').length, 3, 'one more Create');
  assert.is(agent.callsOf('MissingLayers').length, 1, 'nothing asked about layers');
  assert.is(agent.uploads.length, 1, 'nothing shipped again');
  assert.is((agent.callsOf('Create')[2].request as CreateRequest).container_name, 'sidecar');
  assert.is(agent.callsOf('CreatePod').length, 1, 'the pod is made once');
});

test('Create uses the spec the CreateCall carries: config.json is not read again', async () => {
  const agent = new FakeAgent();
  answerCreate(agent, 4711);
  const { runtime } = newRuntime(agent);
  const hosts = path.join(scratch('files'), 'hosts');
  fs.writeFileSync(hosts, '127.0.0.1 localhost\n');
  const b = bundle('nginx', hosts);
  const create = createCallOf(createRequest('c1', b.dir, layer()));
  fs.rmSync(path.join(b.dir, 'config.json'));
  const res = decode<{ pid: number }>(`${T}CreateTaskResponse`, await runtime.call(create));
  assert.is(res.pid, 4711);
  const sent = agent.callsOf('Create').map((c) => c.request as CreateRequest);
  assert.ok(sent.length > 0 && sent.every((c) => c.spec.equals(b.config)), 'the bytes read when the call was made');
  assert.is(sent[0].container_name, 'nginx', 'from the parsed spec\'s annotations');
  assert.equal(sent[0].files.map((f) => f.destination), ['/etc/hosts'], 'from the parsed spec\'s mounts');
  assert.equal(runtime.watchedMounts(), { c1: ['/etc/hosts'] }, 'its mounts watched');
});

test('Connect after Delete asks the agent (State): the remembered pid is forgotten with the task', async () => {
  const agent = new FakeAgent();
  answerCreate(agent, 4711);
  agent.answer('Delete', () => ({ response: encode(`${T}DeleteResponse`, { pid: 4711, exit_status: 0 }) }));
  agent.answer('State', () => {
    throw new DpuAgentError('call', 'DPU agent: NOT_FOUND: container c1: not found', Code.NOT_FOUND);
  });
  const { runtime } = newRuntime(agent);
  const hosts = path.join(scratch('files'), 'hosts');
  fs.writeFileSync(hosts, '');
  await call(runtime, 'Create', createRequest('c1', bundle('nginx', hosts).dir, layer()));
  assert.is((await connect(runtime, 'c1')).task_pid, 4711);
  await call(runtime, 'Delete', encode(`${T}DeleteRequest`, { id: 'c1' }));
  assert.equal(runtime.relayedProcesses(), [], 'its relay forgotten');
  const err = await rejection(connect(runtime, 'c1'));
  assert.is(err.code, Code.NOT_FOUND, 'the agent\'s answer to State');
  assert.is(agent.callsOf('State').length, 1);
  assert.equal(decode(`${T}StateRequest`, agent.callsOf('State')[0].request.request), { id: 'c1', exec_id: '' });
});

test('agent errors: a call error keeps its code (NOT_FOUND), an unreachable agent is UNAVAILABLE; both name the method', async () => {
  const agent = new FakeAgent();
  agent.answer('Kill', () => {
    throw new DpuAgentError('call', 'DPU agent at 192.168.100.2:7443: NOT_FOUND: container c9: not found', Code.NOT_FOUND);
  });
  agent.answer('State', () => {
    throw new DpuAgentError('unreachable', 'DPU agent at 192.168.100.2:7443 unreachable: connect ECONNREFUSED');
  });
  agent.answer('Create', () => {
    throw new DpuAgentError('call', 'DPU agent at 192.168.100.2:7443: NOT_FOUND: pod pod-1: not found', Code.NOT_FOUND);
  });
  const { runtime } = newRuntime(agent);

  const kill = encode(`${T}KillRequest`, { id: 'c9', signal: 9 });
  const notFound = await rejection(call(runtime, 'Kill', kill));
  assert.instance(notFound, RpcError);
  assert.is(notFound.code, Code.NOT_FOUND);
  assert.match(notFound.message, /^Kill on the DPU: /);
  assert.match(notFound.message, /container c9: not found/);
  assert.equal(agent.callsOf('Kill')[0].request, { pod_id: 'pod-1', request: kill }, 'relayed as containerd encoded it');

  const unavailable = await rejection(call(runtime, 'State', encode(`${T}StateRequest`, { id: 'c9' })));
  assert.instance(unavailable, RpcError);
  assert.is(unavailable.code, Code.UNAVAILABLE);
  assert.match(unavailable.message, /^State on the DPU: .*unreachable/);

  const hosts = path.join(scratch('files'), 'hosts');
  fs.writeFileSync(hosts, '');
  const created = await rejection(call(runtime, 'Create', createRequest('c9', bundle('c9', hosts).dir, layer())));
  assert.instance(created, RpcError);
  assert.is(created.code, Code.NOT_FOUND);
  assert.match(created.message, /^create c9 on the DPU: /);

  const checkpoint = await rejection(call(runtime, 'Checkpoint', encode(`${T}CheckpointTaskRequest`, { id: 'c9' })));
  assert.is(checkpoint.code, Code.UNIMPLEMENTED);
  assert.is(agent.callsOf('Checkpoint').length, 0, 'never asked of the agent');

  const bare = await rejection(runtime.call(taskCall('Create', createRequest('c9', bundle('c9', hosts).dir, layer()))));
  assert.is(bare.code, Code.INTERNAL, 'a Create without its decoded request and spec');
});

test('Wait: an unreachable agent (restarting) is asked again until it answers; a call error is not retried', async () => {
  const agent = new FakeAgent();
  let attempts = 0;
  agent.answer('Wait', () => {
    if (++attempts < 3) throw new DpuAgentError('unreachable', 'DPU agent at 192.168.100.2:7443 unreachable: Connection dropped');
    return { response: encode(`${T}WaitResponse`, { exit_status: 3 }) };
  });
  const { runtime } = newRuntime(agent);
  const request = encode(`${T}WaitRequest`, { id: 'c1' });
  const started = Date.now();
  const res = decode<{ exit_status: number }>(`${T}WaitResponse`, await call(runtime, 'Wait', request));
  assert.is(res.exit_status, 3);
  const waits = agent.callsOf('Wait');
  assert.is(waits.length, 3, 'asked until it answered');
  assert.ok(Date.now() - started >= 2 * RETRY_MS - 20, 'with a pause between attempts');
  for (const w of waits) {
    assert.equal(w.request, { pod_id: 'pod-1', request });
    assert.is(w.opts.timeoutMs, null, 'no deadline: Wait lasts as long as the process');
  }

  agent.answer('Wait', () => {
    throw new DpuAgentError('call', 'DPU agent: NOT_FOUND: process c2: not found', Code.NOT_FOUND);
  });
  const err = await rejection(call(runtime, 'Wait', encode(`${T}WaitRequest`, { id: 'c2' })));
  assert.is(err.code, Code.NOT_FOUND);
  assert.match(err.message, /^Wait on the DPU: /);
  assert.is(agent.callsOf('Wait').length, 4, 'asked once');
});

test('Wait: cancelled by containerd, it ends CANCELLED', async () => {
  const agent = new FakeAgent();
  // As the client does: the abort cancels the call, which fails CANCELLED.
  agent.answer('Wait', (_req, opts) => new Promise((_, reject) => {
    opts.signal?.addEventListener('abort', () => reject(new DpuAgentError('call', 'DPU agent: CANCELLED: Cancelled on client', Code.CANCELLED)), { once: true });
  }));
  const { runtime } = newRuntime(agent);
  const ac = new AbortController();
  const waiting = rejection(call(runtime, 'Wait', encode(`${T}WaitRequest`, { id: 'c1' }), ac.signal));
  await until('the Wait call', () => agent.callsOf('Wait').length === 1);
  assert.is(agent.callsOf('Wait')[0].opts.signal, ac.signal, 'the signal reaches the agent call');
  ac.abort();
  const err = await waiting;
  assert.instance(err, RpcError);
  assert.is(err.code, Code.CANCELLED);
  assert.is(agent.callsOf('Wait').length, 1, 'not asked again');

  // The agent drops the call and, while the client tells why (its TLS probe),
  // containerd cancels: the failure is 'unreachable', but the Wait is over.
  let drop: ((err: Error) => void) | undefined;
  agent.answer('Wait', () => new Promise((_, reject) => (drop = reject)));
  const cancelled = new AbortController();
  const ending = rejection(call(runtime, 'Wait', encode(`${T}WaitRequest`, { id: 'c1' }), cancelled.signal));
  await until('the second Wait call', () => drop !== undefined);
  cancelled.abort();
  drop!(new DpuAgentError('unreachable', 'DPU agent at 192.168.100.2:7443 unreachable: Connection dropped'));
  const settled = await Promise.race([ending, sleep(3 * RETRY_MS).then(() => null)]);
  assert.ok(settled, 'ended, not asked again and again');
  assert.is(settled!.code, Code.CANCELLED);
  assert.is(agent.callsOf('Wait').length, 2, 'not asked again');

  // Cancelled during the pause before asking an unreachable agent again: not asked again.
  agent.answer('Wait', () => Promise.reject(new DpuAgentError('unreachable', 'DPU agent at 192.168.100.2:7443 unreachable: connect ECONNREFUSED')));
  const paused = new AbortController();
  const before = agent.callsOf('Wait').length;
  const inPause = rejection(call(runtime, 'Wait', encode(`${T}WaitRequest`, { id: 'c1' }), paused.signal));
  await until('the third Wait call', () => agent.callsOf('Wait').length === before + 1);
  await sleep(RETRY_MS / 5);
  paused.abort();
  const over = await Promise.race([inPause, sleep(3 * RETRY_MS).then(() => null)]);
  assert.ok(over, 'ended');
  assert.is(over!.code, Code.CANCELLED);
  assert.is(agent.callsOf('Wait').length, before + 1, 'no Wait sent after the cancel');
});

test('Events: CreatePod opens the stream after 0; each event is forwarded; a broken stream reopens after the last sequence', async () => {
  const agent = new FakeAgent();
  const { runtime, events, seen } = newRuntime(agent);
  const [info, again] = await Promise.all([runtime.podInfo(), runtime.podInfo()]);
  assert.is(info.netns_path, '/run/netns/dpu-pod-1');
  assert.is(again, info);
  assert.is(agent.callsOf('CreatePod').length, 1, 'one CreatePod for both');
  assert.equal(agent.streamsOf('Events').map((s) => s.request), [{ pod_id: 'pod-1', after: 0 }]);

  const [first] = agent.streamsOf('Events');
  const event = (sequence: number, topic: string): TaskEventMessage => ({ sequence, topic, forward: Buffer.from(`forward ${sequence}`) });
  const changes = seen.changes;
  first.emit('data', event(1, '/tasks/create'));
  first.emit('data', event(2, '/tasks/start'));
  assert.equal(events.map((e) => [e.topic, e.forward.toString()]), [['/tasks/create', 'forward 1'], ['/tasks/start', 'forward 2']], 'in order');
  assert.is(seen.changes, changes + 2, 'onChange for each');
  assert.is(runtime.lastEventSequence, 2);

  // The agent restarts: the stream emits an error and then the status.
  first.emit('error', Object.assign(new Error('14 UNAVAILABLE: Connection dropped'), { code: 14 }));
  first.emit('status', { code: 14, details: 'Connection dropped', metadata: null });
  assert.is(agent.streamsOf('Events').length, 1, 'not at once');
  await until('the Events stream reopened', () => agent.streamsOf('Events').length === 2);
  await sleep(RETRY_MS / 2);
  const streams = agent.streamsOf('Events');
  assert.is(streams.length, 2, 'reopened once, not once per signal of the broken stream');
  assert.equal(streams[1].request, { pod_id: 'pod-1', after: 2 });
  streams[1].emit('data', event(3, '/tasks/exit'));
  assert.is(events.length, 3);
  assert.is(runtime.lastEventSequence, 3);

  // A late signal from the broken stream reopens nothing: it is no longer the current one.
  first.emit('error', new Error('late'));
  await sleep(RETRY_MS + 100);
  assert.is(agent.streamsOf('Events').length, 2);
});

test('podInfo: a failed CreatePod is asked again on next use', async () => {
  const agent = new FakeAgent();
  let fail = true;
  agent.answer('CreatePod', (req) => {
    if (fail) throw new DpuAgentError('unreachable', 'DPU agent unreachable');
    return { pod_id: req.pod_id, netns_path: '', netns_inode: 0, cgroup_parent: '', containers: [] };
  });
  const { runtime } = newRuntime(agent);
  const err = await rejection(runtime.podInfo());
  assert.match(err.message, /unreachable/);
  assert.is(agent.streamsOf('Events').length, 0, 'no events before the pod exists');
  fail = false;
  await runtime.podInfo();
  assert.is(agent.callsOf('CreatePod').length, 2);
  assert.is(agent.streamsOf('Events').length, 1);
});

test('resume: CreatePod, events after the last forwarded, every relayed process\'s output followed again; Delete stops relaying it', async () => {
  const dir = scratch('fifos');
  const agent = new FakeAgent();
  agent.answer('Delete', () => ({ response: encode(`${T}DeleteResponse`, { pid: 77, exit_status: 0 }) }));
  const { runtime, seen } = newRuntime(agent);
  const processes: RelayedProcess[] = [
    { id: 'c1', execId: '', paths: { stdin: '', stdout: fifo(dir, 'c1-out'), stderr: fifo(dir, 'c1-err') } },
    { id: 'c1', execId: 'e1', paths: { stdin: '', stdout: fifo(dir, 'e1-out'), stderr: '' } },
  ];
  await runtime.resume({ lastEvent: 41, processes, link: undefined });

  assert.is(agent.callsOf('CreatePod').length, 1);
  assert.equal(agent.streamsOf('Events').map((s) => s.request), [{ pod_id: 'pod-1', after: 41 }]);
  assert.is(runtime.lastEventSequence, 41);
  assert.equal(
    agent.streamsOf('Output').map((s) => s.request),
    [{ pod_id: 'pod-1', container_id: 'c1', exec_id: '' }, { pod_id: 'pod-1', container_id: 'c1', exec_id: 'e1' }],
    'one Output stream per process',
  );
  assert.equal(runtime.relayedProcesses(), processes);
  assert.is(seen.changes, 2, 'told of each process relayed');

  // Delete of the exec while its last output is on its way: the output and its
  // end reach containerd's fifo first, and only then is the agent asked.
  // containerd's reader is open first, as containerd opens it before Create: a
  // fifo's open for reading waits for a writer, which the relay's end removes.
  const reader = fs.createReadStream(processes[1].paths.stdout);
  await once(reader, 'open');
  const reading = new Promise<string>((resolve, reject) => {
    let text = '';
    reader.on('data', (d) => (text += d)).on('end', () => resolve(text)).on('error', reject);
  });
  const [c1Output, e1Output] = agent.streamsOf('Output');
  const changes = seen.changes;
  const del = encode(`${T}DeleteRequest`, { id: 'c1', exec_id: 'e1' });
  const deleting = call(runtime, 'Delete', del);
  await sleep(50);
  assert.is(agent.callsOf('Delete').length, 0, 'not before the output has ended');
  e1Output.emit('data', { stream: 'STDOUT', data: Buffer.from('bye\n'), eof: true });
  const res = decode<{ pid: number }>(`${T}DeleteResponse`, await deleting);
  assert.is(await reading, 'bye\n');
  assert.is(res.pid, 77);
  assert.equal(agent.callsOf('Delete')[0].request, { pod_id: 'pod-1', request: del });
  assert.equal(runtime.relayedProcesses(), [processes[0]], 'the exec no longer relayed');
  assert.is(seen.changes, changes + 1, 'told');

  // The container itself: the agent has no such process any more (its output is over).
  c1Output.emit('error', Object.assign(new Error('5 NOT_FOUND: no such process'), { code: Code.NOT_FOUND }));
  await call(runtime, 'Delete', encode(`${T}DeleteRequest`, { id: 'c1' }));
  assert.equal(runtime.relayedProcesses(), []);
  assert.is(agent.streamsOf('Output').length, 2, 'NOT_FOUND is not followed again');
});

test('Exec: relayed, then its stdio followed on an Output stream of its own', async () => {
  const dir = scratch('fifos');
  const agent = new FakeAgent();
  agent.answer('Exec', () => ({ response: Buffer.alloc(0) }));
  const { runtime } = newRuntime(agent);
  const stdout = fifo(dir, 'out');
  const exec = encode(`${T}ExecProcessRequest`, { id: 'c1', exec_id: 'sh', stdout, stderr: '' });
  await call(runtime, 'Exec', exec);
  assert.equal(agent.callsOf('Exec')[0].request, { pod_id: 'pod-1', request: exec });
  assert.equal(runtime.relayedProcesses(), [{ id: 'c1', execId: 'sh', paths: { stdin: '', stdout, stderr: '' } }]);
  assert.equal(agent.streamsOf('Output').map((s) => s.request), [{ pod_id: 'pod-1', container_id: 'c1', exec_id: 'sh' }]);
});

test('shutdown: streams cancelled, RemovePod once, the shared client left open; nothing reopens after', async () => {
  const dir = scratch('fifos');
  const agent = new FakeAgent();
  const { runtime } = newRuntime(agent);
  await runtime.resume({ lastEvent: 0, processes: [{ id: 'c1', execId: '', paths: { stdin: '', stdout: fifo(dir, 'out'), stderr: '' } }], link: undefined });
  const [events] = agent.streamsOf('Events');
  const [output] = agent.streamsOf('Output');
  await runtime.shutdown();
  assert.ok(events.cancelled, 'Events cancelled');
  assert.ok(output.cancelled, 'Output cancelled');
  assert.equal(agent.callsOf('RemovePod').map((c) => c.request), [{ pod_id: 'pod-1' }]);
  assert.is(agent.closed, false, 'the node\'s client is not the pod\'s to close');

  // A cancelled stream that still reports CANCELLED must not reopen anything.
  events.emit('error', Object.assign(new Error('1 CANCELLED'), { code: Code.CANCELLED }));
  output.emit('error', Object.assign(new Error('1 CANCELLED'), { code: Code.CANCELLED }));
  await sleep(RETRY_MS + 100);
  assert.is(agent.streams.length, 2, 'no stream opened again');

  // A runtime that never made its pod removes none.
  const idle = new FakeAgent();
  await newRuntime(idle).runtime.shutdown();
  assert.equal(idle.calls, []);
});


function keyInTar(tar: Buffer, key: string): string {
  return fileInTar(tar, key, scratch('untar'));
}

/** A container as the kubelet makes one: a ConfigMap volume, /etc/hosts, and its termination-message file. */
function kubeletContainer(name: string): { dir: string; volume: string; hosts: string; terminationLog: string } {
  const files = scratch(`kubelet-${name}`);
  const volume = path.join(files, 'pods', 'uid-1', 'volumes', 'kubernetes.io~configmap', 'config');
  kubeletWrite(volume, '..2024_01_01_00_00_00.1', { 'app.conf': 'v1' });
  const hosts = path.join(files, 'hosts');
  fs.writeFileSync(hosts, '127.0.0.1 localhost\n');
  const terminationLog = path.join(files, 'pods', 'uid-1', 'containers', name, '8badf00d');
  fs.mkdirSync(path.dirname(terminationLog), { recursive: true });
  fs.writeFileSync(terminationLog, '');
  const dir = scratch(`bundle-${name}`);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({
    ociVersion: '1.0.2',
    annotations: { 'io.kubernetes.cri.container-name': name, 'io.kubernetes.cri.container-type': 'container' },
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc' },
      { destination: '/etc/hosts', type: 'bind', source: hosts, options: ['rbind', 'rprivate', 'rw'] },
      { destination: '/etc/config', type: 'bind', source: volume, options: ['rbind', 'rprivate', 'ro'] },
      { destination: '/dev/termination-log', type: 'bind', source: terminationLog, options: ['rbind', 'rprivate', 'rw'] },
    ],
  }));
  return { dir, volume, hosts, terminationLog };
}

test('mounts kept live: a ConfigMap\'s `..data` swap reaches the agent (UpdateFiles) within seconds; the termination log is not sent; Delete ends the watch', async () => {
  const agent = new FakeAgent();
  answerCreate(agent, 4711);
  agent.answer('UpdateFiles', () => ({}));
  agent.answer('Delete', () => ({ response: encode(`${T}DeleteResponse`, { pid: 4711, exit_status: 0 }) }));
  const { runtime } = newRuntime(agent);
  const c = kubeletContainer('proxy');
  await call(runtime, 'Create', createRequest('c1', c.dir, layer()));
  const create = agent.callsOf('Create').at(-1)!.request as CreateRequest;
  assert.equal(create.files.map((f) => [f.destination, f.directory, f.termination_log]), [['/etc/hosts', false, false], ['/etc/config', true, false], ['/dev/termination-log', false, true]]);
  assert.equal(runtime.watchedMounts(), { c1: ['/etc/hosts', '/etc/config'] });

  kubeletWrite(c.volume, '..2024_01_01_00_01_00.2', { 'app.conf': 'v2' });
  await until('UpdateFiles', () => agent.callsOf('UpdateFiles').length === 1, 3000);
  const update = agent.callsOf('UpdateFiles')[0];
  assert.is(update.request.pod_id, 'pod-1');
  assert.is(update.request.container_id, 'c1');
  assert.equal(update.request.files.map((f: MountedFile) => f.destination), ['/etc/config'], 'only what changed');
  assert.is(keyInTar(update.request.files[0].content, 'app.conf'), 'v2');

  fs.writeFileSync(c.terminationLog, 'written on the host');
  await sleep(400);
  assert.is(agent.callsOf('UpdateFiles').length, 1, 'the termination log goes the other way only');

  await call(runtime, 'Delete', encode(`${T}DeleteRequest`, { id: 'c1' }));
  assert.equal(runtime.watchedMounts(), {});
  kubeletWrite(c.volume, '..2024_01_01_00_02_00.3', { 'app.conf': 'v3' });
  await sleep(400);
  assert.is(agent.callsOf('UpdateFiles').length, 1, 'nothing after Delete');
});

test('termination message: Wait of the init writes the agent\'s message (capped) into the kubelet\'s file before answering; an exec\'s does not; an exit event writes it before it is forwarded', async () => {
  const agent = new FakeAgent();
  answerCreate(agent, 4711);
  const c = kubeletContainer('proxy');
  const atForward: string[] = [];
  const { runtime, events } = newRuntime(agent, () => atForward.push(fs.readFileSync(c.terminationLog).subarray(-14).toString()));
  await call(runtime, 'Create', createRequest('c1', c.dir, layer()));

  const long = Buffer.concat([Buffer.alloc(3000, 'a'), Buffer.alloc(4093, 'b'), Buffer.from('END')]);
  let waitMessage = Buffer.from('exec output, not a message');
  agent.answer('Wait', () => ({ response: encode(`${T}WaitResponse`, { exit_status: 1 }), termination_message: waitMessage }));
  await call(runtime, 'Wait', encode(`${T}WaitRequest`, { id: 'c1', exec_id: 'e1' }));
  assert.is(fs.readFileSync(c.terminationLog, 'utf8'), '', 'an exec\'s Wait writes nothing');
  waitMessage = long;
  const res = decode<{ exit_status: number }>(`${T}WaitResponse`, await call(runtime, 'Wait', encode(`${T}WaitRequest`, { id: 'c1' })));
  assert.is(res.exit_status, 1);
  const written = fs.readFileSync(c.terminationLog);
  assert.is(written.length, 4096, 'capped at the kubelet\'s 4096 bytes');
  assert.ok(written.equals(long.subarray(long.length - 4096)), 'its end, as the kubelet reads it');

  // The exit event may come first: the file is written before containerd sees it.
  const [stream] = agent.streamsOf('Events');
  const exitEvent = (containerId: string, id: string): Buffer => {
    const exit = encodeAny('containerd.events.TaskExit', new MessageWriter().bytes(1, containerId).bytes(2, id).varint(4, 1).finish());
    return new MessageWriter().message(1, new MessageWriter().bytes(2, 'k8s.io').bytes(3, '/tasks/exit').message(4, exit).finish()).finish();
  };
  stream.emit('data', { sequence: 1, topic: '/tasks/exit', forward: exitEvent('c1', 'e1'), termination_message: Buffer.from('not the init') });
  stream.emit('data', { sequence: 2, topic: '/tasks/exit', forward: exitEvent('c1', 'c1'), termination_message: Buffer.from('config invalid') });
  assert.is(events.length, 2, 'both forwarded');
  assert.equal(atForward, ['bbbbbbbbbbbEND', 'config invalid'], 'an exec\'s exit changes nothing; the init\'s message is in the file when its exit is forwarded');
  assert.is(fs.readFileSync(c.terminationLog, 'utf8'), 'config invalid');
});

test('resume: a live container\'s mounts sent again at once and watched; an exited one\'s not, but its termination message still written at Wait', async () => {
  const agent = new FakeAgent();
  agent.answer('UpdateFiles', () => ({}));
  agent.answer('Wait', () => ({ response: encode(`${T}WaitResponse`, { exit_status: 2 }), termination_message: Buffer.from('it ended') }));
  const { runtime } = newRuntime(agent);
  const live = kubeletContainer('proxy');
  const exited = kubeletContainer('agent');
  await runtime.resume({ lastEvent: 0, processes: [], link: undefined, containers: [{ id: 'c1', bundle: live.dir, live: true }, { id: 'c2', bundle: exited.dir, live: false }, { id: 'c3', bundle: path.join(root, 'gone'), live: true }] });
  await until('the resend', () => agent.callsOf('UpdateFiles').length === 1);
  const resend = agent.callsOf('UpdateFiles')[0].request;
  assert.is(resend.container_id, 'c1');
  assert.equal(resend.files.map((f: MountedFile) => f.destination), ['/etc/hosts', '/etc/config'], 'everything but the termination log');
  assert.equal(runtime.watchedMounts(), { c1: ['/etc/hosts', '/etc/config'] });
  kubeletWrite(live.volume, '..2024_01_01_00_01_00.2', { 'app.conf': 'v2' });
  await until('the update after the resend', () => agent.callsOf('UpdateFiles').length === 2, 3000);

  await call(runtime, 'Wait', encode(`${T}WaitRequest`, { id: 'c2' }));
  assert.is(fs.readFileSync(exited.terminationLog, 'utf8'), 'it ended');
  // An answer without a message (an earlier agent's) leaves the file as it is.
  agent.answer('Wait', () => ({ response: encode(`${T}WaitResponse`, { exit_status: 2 }), termination_message: Buffer.alloc(0) }));
  await call(runtime, 'Wait', encode(`${T}WaitRequest`, { id: 'c2' }));
  assert.is(fs.readFileSync(exited.terminationLog, 'utf8'), 'it ended');

  await runtime.shutdown();
  assert.equal(runtime.watchedMounts(), {}, 'shutdown ends every watch');
});

test('health and capacity: the agent\'s', async () => {
  const agent = new FakeAgent();
  agent.answer('Health', () => ({ ok: true, version: '0.1.0', uptime_seconds: 5, problem: '', listen_address: '192.168.100.2:7443' }));
  agent.answer('Capacity', () => ({ cpus: 8, cpuset: '0-7', memory_total_bytes: 16 * 2 ** 30, memory_free_bytes: 8 * 2 ** 30, running_containers: 2 }));
  const { runtime } = newRuntime(agent);
  assert.is((await runtime.health()).version, '0.1.0');
  assert.is((await runtime.capacity()).cpuset, '0-7');
});

test.run();
