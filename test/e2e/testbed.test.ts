// `heteropod local up | status | down` as a user runs them, including `down`
// after containerd was killed under running pods: still nothing left behind. And
// a test file's start and stop (test/lib/testbed.ts) on a test bed that a user
// left up with a pod: the user's pod keeps running, the tests' pods go.
//
// `status` of a stopped test bed and `down` need the test bed down. One that was
// up before this file with no pods is taken down first and brought up again at
// the end; one with pods of the user's cannot be taken down without removing
// them, so those two tests say so and are skipped.
import * as fs from 'node:fs';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { CriClient } from '../../src/cri/client';
import type { CriObject } from '../../src/cri/config';
import { leaksSince, snapshotHost, HostSnapshot } from '../../src/testbed/leaks';
import { TESTBED } from '../../src/testbed/paths';
import { down, up } from '../../src/testbed/testbed';
import { skip } from '../lib/skip';
import { bedState, containerConfig, heteropod, othersTests, podConfig, startBed, stopBed, waitForContainerState } from '../lib/testbed';

let before: HostSnapshot;
/** How this file found the test bed: down, or up with the user's pods. */
let found: { up: boolean; pods: CriObject[] };
const usersBed = () => found.up && found.pods.length > 0;
const KEEP = 'the test bed is up with pods of yours; this test takes it down, which would remove them (run it after heteropod local down)';

test.before(async () => {
  found = await bedState();
  if (found.up && found.pods.length === 0) {
    console.log('test bed already up with no pods: taking it down to test local up and down, bringing it up again at the end');
    await down();
  }
  before = await snapshotHost();
});

test('status says when the test bed is not running', async () => {
  if (usersBed()) return skip('local status (not running)', KEEP);
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

test('a test file on a test bed a user left up: the user\'s pod keeps running, only the tests\' pods go', async () => {
  await up();
  // The user's pod, as `make demo` or crictl would leave it: an offloaded container, another namespace.
  const cri = CriClient.connect(TESTBED.endpoint, 60_000);
  const users = {
    metadata: { name: 'users-pod', namespace: 'e2e-user', uid: `users-pod-${process.pid}`, attempt: 0 },
    annotations: { 'heteropod.io/offload': 'sidecar' },
    linux: { security_context: { namespace_options: { pid: 'CONTAINER' } } },
  };
  const usersPod = await cri.runPodSandbox(users, 'heteropod');
  const own = { security_context: { namespace_options: { pid: 'CONTAINER' } } };
  const usersCtr = await cri.createContainer(usersPod, containerConfig('sidecar', ['sleep', '3600'], { log_path: '', linux: own }), users);
  await cri.startContainer(usersCtr);
  await waitForContainerState(cri, usersCtr, 'CONTAINER_RUNNING');
  const podsBefore = (await cri.listPodSandbox()).length;
  try {
    // A test file's start: it says it uses the user's test bed.
    const said: string[] = [];
    const log = console.log;
    console.log = (...args: unknown[]) => void said.push(args.join(' '));
    const bed = await startBed().finally(() => (console.log = log));
    assert.equal(said, [`test bed already up with ${podsBefore} pod(s) of yours: using it, leaving it and them running`]);
    assert.ok(bed.userPods.has(usersPod));

    // The test's pods: one removed by the test, one left running (a test that failed half-way).
    const ids: string[] = [];
    for (const name of ['removed', 'left']) {
      const pod = podConfig(bed, name);
      const podId = await bed.cri.runPodSandbox(pod, 'heteropod');
      const id = await bed.cri.createContainer(podId, containerConfig('main', ['sleep', '3600']), pod);
      await bed.cri.startContainer(id);
      await waitForContainerState(bed.cri, id, 'CONTAINER_RUNNING');
      ids.push(podId);
    }
    await bed.cri.stopPodSandbox(ids[0]);
    await bed.cri.removePodSandbox(ids[0]);

    // The file's end: the leak check passes with the user's pod in place.
    const leaks = await stopBed(bed);
    assert.equal(leaks, [], `left behind:\n${leaks.join('\n')}`);

    const pods = await cri.listPodSandbox();
    assert.equal(pods.filter((p) => ids.includes(p.id as string)), [], 'the tests\' pods are gone');
    const mine = pods.find((p) => p.id === usersPod);
    assert.is(mine?.state, 'SANDBOX_READY', 'the user\'s pod is still there');
    assert.is(((await cri.containerStatus(usersCtr)).status as CriObject).state, 'CONTAINER_RUNNING', 'the user\'s container still runs');
    assert.is((await cri.execSync(usersCtr, ['grep', '-c', 'heteropod-dpu', '/proc/self/cgroup'], 10)).exitCode, 0, 'still on the DPU, and answering');
    assert.is(JSON.parse((await heteropod(['local', 'status', '-o', 'json'])).stdout).running, true, 'the test bed is still up');
  } finally {
    await cri.stopPodSandbox(usersPod).catch(() => undefined);
    await cri.removePodSandbox(usersPod).catch(() => undefined);
    cri.close();
  }
});

test('down after containerd was killed under a running pod still removes everything', async () => {
  if (usersBed()) return skip('local down (containerd killed)', KEEP);
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
  const leaks = leaksSince(before, await snapshotHost()).filter((l) => !othersTests(l));
  assert.equal(leaks, [], `left behind:\n${leaks.join('\n')}`);
});

test.after(async () => {
  if (found.up) {
    // As it was found: up (the user's pods, if any, were never touched).
    await up();
    if (!usersBed()) console.log('test bed brought up again, as it was found');
  } else if (fs.existsSync(TESTBED.runDir)) {
    await down();
  }
});

test.run();
