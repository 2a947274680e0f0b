// `heteropod local up | status | down` as a user runs them, including `down`
// after containerd was killed under running pods: still nothing left behind.
import * as fs from 'node:fs';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { CriClient } from '../../src/cri/client';
import { leaksSince, snapshotHost, HostSnapshot } from '../../src/testbed/leaks';
import { TESTBED } from '../../src/testbed/paths';
import { down } from '../../src/testbed/testbed';
import { containerConfig, heteropod, waitForContainerState } from '../lib/testbed';

let before: HostSnapshot;


test.before(async () => {
  before = await snapshotHost();
});

test('status says when the test bed is not running', async () => {
  const s = await heteropod(['local', 'status']);
  assert.is(s.code, 3);
  assert.match(s.stdout, 'not running (start it with: heteropod local up)');
});

test('up starts it, a second up is a no-op, status shows how to reach it', async () => {
  const first = await heteropod(['local', 'up']);
  assert.is(first.code, 0, first.stderr);
  assert.match(first.stdout, `export CONTAINER_RUNTIME_ENDPOINT=${TESTBED.endpoint}`);
  const pid = fs.readFileSync(TESTBED.pidFile, 'utf8').trim();
  const second = await heteropod(['local', 'up']);
  assert.is(second.code, 0, second.stderr);
  assert.match(second.stdout, 'already running');
  assert.is(fs.readFileSync(TESTBED.pidFile, 'utf8').trim(), pid, 'the same containerd');

  const status = JSON.parse((await heteropod(['local', 'status', '-o', 'json'])).stdout);
  assert.is(status.running, true);
  assert.is(status.networkReady, true);
  for (const image of ['heteropod.local/pause:1', 'heteropod.local/busybox:1', 'heteropod.local/haproxy:1', 'heteropod.local/node-exporter:1']) {
    assert.ok(status.images.includes(image), `${image} imported`);
  }
  assert.match((await heteropod(['local', 'status'])).stdout, `crictl --runtime-endpoint ${TESTBED.endpoint}`);
});

test('down after containerd was killed under a running pod still removes everything', async () => {
  const cri = CriClient.connect(TESTBED.endpoint);
  const pod = { metadata: { name: 'orphan', namespace: 'e2e', uid: `orphan-${process.pid}` }, linux: {} };
  const podId = await cri.runPodSandbox(pod, 'runc');
  const id = await cri.createContainer(podId, containerConfig('sleeper', ['sleep', '3600'], { log_path: '' }), pod);
  await cri.startContainer(id);
  await waitForContainerState(cri, id, 'CONTAINER_RUNNING');
  cri.close();
  process.kill(Number(fs.readFileSync(TESTBED.pidFile, 'utf8')), 'SIGKILL');

  const d = await heteropod(['local', 'down']);
  assert.is(d.code, 0, d.stderr);
  assert.match(d.stdout, 'deleted leftover runc container');
  const leaks = leaksSince(before, await snapshotHost());
  assert.equal(leaks, [], `left behind:\n${leaks.join('\n')}`);
});

test.after(async () => {
  if (fs.existsSync(TESTBED.runDir)) await down();
});

test.run();
