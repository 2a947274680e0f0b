// The C launcher (build/containerd-shim-heteropod-v2) and the TypeScript shim
// must agree on the pod's socket: same group, same hash, same state_dir.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { encode } from '../../src/proto';
import { groupPaths } from '../../src/shim/paths';
import { skip } from '../lib/skip';

const launcher = path.resolve(__dirname, '../../../build/containerd-shim-heteropod-v2');
const built = (): boolean => fs.existsSync(launcher) || (skip('shim-launcher', 'build/containerd-shim-heteropod-v2 not built (make build-c)'), false);

/** Our runtime options as containerd passes them on `start`'s stdin: the config file's path. */
function runtimeOptions(config: string): Buffer {
  return encode('google.protobuf.Any', { type_url: 'runtimeoptions.v1.Options', value: encode('runtimeoptions.v1.Options', { config_path: config }) });
}

interface Scratch {
  dir: string;
  bundle: string;
  config: string; // where the test writes its shim.toml
}

/** A scratch directory with an empty bundle in it, removed after `fn`. */
async function inScratch(fn: (s: Scratch) => void | Promise<void>): Promise<void> {
  const dir = fs.mkdtempSync('/tmp/hp-launch-');
  try {
    const bundle = path.join(dir, 'bundle');
    fs.mkdirSync(bundle);
    await fn({ dir, bundle, config: path.join(dir, 'shim.toml') });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function writeSpec(s: Scratch, annotations: Record<string, string>): void {
  fs.writeFileSync(path.join(s.bundle, 'config.json'), JSON.stringify({ ociVersion: '1.0.2', annotations }));
}

/** A runc shim that refuses to start, saying `says`. */
function fakeRuncShim(s: Scratch, says: string): string {
  const file = path.join(s.dir, 'fake-runc-shim');
  fs.writeFileSync(file, `#!/bin/sh\necho "${says}" >&2\nexit 3\n`, { mode: 0o755 });
  return file;
}

/** `start` as containerd runs it: in the bundle, our runtime options (naming s.config) on stdin. */
function start(s: Scratch, id: string, flags: string[] = []): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(launcher, ['-namespace', 'k8s.io', '-address', '/run/c.sock', ...flags, '-id', id, 'start'], { cwd: s.bundle, input: runtimeOptions(s.config) });
  return { status: r.status, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

test('start finds the socket TypeScript computes, writes address and the start record', async () => {
  if (!built()) return;
  const server = net.createServer((c) => c.destroy());
  await inScratch(async (s) => {
    writeSpec(s, { 'io.kubernetes.cri.container-type': 'container', 'io.kubernetes.cri.sandbox-id': 'pod-abc' });
    fs.writeFileSync(s.config, `# test\ndebug = false\nstate_dir = "${s.dir}/state"\n[runc]\nroot = "/x"\n`);
    const paths = groupPaths(`${s.dir}/state`, '/run/c.sock', 'k8s.io', 'pod-abc');
    fs.mkdirSync(path.dirname(paths.socket), { recursive: true });
    await new Promise<void>((r) => server.listen(paths.socket, r));
    const r = start(s, 'ctr-1', ['-publish-binary', '/usr/bin/containerd']);
    assert.is(r.status, 0, r.stderr);
    assert.is(r.stdout, `unix://${paths.socket}`);
    assert.is(fs.readFileSync(path.join(s.bundle, 'address'), 'utf8'), `unix://${paths.socket}`);
    assert.equal(JSON.parse(fs.readFileSync(path.join(s.bundle, 'heteropod-shim.json'), 'utf8')), { configPath: s.config, group: 'pod-abc' });
  }).finally(() => server.close());
});

test('a pod without heteropod.io/offload goes to runc’s shim; a failed start leaves nothing behind', async () => {
  if (!built()) return;
  await inScratch((s) => {
    // `heteropod.io/offload-policy` alone does not ask for offload, nor does the key inside a value.
    writeSpec(s, { 'io.kubernetes.cri.sandbox-id': 'pod-p', 'heteropod.io/offload-policy': 'prefer', note: '"heteropod.io/offload": x' });
    // A runc shim that fails: `start` reports it and rolls back its socket and the pod's state.
    const fakeRunc = fakeRuncShim(s, 'fake runc shim refuses: $*');
    fs.writeFileSync(s.config, `state_dir = '${s.dir}/state'\nrunc_shim = "${fakeRunc}"  # comment\n[runc]\n  root = "/x"\n`);
    const r = start(s, 'pod-p');
    assert.is(r.status, 1);
    assert.match(r.stderr, new RegExp(`start runc shim ${fakeRunc}: exit 3: fake runc shim refuses: -namespace k8s.io -address /run/c.sock -id pod-p start`));
    assert.is(r.stdout, '');
    const paths = groupPaths(`${s.dir}/state`, '/run/c.sock', 'k8s.io', 'pod-p');
    assert.not.ok(fs.existsSync(paths.socket), 'no socket left');
    assert.equal(fs.readdirSync(path.join(s.dir, 'state', 's')), []);
    assert.equal(fs.readdirSync(path.join(s.dir, 'state', 'pods')), [], 'no pod state left');
    assert.not.ok(fs.existsSync(path.join(s.bundle, 'address')));
  });
});

test('a bad config fails start at once for every pod, with the reader’s one line', async () => {
  if (!built()) return;
  await inScratch((s) => {
    fs.writeFileSync(s.config, `state_dir = "${s.dir}/state"\n[dpu]\nadress = "10.0.0.2:7443"\n`);
    // A pod served by runc's shim behind the proxy, and one that offloads.
    const pods: Record<string, string>[] = [{ 'io.kubernetes.cri.sandbox-id': 'pod-p' }, { 'io.kubernetes.cri.sandbox-id': 'pod-o', 'heteropod.io/offload': 'proxy' }];
    for (const annotations of pods) {
      writeSpec(s, annotations);
      const r = start(s, annotations['io.kubernetes.cri.sandbox-id']);
      assert.is(r.status, 1);
      assert.is(r.stderr, `${s.config}:3: dpu.adress: unknown key ([dpu] has address, ca, cert, key, timeout_ms)\n`);
      assert.is(r.stdout, '');
      assert.not.ok(fs.existsSync(path.join(s.dir, 'state')), 'nothing started');
      assert.equal(fs.readdirSync(s.bundle), ['config.json']);
    }
  });
});

test('a bundle without config.json fails start with the one line naming it, and starts nothing', async () => {
  if (!built()) return;
  await inScratch((s) => {
    fs.writeFileSync(s.config, `state_dir = "${s.dir}/state"\n`);
    const r = start(s, 'pod-n');
    assert.is(r.status, 1);
    // Read in launcher-bundle.c; the error rises to main, which prints it once.
    assert.is(r.stderr, 'containerd-shim-heteropod-v2: start: read bundle spec config.json: No such file or directory\n');
    assert.is(r.stdout, '');
    assert.not.ok(fs.existsSync(path.join(s.dir, 'state')), 'nothing started');
    assert.equal(fs.readdirSync(s.bundle), []);
  });
});

test('a pod with heteropod.io/offload also starts runc’s shim (no Node daemon of its own)', async () => {
  if (!built()) return;
  await inScratch((s) => {
    writeSpec(s, { 'io.kubernetes.cri.sandbox-id': 'pod-o', 'heteropod.io/offload': '', 'heteropod.io/offload-policy': 'require' });
    fs.writeFileSync(s.config, `state_dir = "${s.dir}/state"\nrunc_shim = "${fakeRuncShim(s, 'fake runc shim refuses')}"\n`);
    const r = start(s, 'pod-o');
    assert.is(r.status, 1);
    assert.match(r.stderr, /start runc shim .*fake-runc-shim: exit 3: fake runc shim refuses/);
    assert.equal(fs.readdirSync(path.join(s.dir, 'state', 's')), [], 'no socket left');
  });
});

test('an offload policy other than exactly "prefer" or "require" fails start with a short quote (the node daemon\'s rule)', async () => {
  if (!built()) return;
  await inScratch((s) => {
    fs.writeFileSync(s.config, `state_dir = "${s.dir}/state"\n`);
    const cases: [string, string][] = [
      ['require ', 'annotation heteropod.io/offload-policy="require ": must be "prefer" or "require", exactly'],
      ['Prefer', 'annotation heteropod.io/offload-policy="Prefer": must be "prefer" or "require", exactly'],
      ['x'.repeat(10_000), `annotation heteropod.io/offload-policy="${'x'.repeat(64)}"... (10000 characters): must be "prefer" or "require", exactly`],
    ];
    for (const [policy, message] of cases) {
      writeSpec(s, { 'io.kubernetes.cri.sandbox-id': 'pod-b', 'heteropod.io/offload': 'a', 'heteropod.io/offload-policy': policy });
      const r = start(s, 'pod-b');
      assert.is(r.status, 1, policy.slice(0, 20));
      assert.is(r.stderr, `containerd-shim-heteropod-v2: start: ${message}\n`);
      assert.not.ok(fs.existsSync(path.join(s.dir, 'state')), 'nothing started');
    }
  });
});

test('other actions go to the Node implementation', () => {
  if (!built()) return;
  const r = spawnSync(launcher, ['-v']);
  assert.match(r.stdout.toString(), /containerd-shim-heteropod-v2:\n\s+Version/);
});

test.run();
