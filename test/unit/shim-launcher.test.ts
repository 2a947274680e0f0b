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

/** Our runtime options as containerd passes them on `start`'s stdin: the config file's path. */
function runtimeOptions(config: string): Buffer {
  return encode('google.protobuf.Any', { type_url: 'runtimeoptions.v1.Options', value: encode('runtimeoptions.v1.Options', { config_path: config }) });
}

test('start finds the socket TypeScript computes, writes address and the start record', async () => {
  if (!fs.existsSync(launcher)) return skip('shim-launcher', 'build/containerd-shim-heteropod-v2 not built (make build-c)');
  const dir = fs.mkdtempSync('/tmp/hp-launch-');
  const server = net.createServer((s) => s.destroy());
  try {
    const bundle = path.join(dir, 'bundle');
    fs.mkdirSync(bundle);
    fs.writeFileSync(path.join(bundle, 'config.json'), JSON.stringify({ ociVersion: '1.0.2', annotations: { 'io.kubernetes.cri.container-type': 'container', 'io.kubernetes.cri.sandbox-id': 'pod-abc' } }));
    const config = path.join(dir, 'shim.toml');
    fs.writeFileSync(config, `# test\ndebug = false\nstate_dir = "${dir}/state"\n[runc]\nroot = "/x"\n`);
    const paths = groupPaths(`${dir}/state`, '/run/c.sock', 'k8s.io', 'pod-abc');
    fs.mkdirSync(path.dirname(paths.socket), { recursive: true });
    await new Promise<void>((r) => server.listen(paths.socket, r));
    const options = runtimeOptions(config);
    const r = spawnSync(launcher, ['-namespace', 'k8s.io', '-address', '/run/c.sock', '-publish-binary', '/usr/bin/containerd', '-id', 'ctr-1', 'start'], { cwd: bundle, input: options });
    assert.is(r.status, 0, r.stderr.toString());
    assert.is(r.stdout.toString(), `unix://${paths.socket}`);
    assert.is(fs.readFileSync(path.join(bundle, 'address'), 'utf8'), `unix://${paths.socket}`);
    assert.equal(JSON.parse(fs.readFileSync(path.join(bundle, 'heteropod-shim.json'), 'utf8')), { configPath: config, group: 'pod-abc' });
  } finally {
    server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a pod without heteropod.io/offload goes to runc’s shim; a failed start leaves nothing behind', () => {
  if (!fs.existsSync(launcher)) return skip('shim-launcher', 'not built');
  const dir = fs.mkdtempSync('/tmp/hp-launch-');
  try {
    const bundle = path.join(dir, 'bundle');
    fs.mkdirSync(bundle);
    // `heteropod.io/offload-policy` alone does not ask for offload, nor does the key inside a value.
    const annotations = { 'io.kubernetes.cri.sandbox-id': 'pod-p', 'heteropod.io/offload-policy': 'prefer', note: '"heteropod.io/offload": x' };
    fs.writeFileSync(path.join(bundle, 'config.json'), JSON.stringify({ ociVersion: '1.0.2', annotations }));
    const config = path.join(dir, 'shim.toml');
    // A runc shim that fails: `start` reports it and rolls back its socket and the pod's state.
    const fakeRunc = path.join(dir, 'fake-runc-shim');
    fs.writeFileSync(fakeRunc, '#!/bin/sh\necho "fake runc shim refuses: $*" >&2\nexit 3\n', { mode: 0o755 });
    fs.writeFileSync(config, `state_dir = '${dir}/state'\nrunc_shim = "${fakeRunc}"  # comment\n[runc]\n  root = "/x"\n`);
    const options = runtimeOptions(config);
    const r = spawnSync(launcher, ['-namespace', 'k8s.io', '-address', '/run/c.sock', '-id', 'pod-p', 'start'], { cwd: bundle, input: options });
    assert.is(r.status, 1);
    assert.match(r.stderr.toString(), new RegExp(`start runc shim ${fakeRunc}: exit 3: fake runc shim refuses: -namespace k8s.io -address /run/c.sock -id pod-p start`));
    assert.is(r.stdout.toString(), '');
    const paths = groupPaths(`${dir}/state`, '/run/c.sock', 'k8s.io', 'pod-p');
    assert.not.ok(fs.existsSync(paths.socket), 'no socket left');
    assert.equal(fs.readdirSync(path.join(dir, 'state', 's')), []);
    assert.equal(fs.readdirSync(path.join(dir, 'state', 'pods')), [], 'no pod state left');
    assert.not.ok(fs.existsSync(path.join(bundle, 'address')));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a bad config fails start at once for every pod, with the reader’s one line', () => {
  if (!fs.existsSync(launcher)) return skip('shim-launcher', 'not built');
  const dir = fs.mkdtempSync('/tmp/hp-launch-');
  try {
    const bundle = path.join(dir, 'bundle');
    fs.mkdirSync(bundle);
    const config = path.join(dir, 'shim.toml');
    fs.writeFileSync(config, `state_dir = "${dir}/state"\n[dpu]\nadress = "10.0.0.2:7443"\n`);
    const options = runtimeOptions(config);
    // A pod served by runc's shim behind the proxy, and one that offloads.
    for (const annotations of [{ 'io.kubernetes.cri.sandbox-id': 'pod-p' }, { 'io.kubernetes.cri.sandbox-id': 'pod-o', 'heteropod.io/offload': 'proxy' }]) {
      fs.writeFileSync(path.join(bundle, 'config.json'), JSON.stringify({ ociVersion: '1.0.2', annotations }));
      const r = spawnSync(launcher, ['-namespace', 'k8s.io', '-address', '/run/c.sock', '-id', annotations['io.kubernetes.cri.sandbox-id'], 'start'], { cwd: bundle, input: options });
      assert.is(r.status, 1);
      assert.is(r.stderr.toString(), `${config}:3: dpu.adress: unknown key ([dpu] has address, ca, cert, key, timeout_ms)\n`);
      assert.is(r.stdout.toString(), '');
      assert.not.ok(fs.existsSync(path.join(dir, 'state')), 'nothing started');
      assert.equal(fs.readdirSync(bundle), ['config.json']);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a bundle without config.json fails start with the one line naming it, and starts nothing', () => {
  if (!fs.existsSync(launcher)) return skip('shim-launcher', 'not built');
  const dir = fs.mkdtempSync('/tmp/hp-launch-');
  try {
    const bundle = path.join(dir, 'bundle');
    fs.mkdirSync(bundle);
    const config = path.join(dir, 'shim.toml');
    fs.writeFileSync(config, `state_dir = "${dir}/state"\n`);
    const options = runtimeOptions(config);
    const r = spawnSync(launcher, ['-namespace', 'k8s.io', '-address', '/run/c.sock', '-id', 'pod-n', 'start'], { cwd: bundle, input: options });
    assert.is(r.status, 1);
    // Read in launcher-bundle.c; the error rises to main, which prints it once.
    assert.is(r.stderr.toString(), 'containerd-shim-heteropod-v2: start: read bundle spec config.json: No such file or directory\n');
    assert.is(r.stdout.toString(), '');
    assert.not.ok(fs.existsSync(path.join(dir, 'state')), 'nothing started');
    assert.equal(fs.readdirSync(bundle), []);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a pod with heteropod.io/offload also starts runc’s shim (no Node daemon of its own)', () => {
  if (!fs.existsSync(launcher)) return skip('shim-launcher', 'not built');
  const dir = fs.mkdtempSync('/tmp/hp-launch-');
  try {
    const bundle = path.join(dir, 'bundle');
    fs.mkdirSync(bundle);
    const annotations = { 'io.kubernetes.cri.sandbox-id': 'pod-o', 'heteropod.io/offload': '', 'heteropod.io/offload-policy': 'require' };
    fs.writeFileSync(path.join(bundle, 'config.json'), JSON.stringify({ ociVersion: '1.0.2', annotations }));
    const fakeRunc = path.join(dir, 'fake-runc-shim');
    fs.writeFileSync(fakeRunc, '#!/bin/sh\necho "fake runc shim refuses" >&2\nexit 3\n', { mode: 0o755 });
    const config = path.join(dir, 'shim.toml');
    fs.writeFileSync(config, `state_dir = "${dir}/state"\nrunc_shim = "${fakeRunc}"\n`);
    const options = runtimeOptions(config);
    const r = spawnSync(launcher, ['-namespace', 'k8s.io', '-address', '/run/c.sock', '-id', 'pod-o', 'start'], { cwd: bundle, input: options });
    assert.is(r.status, 1);
    assert.match(r.stderr.toString(), /start runc shim .*fake-runc-shim: exit 3: fake runc shim refuses/);
    assert.equal(fs.readdirSync(path.join(dir, 'state', 's')), [], 'no socket left');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('an offload policy other than exactly "prefer" or "require" fails start with a short quote (the node daemon\'s rule)', () => {
  if (!fs.existsSync(launcher)) return skip('shim-launcher', 'not built');
  const dir = fs.mkdtempSync('/tmp/hp-launch-');
  try {
    const bundle = path.join(dir, 'bundle');
    fs.mkdirSync(bundle);
    const config = path.join(dir, 'shim.toml');
    fs.writeFileSync(config, `state_dir = "${dir}/state"\n`);
    const cases: [string, string][] = [
      ['require ', 'annotation heteropod.io/offload-policy="require ": must be "prefer" or "require", exactly'],
      ['Prefer', 'annotation heteropod.io/offload-policy="Prefer": must be "prefer" or "require", exactly'],
      ['x'.repeat(10_000), `annotation heteropod.io/offload-policy="${'x'.repeat(64)}"... (10000 characters): must be "prefer" or "require", exactly`],
    ];
    for (const [policy, message] of cases) {
      const annotations = { 'io.kubernetes.cri.sandbox-id': 'pod-b', 'heteropod.io/offload': 'a', 'heteropod.io/offload-policy': policy };
      fs.writeFileSync(path.join(bundle, 'config.json'), JSON.stringify({ ociVersion: '1.0.2', annotations }));
      const r = spawnSync(launcher, ['-namespace', 'k8s.io', '-address', '/run/c.sock', '-id', 'pod-b', 'start'], { cwd: bundle, input: runtimeOptions(config) });
      assert.is(r.status, 1, policy.slice(0, 20));
      assert.is(r.stderr.toString(), `containerd-shim-heteropod-v2: start: ${message}\n`);
      assert.not.ok(fs.existsSync(path.join(dir, 'state', 's')) && fs.readdirSync(path.join(dir, 'state', 's')).length > 0, 'nothing started');
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('other actions go to the Node implementation', () => {
  if (!fs.existsSync(launcher)) return skip('shim-launcher', 'not built');
  const r = spawnSync(launcher, ['-v']);
  assert.match(r.stdout.toString(), /containerd-shim-heteropod-v2:\n\s+Version/);
});

test.run();
