// `make demo`'s script (scripts/demo.sh) on the test bed, as a new user runs it:
// the demo pod's app on the host, its proxy (haproxy) and metrics agent
// (node-exporter) on the DPU; the page fetched from the node through the proxy,
// the metrics read, the XPU link's counters and each side's CPU printed; the pod
// left running; then removed with the command the script prints, leaving nothing.
// A demo pod of the user's (default/demo, after `make demo`) is left alone: the
// test then runs its own beside it, named by HETEROPOD_DEMO_POD.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { CriObject } from '../../src/cri/config';
import { podWindowPath } from '../../src/netns';
import { REPO_ROOT, TESTBED } from '../../src/testbed/paths';
import { settleDpuLeaks } from '../lib/dpu';
import { settleAndCheckLeaks } from '../lib/shim';
import { Bed, ownPods, removeOwnPods, startBed, stopBed } from '../lib/testbed';

let bed: Bed;
/** The test's demo pod: `demo` as `make demo` makes it, unless the user's runs. */
let name = 'demo';

test.before(async () => {
  bed = await startBed();
  const users = (await bed.cri.listPodSandbox()).filter((p) => bed.userPods.has(p.id as string));
  if (users.some((p) => (p.metadata as CriObject).namespace === 'default' && (p.metadata as CriObject).name === 'demo')) {
    name = 'demo-e2e';
    console.log(`your demo pod default/demo is running: this test runs its own, default/${name} (HETEROPOD_DEMO_POD=${name}), and leaves yours alone`);
  }
});

test.after(async () => {
  await removeOwnPods(bed);
  const leaks = await stopBed(bed);
  assert.equal(leaks, [], `the test bed left:\n${leaks.join('\n')}`);
});

function sh(command: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(command, args, { cwd: REPO_ROOT, env: { ...process.env, CONTAINER_RUNTIME_ENDPOINT: TESTBED.endpoint, HETEROPOD_DEMO_POD: name }, timeout: 300_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as NodeJS.ErrnoException).code ?? 1) : 0, out: stdout + stderr });
    });
  });
}

test('make demo: a split pod serving through its offloaded proxy, left running, then removed as printed', async () => {
  const demo = await sh('bash', ['scripts/demo.sh']);
  const out = demo.out.replace(/\x1b\[[0-9;]*m/g, '');
  assert.is(demo.code, 0, out);

  // Left running: the pod the script made (the user's pods are as they were).
  const pods = (await ownPods(bed)).filter((p) => (p.metadata as CriObject).name === name);
  assert.is(pods.length, 1, `one pod default/${name}`);
  const podId = pods[0].id as string;
  const running = await bed.cri.listContainers({ pod_sandbox_id: podId, state: { state: 'CONTAINER_RUNNING' } });
  assert.is(running.length, 3);

  // Where each container runs.
  for (const [container, where] of [['app', 'host'], ['proxy', 'dpu'], ['metrics', 'dpu']]) {
    assert.match(out, new RegExp(`default/${name} .* ${container} +[0-9a-f]{13} +RUNNING +${where}\\b`), `${container} on the ${where}`);
  }
  assert.match(out, /proxy's cgroup, read in the container: \d+:memory:\/heteropod-dpu\//);
  // The page from the node through podIP:15006 → proxy (DPU) → app (host), and the metrics.
  assert.match(out, new RegExp(`fetching the page[^\\n]*\\nhello from the HeteroPod demo app \\(${name}\\), through the proxy on the DPU\\n`));
  assert.match(out, /\nnode_load1 [0-9.e+-]+\n/);
  // From outside the node: the fabric reaches the proxy through the DPU's uplink alone.
  assert.match(out, new RegExp(`fetching it from outside the node[^\\n]*\\nhello from the HeteroPod demo app \\(${name}\\), through the proxy on the DPU\\n`));
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
  // The pod's XPU link (xpu stats lists every link on the machine), both ends alive, frames both ways.
  const link = out.indexOf(`${podWindowPath(podId)}: link up`);
  const links = out.slice(out.indexOf("== the pod's XPU link"), out.indexOf('== CPU and memory'));
  assert.ok(link >= 0, `the pod's link ${podWindowPath(podId)} is up; xpu stats said:\n${links}`);
  const frames = (dir: string) => Number(/^\s*(\S+)\s+([0-9.]+)K?/m.exec(out.slice(out.indexOf(`  ${dir} `, link)))?.[2]);
  assert.ok(frames('host->dpu') > 0 && frames('dpu->host') > 0, 'frames crossed both ways');
  // CPU per side: the totals of every pod, so of the user's too when there are any.
  const total = (side: string) => Number(new RegExp(`\\n${side}: (\\d+) container\\(s\\), [0-9.]+s CPU`).exec(out)?.[1]);
  if (bed.userPods.size === 0) assert.equal([total('host'), total('dpu')], [1, 2], 'containers per side');
  else assert.ok(total('host') >= 1 && total('dpu') >= 2, `containers per side: host ${total('host')}, dpu ${total('dpu')}`);

  // Removed with the command it prints.
  const remove = /Remove the pod \(with CONTAINER_RUNTIME_ENDPOINT as above\):\n\s+(.*)/.exec(out)?.[1];
  assert.ok(remove, 'the script prints how to remove the pod');
  const removed = await sh('bash', ['-c', remove!.replace(/\.\/bin\/heteropod/g, `${REPO_ROOT}/bin/heteropod`)]);
  assert.is(removed.code, 0, removed.out);
  assert.equal(await ownPods(bed), []);
  const left = [...(await settleAndCheckLeaks(bed.preexisting.shims)), ...(await settleDpuLeaks(bed.preexisting.dpu))];
  assert.equal(left, [], `the demo pod left behind:\n${left.join('\n')}`);
  // Its logs: in the test bed's state directory, which `local down` removes; on a
  // test bed that stays up, the test removes its own.
  if (name !== 'demo') fs.rmSync(path.join(TESTBED.stateDir, 'pod-logs', name), { recursive: true, force: true });
});

test.run();
