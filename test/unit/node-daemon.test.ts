// The node daemon at its socket, as a pod's proxy talks to it: Attach first,
// then Create (answered with where the task goes, in Response field 15) and
// the calls of the tasks it holds. No DPU is configured here, so a pod that asks
// for offload runs on the host (prefer) or is refused (require); the daemon's
// pod state follows its proxy's life and a new daemon takes its pods over.
// Every case runs against both daemons: the Node.js one (src/shim/node-daemon.ts,
// in this process) and the one in C (build/heteropod-noded, a child process),
// and under AddressSanitizer.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { encode } from '../../src/proto';
import { readFields, str, uint, bytes } from '../../src/proto/wire';
import { FrameDecoder, FrameType, encodeFrame, encodeRequest } from '../../src/ttrpc';
import { defaultConfig } from '../../src/shim/config';
import { NODE_SERVICE, NodeDaemon } from '../../src/shim/node-daemon';
import { PodAttach, encodeAttach } from '../../src/shim/node-pod';
import { podRecordPath, readPodRecord } from '../../src/shim/pod-record';

const TASK = 'containerd.task.v2.Task';
const build = path.resolve(__dirname, '..', '..', '..', 'build');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-node-'));
const config = { ...defaultConfig(), stateDir: path.join(dir, 'state') };
const socket = path.join(dir, 'node.sock');
const quiet = { write: () => {} };
process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));

/** A daemon under test: started on `socket` with `config`'s state dir, and stopped. */
interface Daemon {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Pods it has taken over from an earlier daemon's records, as it said. */
  takenOver(): number;
}

class NodeJsDaemon implements Daemon {
  private daemon: NodeDaemon | null = null;

  async start(): Promise<void> {
    this.daemon = new NodeDaemon(config, { socket, sink: quiet });
    await this.daemon.listen();
  }

  async stop(): Promise<void> {
    await this.daemon?.close();
  }

  takenOver(): number {
    return this.daemon?.podCount ?? 0;
  }
}

/** build/heteropod-noded (or its AddressSanitizer build) with a shim.toml naming the state dir. */
class CDaemon implements Daemon {
  private child: ChildProcess | null = null;
  private log = '';

  constructor(private readonly binary: string) {}

  async start(): Promise<void> {
    const file = path.join(build, this.binary);
    assert.ok(fs.existsSync(file), `${file} is missing: run "make build"`);
    const toml = path.join(dir, 'shim.toml');
    fs.writeFileSync(toml, `state_dir = "${config.stateDir}"\n`);
    this.log = '';
    const child = spawn(file, ['--config', toml, '--socket', socket], { stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr!.on('data', (d: Buffer) => (this.log += d.toString()));
    this.child = child;
    for (let i = 0; i < 1000 && !this.log.includes('node daemon serving'); i++) {
      if (child.exitCode !== null) assert.unreachable(`${this.binary} exited ${child.exitCode}:\n${this.log}`);
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.match(this.log, 'node daemon serving');
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
    assert.is(child.exitCode, 0, `${this.binary} exit status after SIGTERM:\n${this.log}`);
    assert.not.match(this.log, 'ERROR: AddressSanitizer');
  }

  takenOver(): number {
    return this.log.split('pod taken over from an earlier node daemon').length - 1;
  }
}

/** A connection as the pod's proxy opens one: raw frames, so Response field 15 can be read. */
class ProxyConn {
  private next = 1;
  private readonly waiting = new Map<number, (r: { code: number; message: string; payload: Buffer; placed: number }) => void>();
  private constructor(private readonly sock: net.Socket) {
    const decoder = new FrameDecoder();
    sock.on('data', (chunk: Buffer) => {
      for (const d of decoder.push(chunk)) {
        if (d.kind !== 'frame' || d.frame.type !== FrameType.Response) continue;
        const f = readFields(d.frame.data);
        const status = readFields(bytes(f, 1));
        this.waiting.get(d.frame.streamId)?.({ code: uint(status, 1), message: str(status, 2), payload: bytes(f, 2), placed: uint(f, 15) });
        this.waiting.delete(d.frame.streamId);
      }
    });
  }

  static open(): Promise<ProxyConn> {
    return new Promise((resolve, reject) => {
      const s = net.connect(socket);
      s.once('connect', () => resolve(new ProxyConn(s)));
      s.once('error', reject);
    });
  }

  call(service: string, method: string, payload: Buffer): Promise<{ code: number; message: string; payload: Buffer; placed: number }> {
    const id = this.next;
    this.next += 2;
    const data = encodeRequest({ service, method, payload, timeout_nano: 0, metadata: [] });
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.sock.write(encodeFrame(id, FrameType.Request, data));
    });
  }

  close(): void {
    this.sock.destroy();
  }
}

function bundle(name: string, annotations: Record<string, string>): string {
  const b = path.join(dir, 'bundles', name);
  fs.mkdirSync(b, { recursive: true });
  fs.writeFileSync(path.join(b, 'config.json'), JSON.stringify({ annotations, linux: { namespaces: [{ type: 'network', path: '/var/run/netns/none' }] } }));
  return b;
}

function attachFor(group: string, proxyPid: number): PodAttach {
  return { namespace: 'k8s.io', group, containerdAddress: '/run/test/containerd.sock', ttrpcAddress: '', runcAddress: 'unix:///nonexistent', publishBinary: '', bundle: path.join(dir, 'bundles', group), configPath: '', proxyPid, debug: false };
}

const sandboxAnnotations = (id: string, policy: string) => ({
  'io.kubernetes.cri.container-type': 'sandbox',
  'io.kubernetes.cri.sandbox-id': id,
  'io.kubernetes.cri.sandbox-name': `pod-${id}`,
  'io.kubernetes.cri.sandbox-namespace': 'default',
  'heteropod.io/offload': 'sidecar',
  'heteropod.io/offload-policy': policy,
});
const create = (id: string, b: string): Buffer => encode('containerd.task.v2.CreateTaskRequest', { id, bundle: b });

function cases(name: string, daemon: Daemon): void {
  const test = suite(name);


  test.before(async () => {
    fs.rmSync(config.stateDir, { recursive: true, force: true });
    await daemon.start();
  });

  test.after(async () => {
    await daemon.stop();
  });

  test('a call before Attach: FAILED_PRECONDITION that says to attach', async () => {
    const c = await ProxyConn.open();
    const r = await c.call(TASK, 'State', encode('containerd.task.v2.StateRequest', { id: 'x' }));
    assert.is(r.code, 9);
    assert.match(r.message, 'Attach first');
    c.close();
  });

  test('a malformed Attach: INVALID_ARGUMENT naming what is missing', async () => {
    const c = await ProxyConn.open();
    const r = await c.call(NODE_SERVICE, 'Attach', encodeAttach({ ...attachFor('p0', process.pid), runcAddress: '' }));
    assert.is(r.code, 3);
    assert.match(r.message, 'runc_address');
    c.close();
  });

  test('prefer without a DPU: the sandbox and its containers go to runc (placed=2); the record says why', async () => {
    const c = await ProxyConn.open();
    const b = bundle('p1', sandboxAnnotations('p1', 'prefer'));
    assert.is((await c.call(NODE_SERVICE, 'Attach', encodeAttach(attachFor('p1', process.pid)))).code, 0);
    const r = await c.call(TASK, 'Create', create('p1', b));
    assert.equal([r.code, r.placed], [0, 2]);
    const cb = bundle('p1-sidecar', { 'io.kubernetes.cri.container-type': 'container', 'io.kubernetes.cri.container-name': 'sidecar', 'io.kubernetes.cri.sandbox-id': 'p1' });
    const r2 = await c.call(TASK, 'Create', create('p1-sidecar', cb));
    assert.equal([r2.code, r2.placed], [0, 2]);
    const record = readPodRecord(podRecordPath(config.stateDir, 'p1'))!;
    assert.match(record.dpu_problem, 'no DPU agent is configured');
    assert.equal(record.containers.map((x) => [x.id, x.where]), [['p1', 'host'], ['p1-sidecar', 'host']]);
    assert.is(record.node!.attach.proxyPid, process.pid);
    // The task is runc's: the daemon does not know it.
    assert.is((await c.call(TASK, 'State', encode('containerd.task.v2.StateRequest', { id: 'p1-sidecar' }))).code, 5);
    c.close();
  });

  test('require without a DPU: the sandbox Create fails with the reason, nothing placed', async () => {
    const c = await ProxyConn.open();
    const b = bundle('p2', sandboxAnnotations('p2', 'require'));
    await c.call(NODE_SERVICE, 'Attach', encodeAttach(attachFor('p2', process.pid)));
    const r = await c.call(TASK, 'Create', create('p2', b));
    assert.is(r.code, 9);
    assert.is(r.placed, 0);
    assert.match(r.message, 'heteropod.io/offload-policy=require: no DPU agent is configured');
    c.close();
  });

  test('calls right behind Attach wait for it (the proxy pipelines them)', async () => {
    const c = await ProxyConn.open();
    const b = bundle('p3', sandboxAnnotations('p3', 'prefer'));
    const [a, r] = await Promise.all([c.call(NODE_SERVICE, 'Attach', encodeAttach(attachFor('p3', process.pid))), c.call(TASK, 'Create', create('p3', b))]);
    assert.equal([a.code, r.code, r.placed], [0, 0, 2]);
    c.close();
  });

  test('the pod goes when its proxy has exited and its last connection closed: the record is removed', async () => {
    const gone = spawnSync('true').pid!; // a pid that has exited
    const c = await ProxyConn.open();
    const b = bundle('p4', sandboxAnnotations('p4', 'prefer'));
    await c.call(NODE_SERVICE, 'Attach', encodeAttach(attachFor('p4', gone)));
    await c.call(TASK, 'Create', create('p4', b));
    assert.ok(fs.existsSync(podRecordPath(config.stateDir, 'p4')));
    c.close();
    for (let i = 0; i < 250 && fs.existsSync(podRecordPath(config.stateDir, 'p4')); i++) await new Promise((r) => setTimeout(r, 20));
    assert.not.ok(fs.existsSync(podRecordPath(config.stateDir, 'p4')));
    // p1's proxy (this process) lives: its record stays.
    assert.ok(fs.existsSync(podRecordPath(config.stateDir, 'p1')));
  });

  test('a new daemon takes over the pods whose proxies live, and cleans up after the others', async () => {
    await daemon.stop();
    // A pod whose proxy exited while no daemon ran.
    const gone = spawnSync('true').pid!;
    const file = podRecordPath(config.stateDir, 'p5');
    fs.writeFileSync(file, JSON.stringify({ pod_id: 'p5', name: '', namespace: '', offload: ['sidecar'], policy: 'prefer', dpu_problem: 'x', containers: [], node: { attach: attachFor('p5', gone), tasks: [], last_event: 0, processes: [] } }));
    await daemon.start();
    const c = await ProxyConn.open();
    assert.is((await c.call(NODE_SERVICE, 'Attach', encodeAttach(attachFor('p1', process.pid)))).code, 0);
    assert.is(daemon.takenOver(), 2); // p1 and p3, taken over; not p5
    assert.not.ok(fs.existsSync(file));
    c.close();
  });

  test.run();
}

cases('node daemon (Node.js)', new NodeJsDaemon());
cases('node daemon (C)', new CDaemon('heteropod-noded'));
cases('node daemon (C, AddressSanitizer)', new CDaemon('heteropod-noded-asan'));
