import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { install, dropIn, runtimeClassManifest } from '../../src/shim/install';

const repoRoot = path.resolve(__dirname, '../../..');
const base = { binDir: '/usr/local/bin', dropInDir: '/etc/containerd/conf.d', configPath: '/etc/heteropod/shim.toml', containerdConfig: '/etc/containerd/config.toml', systemdDir: '/etc/systemd/system', repoRoot, nodePath: process.execPath };

test('install into a staging root: launcher, drop-in, node daemon unit, heteropod-agent-call, default config; notes the missing import', () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-install-'));
  try {
    const r = install({ ...base, root });
    const shim = path.join(root, 'usr/local/bin/containerd-shim-heteropod-v2');
    const unit = path.join(root, 'etc/systemd/system/heteropod-node.service');
    const agentCall = path.join(root, 'usr/local/bin/heteropod-agent-call');
    assert.equal(r.written, [shim, path.join(root, 'etc/containerd/conf.d/heteropod.toml'), unit, agentCall, path.join(root, 'etc/heteropod/shim.toml')]);
    // It runs the built command with the node's config: the staged default names no agent.
    assert.is(fs.statSync(agentCall).mode & 0o777, 0o755);
    assert.match(fs.readFileSync(agentCall, 'utf8'), `--config /etc/heteropod/shim.toml "$@"`);
    const asked = spawnSync(agentCall, ['--config', path.join(root, 'etc/heteropod/shim.toml'), 'Health'], { encoding: 'utf8' });
    assert.equal([asked.status, asked.stderr.trim()], [1, `heteropod-agent-call: ${path.join(root, 'etc/heteropod/shim.toml')}: no DPU agent is configured ([dpu] address)`]);
    const unitText = fs.readFileSync(unit, 'utf8');
    assert.match(unitText, `ExecStart=${path.join(repoRoot, 'build/heteropod-noded')} --config /etc/heteropod/shim.toml\n`);
    assert.match(unitText, `Environment=PATH=${path.dirname(process.execPath)}:`);
    assert.match(unitText, 'Restart=always');
    assert.match(unitText, 'KillMode=process');
    assert.ok(r.notes.some((n) => n.includes('systemctl enable --now heteropod-node.service')));
    assert.is(fs.statSync(shim).mode & 0o777, 0o755);
    assert.match(execFileSync(shim, ['-v']).toString(), /containerd-shim-heteropod-v2:\n\s+Version: \d/);
    assert.ok(r.notes.some((n) => n.includes('imports = ["/etc/containerd/conf.d/*.toml"]')));
    // A second run keeps the operator's shim config, and sees the import once it exists.
    fs.writeFileSync(path.join(root, 'etc/heteropod/shim.toml'), 'debug = true\n');
    fs.writeFileSync(path.join(root, 'etc/containerd/config.toml'), 'version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n');
    const again = install({ ...base, root });
    assert.is(fs.readFileSync(path.join(root, 'etc/heteropod/shim.toml'), 'utf8'), 'debug = true\n');
    assert.ok(again.notes.some((n) => n.startsWith('restart containerd')));
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test('drop-in registers the handler with the annotations and ConfigPath', () => {
  const d = dropIn('/etc/heteropod/shim.toml');
  assert.match(d, '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.heteropod]');
  assert.match(d, 'runtime_type = "io.containerd.heteropod.v2"');
  assert.match(d, 'pod_annotations = ["heteropod.io/*"]');
  assert.match(d, 'ConfigPath = "/etc/heteropod/shim.toml"');
  assert.match(runtimeClassManifest(), /kind: RuntimeClass\n[\s\S]*handler: heteropod\n/);
});

test.run();
