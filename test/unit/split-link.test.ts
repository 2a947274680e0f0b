// The split network's glue between the shim and the agent, without namespaces:
// the clean-up hook the shim puts in a sandbox spec, and the agent's link calls
// refusing bad input and unknown pods with the right status codes.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Code } from '../../src/common/status';
import { AgentError } from '../../src/agent/errors';
import { EventHub } from '../../src/agent/events';
import { DpuPods } from '../../src/agent/pods';
import { CLEANUP_HOOK, cleanupHook, withCleanupHook } from '../../src/netns';
import { Logger, StderrSink } from '../../src/common/log';

test('clean-up hook: the checkout\'s program, a PATH that finds node and the network tools', () => {
  assert.ok(fs.statSync(CLEANUP_HOOK).mode & 0o111, `${CLEANUP_HOOK} is executable`);
  const hook = cleanupHook('/opt/node/bin/node');
  assert.is(hook.path, CLEANUP_HOOK);
  assert.equal(hook.args, ['heteropod-netns-cleanup']);
  assert.equal(hook.env, ['PATH=/opt/node/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin']);
  assert.ok((hook.timeout ?? 0) > 0);
  assert.equal(cleanupHook('/usr/bin/node').env, ['PATH=/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/bin']);
});

test('clean-up hook in a spec: added after the spec\'s own, once, the rest of the spec kept', () => {
  const own = { path: '/bin/true' };
  const spec = { ociVersion: '1.0.2', hooks: { prestart: [own], poststop: [own] } };
  const once = withCleanupHook(spec);
  assert.equal(once.hooks.prestart, [own]);
  assert.equal(once.hooks.poststop.map((h) => h.path), ['/bin/true', CLEANUP_HOOK]);
  assert.is(once.ociVersion, '1.0.2');
  assert.equal(spec.hooks.poststop, [own], 'the spec given is not changed');
  assert.is(withCleanupHook(once), once, 'a spec that has the hook is returned as is');
  assert.equal(withCleanupHook({} as { hooks?: { poststop?: { path: string }[] } }).hooks?.poststop?.map((h) => h.path), [CLEANUP_HOOK]);
});

async function code(p: Promise<unknown> | (() => unknown)): Promise<Code | 'ok'> {
  try {
    await (typeof p === 'function' ? p() : p);
    return 'ok';
  } catch (err) {
    assert.instance(err, AgentError);
    return (err as AgentError).code;
  }
}

test('agent link calls: bad input INVALID_ARGUMENT, an unknown pod NOT_FOUND, closing nothing is fine', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-split-link-'));
  try {
    const paths = { stateDir: dir, runDir: dir, netnsDir: path.join(dir, 'netns'), cgroupRoot: path.join(dir, 'cgroup'), cgroupParent: 'heteropod-dpu', runcShim: '/bin/false', fifoKeeper: '/bin/false' };
    const pods = new DpuPods(paths, { path: (d: string) => path.join(dir, d), missing: () => [] }, new EventHub(), new Logger(new StderrSink(), false));
    const { INVALID_ARGUMENT, NOT_FOUND } = Code;
    assert.is(await code(pods.openLink({ pod_id: 'p1', pod_ip: '10.0.0.300', pod_prefix_length: 24, declared_dpu_ports: [] })), INVALID_ARGUMENT);
    assert.is(await code(pods.openLink({ pod_id: 'p1', pod_ip: 'fe80::1', pod_prefix_length: 24, declared_dpu_ports: [] })), INVALID_ARGUMENT);
    assert.is(await code(pods.openLink({ pod_id: 'p1', pod_ip: '10.0.0.3', pod_prefix_length: 24, declared_dpu_ports: [0] })), INVALID_ARGUMENT);
    assert.is(await code(pods.openLink({ pod_id: 'p1', pod_ip: '10.0.0.3', pod_prefix_length: 24, declared_dpu_ports: [15006] })), NOT_FOUND);
    assert.is(await code(pods.setPeerPorts('p1', [70000])), INVALID_ARGUMENT);
    assert.is(await code(pods.setPeerPorts('p1', [8080])), NOT_FOUND);
    assert.is(await code(() => pods.watchPorts('p1', () => undefined)), NOT_FOUND);
    assert.is(await code(pods.closeLink('p1')), 'ok');
    assert.is(await code(Promise.all([pods.removePod('p1'), pods.removePod('p1')])), 'ok');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
