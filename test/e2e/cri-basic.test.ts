// The foundation's end-to-end flow against the real containerd, runc and CNI of
// the test bed: a pod with a busybox container through CRI (handler runc), its
// log line, ExecSync output and exit code, stop, remove, and nothing left behind
// (after `local down`, or on a test bed that was up before: the user's stays up).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { CriObject } from '../../src/cri/config';
import { readCriLog } from '../../src/cri/logs';
import { waitFor } from '../../src/testbed/proc';
import { Bed, containerConfig, heteropod, ownPods, podConfig, startBed, stopBed, waitForContainerState } from '../lib/testbed';

let bed: Bed;


test.before(async () => {
  bed = await startBed();
});

test('a pod with a busybox container runs, logs, execs, stops and goes away', async () => {
  const { cri } = bed;
  const pod = podConfig(bed, 'basic');
  const podId = await cri.runPodSandbox(pod, 'runc');
  const podStatus = (await cri.podSandboxStatus(podId)).status as CriObject;
  assert.is(podStatus.state, 'SANDBOX_READY');
  const ip = ((podStatus.network as CriObject).ip as string) ?? '';
  assert.ok(ip.startsWith('10.233.77.'), `pod IP ${ip} is in the test bed's subnet`);

  const ctr = containerConfig('main', ['sh', '-c', 'echo hello-from-busybox; echo to-stderr >&2; exec sleep 3600']);
  const id = await cri.createContainer(podId, ctr, pod);
  await cri.startContainer(id);
  const status = await waitForContainerState(cri, id, 'CONTAINER_RUNNING');
  const logPath = status.log_path as string;
  assert.is(logPath, path.join(pod.log_directory as string, 'main.log'));

  const records = await waitFor('the log lines', 10_000, () => {
    const r = fs.existsSync(logPath) ? readCriLog(logPath) : [];
    return r.length >= 2 ? r : undefined;
  });
  assert.equal(records.map((r) => [r.stream, r.line]).sort(), [['stderr', 'to-stderr'], ['stdout', 'hello-from-busybox']]);

  const ok = await cri.execSync(id, ['sh', '-c', 'echo out; echo err >&2; hostname'], 10);
  assert.is(ok.exitCode, 0);
  assert.ok(ok.stdout.toString().startsWith('out\n'));
  assert.is(ok.stderr.toString(), 'err\n');
  const failed = await cri.execSync(id, ['sh', '-c', 'exit 7'], 10);
  assert.is(failed.exitCode, 7);
  const ipInside = await cri.execSync(id, ['ip', '-4', '-o', 'addr', 'show', 'eth0'], 10);
  assert.match(ipInside.stdout.toString(), ip);

  const listed = await cri.listContainers({ pod_sandbox_id: podId });
  assert.equal(listed.map((c) => c.id), [id]);

  await cri.stopContainer(id, 2);
  const stopped = await waitForContainerState(cri, id, 'CONTAINER_EXITED');
  assert.is(stopped.exit_code, 143, 'sleep ended by SIGTERM within the grace period');
  await cri.removeContainer(id);
  assert.equal(await cri.listContainers({ pod_sandbox_id: podId }), []);

  await cri.stopPodSandbox(podId);
  await cri.removePodSandbox(podId);
  assert.equal((await cri.listPodSandbox()).filter((p) => p.id === podId), []);
});

test('the heteropod cri commands drive the same runtime', async () => {
  const dir = bed.logDir;
  const podFile = path.join(dir, 'pod.yaml');
  const ctrFile = path.join(dir, 'ctr.json');
  fs.writeFileSync(podFile, `metadata:\n  name: cli\n  namespace: e2e\nlogDirectory: ${dir}/cli\nlinux: {}\n`);
  fs.writeFileSync(ctrFile, JSON.stringify(containerConfig('echo', ['sh', '-c', 'echo cli-log-line; exec sleep 600'])));

  const run = await heteropod(['cri', 'run', '--runtime', 'runc', ctrFile, podFile]);
  assert.is(run.code, 0, run.stderr);
  const id = run.stdout.trim();
  await waitForContainerState(bed.cri, id, 'CONTAINER_RUNNING');

  const ps = await heteropod(['cri', 'ps', '-o', 'json']);
  assert.ok((JSON.parse(ps.stdout).containers as CriObject[]).some((c) => c.id === id));
  const table = await heteropod(['cri', 'ps']);
  assert.match(table.stdout, /CONTAINER\s+IMAGE\s+CREATED\s+STATE\s+NAME/);
  assert.match(table.stdout, id.slice(0, 13));

  await waitFor('the log line', 10_000, async () => (await heteropod(['cri', 'logs', id.slice(0, 8)])).stdout.includes('cli-log-line'));

  const exec = await heteropod(['cri', 'exec', id, '--', 'sh', '-c', 'echo via-cli; exit 3']);
  assert.is(exec.code, 3);
  assert.is(exec.stdout, 'via-cli\n');

  const stats = await heteropod(['cri', 'stats', '-o', 'json', id]);
  const s = JSON.parse(stats.stdout).stats[0] as CriObject;
  assert.ok(Number(((s.memory as CriObject).working_set_bytes as CriObject).value) > 0, 'memory working set reported');

  const pods = JSON.parse((await heteropod(['cri', 'pods', '-o', 'json'])).stdout).items as CriObject[];
  const pod = pods.find((p) => (p.metadata as CriObject).name === 'cli');
  assert.ok(pod, 'the pod is listed');
  assert.is((await heteropod(['cri', 'stopp', pod!.id as string])).code, 0);
  assert.is((await heteropod(['cri', 'rmp', pod!.id as string])).code, 0);
  assert.equal(await ownPods(bed), []);
});

test('bad input gets an error that names it', async () => {
  const dir = bed.logDir;
  const podFile = path.join(dir, 'bad-pod.yaml');
  fs.writeFileSync(podFile, 'metadata:\n  name: [unclosed\n');
  const bad = await heteropod(['cri', 'runp', podFile]);
  assert.is(bad.code, 1);
  assert.match(bad.stderr, `pod config ${podFile} does not parse`);

  const typo = path.join(dir, 'typo.yaml');
  fs.writeFileSync(typo, 'metadata:\n  name: x\nlog_dir: /tmp\n');
  assert.match((await heteropod(['cri', 'runp', typo])).stderr, 'log_dir: unknown field of PodSandboxConfig');

  const goodPod = path.join(dir, 'good-pod.yaml');
  fs.writeFileSync(goodPod, `metadata:\n  name: noimage\nlog_directory: ${dir}/noimage\n`);
  const ctrFile = path.join(dir, 'no-such-image.json');
  fs.writeFileSync(ctrFile, JSON.stringify({ ...containerConfig('x', ['true']), image: { image: 'heteropod.local/no-such-image:1' } }));
  const runp = await heteropod(['cri', 'runp', '--runtime', 'runc', goodPod]);
  assert.is(runp.code, 0, runp.stderr);
  const create = await heteropod(['cri', 'create', runp.stdout.trim(), ctrFile, goodPod]);
  assert.is(create.code, 1);
  assert.match(create.stderr, 'image "heteropod.local/no-such-image:1" is not on the node');
  assert.match(create.stderr, 'heteropod.local/busybox:1');
  await bed.cri.stopPodSandbox(runp.stdout.trim());
  await bed.cri.removePodSandbox(runp.stdout.trim());

  const missing = await heteropod(['cri', '-r', 'unix:///run/heteropod/no-such.sock', 'pods']);
  assert.is(missing.code, 1);
  assert.match(missing.stderr, 'socket /run/heteropod/no-such.sock does not exist');
});

test('nothing is left behind (local down, unless the test bed was up before)', async () => {
  const leaks = await stopBed(bed);
  assert.equal(leaks, [], `left behind:\n${leaks.join('\n')}`);
});

test.after(async () => {
  // A failure above must not leave the test bed up for the next file (nor the tests' pods on a user's).
  if (bed) await stopBed(bed).catch(() => {});
});

test.run();
