// `make demo`'s script (scripts/demo.sh) on the test bed, as a new user runs it:
// the demo pod's app on the host, its proxy (haproxy) and metrics agent
// (node-exporter) on the DPU; the page fetched from the node through the proxy,
// the metrics read, the XPU link's counters and each side's CPU printed; the pod
// left running; then removed with the command the script prints, leaving nothing.
import { execFile } from 'node:child_process';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { CriObject } from '../../src/cri/config';
import { REPO_ROOT, TESTBED } from '../../src/testbed/paths';
import { settleDpuLeaks } from '../lib/dpu';
import { settleAndCheckLeaks } from '../lib/shim';
import { Bed, removeAllPods, startBed, stopBed } from '../lib/testbed';

let bed: Bed;

test.before(async () => {
  bed = await startBed();
});

test.after(async () => {
  await removeAllPods(bed.cri);
  const leaks = await stopBed(bed);
  assert.equal(leaks, [], `the test bed left:\n${leaks.join('\n')}`);
});

function sh(command: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(command, args, { cwd: REPO_ROOT, env: { ...process.env, CONTAINER_RUNTIME_ENDPOINT: TESTBED.endpoint }, timeout: 300_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as NodeJS.ErrnoException).code ?? 1) : 0, out: stdout + stderr });
    });
  });
}

test('make demo: a split pod serving through its offloaded proxy, left running, then removed as printed', async () => {
  const demo = await sh('bash', ['scripts/demo.sh']);
  const out = demo.out.replace(/\x1b\[[0-9;]*m/g, '');
  assert.is(demo.code, 0, out);

  // Where each container runs.
  for (const [name, where] of [['app', 'host'], ['proxy', 'dpu'], ['metrics', 'dpu']]) {
    assert.match(out, new RegExp(`default/demo .* ${name} +[0-9a-f]{13} +RUNNING +${where}\\b`), `${name} on the ${where}`);
  }
  assert.match(out, /proxy's cgroup, read in the container: \d+:memory:\/heteropod-dpu\//);
  // The page from the node through podIP:15006 → proxy (DPU) → app (host), and the metrics.
  assert.match(out, /fetching the page[^\n]*\nhello from the HeteroPod demo app \(demo\), through the proxy on the DPU\n/);
  assert.match(out, /\nnode_load1 [0-9.e+-]+\n/);
  // From outside the node: the fabric reaches the proxy through the DPU's uplink alone.
  assert.match(out, /fetching it from outside the node[^\n]*\nhello from the HeteroPod demo app \(demo\), through the proxy on the DPU\n/);
  const rps = Number(/Requests\/sec:\s+([0-9.]+)/.exec(out)?.[1]);
  assert.ok(rps > 0, `wrk from the fabric through the proxy: ${rps} requests/s`);
  const uplink = Number(/DPU uplink p0 \(fabric <-> DPU\): +(\d+)/.exec(out)?.[1]);
  const pf = Number(/host PF \(pf0hpf <-> hp-pf0, the host\): +(\d+)/.exec(out)?.[1]);
  assert.ok(uplink > rps, `the load crossed the uplink (${uplink} packets)`);
  assert.is(pf, 0, 'and not one packet of it the host\'s PF');
  // haproxy saw the client's own address.
  assert.match(out, /\n10\.233\.100\.1:\d+ \[[^\]]+\] inbound app\/app /);
  // haproxy's log lines, written on the DPU, read as crictl logs reads them.
  assert.match(out, /inbound app\/app [0-9/-]+ 200 /);
  // The pod's XPU link, both ends alive, frames both ways.
  assert.match(out, /link up/);
  const frames = (dir: string) => Number(/^\s*(\S+)\s+([0-9.]+)K?/m.exec(out.slice(out.indexOf(`  ${dir} `)))?.[2]);
  assert.ok(frames('host->dpu') > 0 && frames('dpu->host') > 0, 'frames crossed both ways');
  // CPU per side.
  assert.match(out, /\nhost: 1 container\(s\), [0-9.]+s CPU/);
  assert.match(out, /\ndpu: 2 container\(s\), [0-9.]+s CPU/);

  // Left running.
  const pods = (await bed.cri.listPodSandbox()).filter((p) => (p.metadata as CriObject).name === 'demo');
  assert.is(pods.length, 1);
  const running = await bed.cri.listContainers({ pod_sandbox_id: pods[0].id, state: { state: 'CONTAINER_RUNNING' } });
  assert.is(running.length, 3);

  // Removed with the command it prints.
  const remove = /Remove the pod \(with CONTAINER_RUNTIME_ENDPOINT as above\):\n\s+(.*)/.exec(out)?.[1];
  assert.ok(remove, 'the script prints how to remove the pod');
  const removed = await sh('bash', ['-c', remove!.replace(/\.\/bin\/heteropod/g, `${REPO_ROOT}/bin/heteropod`)]);
  assert.is(removed.code, 0, removed.out);
  assert.is((await bed.cri.listPodSandbox()).length, 0);
  const left = [...(await settleAndCheckLeaks()), ...(await settleDpuLeaks())];
  assert.equal(left, [], `the demo pod left behind:\n${left.join('\n')}`);
});

test.run();
