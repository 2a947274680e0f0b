// `heteropod dpu up | status | down` as a user runs them: the agent really is in
// the DPU's network namespace, cgroup and its own mount namespace; it answers the
// shim's certificate over mutual TLS from the host and refuses any other; `up`
// is idempotent and repairs a killed agent; `down` leaves nothing behind.
//
// A DPU already up before this file (a user's test bed, e.g. after `make demo`) is
// taken down first and brought up again at the end when it runs no pods. When it
// runs pods of the user's, the tests that need it down or empty say so and are
// skipped (taking it down would remove the pods' DPU containers), and the others
// run on it as it is.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DpuAgentClient, DpuAgentError } from '../../src/agentapi/client';
import { agentPid as runningAgent, down, hostClientOptions, up } from '../../src/dpu/dpu';
import { makeCa, makeLeaf } from '../../src/dpu/pki';
import { receiveThreads } from '../../src/dpu/napi';
import { DPU } from '../../src/dpu/paths';
import { persistentLeaksSince, snapshotHost, HostSnapshot } from '../../src/testbed/leaks';
import { pidAlive, run, waitFor } from '../../src/testbed/proc';
import { REPO_ROOT } from '../../src/testbed/paths';
import { agentPods } from '../lib/dpu';
import { skip } from '../lib/skip';

const GiB = 1024 ** 3;
let before: HostSnapshot;
let tmp: string;
/** The DPU was up before this file; usersPods: the pods it ran then (the user's). */
let wasUp = false;
let usersPods = 0;
const KEEP = 'the DPU runs pods of yours; this test needs it down or empty, and taking it down would remove their DPU containers (run it after heteropod local down)';

function heteropod(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(path.join(REPO_ROOT, 'bin', 'heteropod'), args, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as NodeJS.ErrnoException).code ?? 1) : 0, stdout, stderr });
    });
  });
}

function agentPid(): number {
  return Number(fs.readFileSync(DPU.pidFile, 'utf8').trim());
}

async function withClient<T>(opts: Parameters<typeof DpuAgentClient.connect>[0], fn: (c: DpuAgentClient) => Promise<T>): Promise<T> {
  const c = DpuAgentClient.connect(opts);
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}

async function refused(opts: Parameters<typeof DpuAgentClient.connect>[0]): Promise<DpuAgentError> {
  try {
    await withClient(opts, (c) => c.health());
  } catch (err) {
    return err as DpuAgentError;
  }
  throw new Error('the agent served a client it should have refused');
}

test.before(async () => {
  wasUp = runningAgent() !== undefined;
  if (wasUp) {
    usersPods = (await agentPods()).length;
    if (usersPods === 0) {
      console.log('DPU already up with no pods: taking it down to test dpu up and down, bringing it up again at the end');
      await down();
    } else {
      console.log(`DPU already up with ${usersPods} pod(s) of yours: testing it as it is, leaving it and them running`);
    }
  }
  before = await snapshotHost();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-dpu-e2e-'));
});

test('down when not up is fine; status says it is not running', async () => {
  if (usersPods) return skip('dpu down (not up)', KEEP);
  const d = await heteropod(['dpu', 'down']);
  assert.is(d.code, 0, d.stderr);
  const s = await heteropod(['dpu', 'status']);
  assert.is(s.code, 3);
  assert.match(s.stdout, 'DPU: not running (start it with: heteropod dpu up)');
});

test('up makes the DPU; the agent is in its netns, cgroup and own mount namespace', async () => {
  const r = await heteropod(['dpu', 'up']);
  assert.is(r.code, 0, r.stderr);
  assert.match(r.stdout, 'DPU agent pid');
  const pid = agentPid();
  assert.ok(pidAlive(pid));

  assert.is(fs.statSync(`/proc/${pid}/ns/net`).ino, fs.statSync(DPU.netnsFile).ino, 'agent in netns hp-dpu');
  const cgroups = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8');
  for (const c of DPU.cgroupControllers) assert.match(cgroups, new RegExp(`^\\d+:${c}:/heteropod-dpu$`, 'm'), `${c} cgroup`);
  assert.is.not(fs.readlinkSync(`/proc/${pid}/ns/mnt`), fs.readlinkSync('/proc/self/ns/mnt'), 'own mount namespace');
  assert.is(fs.statSync(`/proc/${pid}/ns/mnt`).ino, fs.statSync(DPU.mountNsFile).ino, 'the pinned mount namespace, which outlives the agent');
  // Nothing of the host's is there; only what the agent makes itself (its sockets;
  // with pods, their shims' too: checked only on a DPU without pods).
  const own: Record<string, string[]> = { '/run/heteropod': ['agent'] };
  for (const dir of usersPods ? [] : DPU.emptyInside) {
    assert.equal(fs.readdirSync(`/proc/${pid}/root${dir}`).filter((n) => !(own[dir] ?? []).includes(n)), [], `${dir} empty inside the DPU`);
  }
  // the DPU sees its TLS files but not the CA key or the shim's key
  assert.ok(fs.existsSync(`/proc/${pid}/root${DPU.tlsDirInside}/agent.key`));
  assert.not.ok(fs.existsSync(`/proc/${pid}/root${DPU.pki.caKey}`));

  assert.is(fs.readFileSync('/sys/fs/cgroup/cpuset/heteropod-dpu/cpuset.cpus', 'utf8').trim(), String(os.cpus().length - 1));
  assert.is(Number(fs.readFileSync('/sys/fs/cgroup/memory/heteropod-dpu/memory.limit_in_bytes', 'utf8')), GiB);

  const routes = (await run('ip', ['-n', DPU.netns, 'route', 'show'])).stdout;
  assert.not.match(routes, 'default', 'no default route: the DPU reaches the management link, the fabric and the host\'s PF only');
  const links = (await run('ip', ['-n', DPU.netns, '-o', 'link', 'show'])).stdout;
  assert.match(links, /tmfifo_net0/);
  assert.match((await run('ip', ['-o', 'addr', 'show', 'dev', DPU.link])).stdout, 'inet 192.168.100.1/30');
});

test('Health and Capacity over mutual TLS from the host', async () => {
  const h = await withClient(hostClientOptions(), (c) => c.health());
  assert.is(h.ok, true);
  assert.is(h.version, require('../../../package.json').version);
  assert.is(h.listen_address, '192.168.100.2:7443');
  const cap = await withClient(hostClientOptions(), (c) => c.capacity());
  assert.is(cap.cpus, 1);
  assert.is(cap.cpuset, String(os.cpus().length - 1));
  assert.is(cap.memory_total_bytes, GiB);
  assert.ok(cap.memory_free_bytes > 0 && cap.memory_free_bytes < GiB, `free ${cap.memory_free_bytes}`);
  if (!usersPods) assert.is(cap.running_containers, 0);
});

test('a client certificate from another CA is refused', async () => {
  await makeCa(`${tmp}/other-ca.key`, `${tmp}/other-ca.crt`, 'not the DPU CA');
  await makeLeaf({ key: `${tmp}/other-ca.key`, cert: `${tmp}/other-ca.crt` }, `${tmp}/c.key`, `${tmp}/c.crt`, 'heteropod-shim', ['extendedKeyUsage=clientAuth']);
  const err = await refused({ ...hostClientOptions(), certFile: `${tmp}/c.crt`, keyFile: `${tmp}/c.key`, timeoutMs: 3000 });
  assert.instance(err, DpuAgentError);
  assert.is(err.kind, 'tls', err.message);
  assert.match(err.message, 'TLS with the DPU agent at 192.168.100.2:7443');
});

test('a client without a certificate is refused', async () => {
  const err = await refused({ address: hostClientOptions().address, caFile: DPU.pki.caCert, timeoutMs: 3000 });
  assert.is(err.kind, 'tls', err.message);
});

test('status shows address, cgroup, cpuset, memory and health', async () => {
  const s = await heteropod(['dpu', 'status']);
  assert.is(s.code, 0, s.stderr);
  for (const want of ['DPU: running', `pid ${agentPid()}, 192.168.100.2:7443`, 'cgroup         /heteropod-dpu', `cpuset         ${os.cpus().length - 1}`, 'memory limit   1 GiB', 'health         ok, version']) {
    assert.match(s.stdout, want);
  }
  const j = JSON.parse((await heteropod(['dpu', 'status', '-o', 'json'])).stdout);
  assert.is(j.running, true);
  assert.is(j.capacity.memory_total_bytes, GiB);
});

/** The CPUs a thread may run on, as the kernel lists them. */
function allowedCpus(pid: number): string {
  return /^Cpus_allowed_list:\s*(\S+)$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? '';
}

test('the node\'s wires: the fabric reaches the host only through the DPU; each end\'s receive work on its side\'s CPUs', async () => {
  const dpuCpu = String(os.cpus().length - 1);
  // Routes: the fabric to the node through p0, the DPU to the pod network through the PF, the host to the fabric through its PF.
  assert.match((await run('ip', ['-n', DPU.uplink.fabricNetns, 'route', 'show', DPU.defaultPodCidr])).stdout, `via ${DPU.uplink.address} dev ${DPU.uplink.fabricDev}`);
  assert.match((await run('ip', ['-n', DPU.netns, 'route', 'show', DPU.defaultPodCidr])).stdout, `via ${DPU.pf.hostAddress} dev ${DPU.pf.dpuDev}`);
  assert.match((await run('ip', ['route', 'show', '10.233.100.0/24'])).stdout, `via ${DPU.pf.dpuAddress} dev ${DPU.pf.hostDev}`);

  // A connection from the fabric to the host's PF address arrives from the fabric's own address (routed, not NATed), through the DPU,
  // and its packets' receive work is done by the receiving ends' threads (on the DPU at p0, on the host at hp-pf0).
  const runNs = (dev: string) => Number(fs.readFileSync(`/proc/${receiveThreads().find((t) => t.dev === dev)!.pid}/schedstat`, 'utf8').split(' ')[0]);
  const workBefore = [runNs(DPU.uplink.dev), runNs(DPU.pf.hostDev)];
  const server = net.createServer((c) => {
    let n = 0;
    c.on('data', (d: Buffer) => (n += d.length)).on('end', () => c.end(`${c.remoteAddress} ${n}\n`));
  });
  await new Promise<void>((r) => server.listen(0, DPU.pf.hostAddress, () => r()));
  const port = (server.address() as net.AddressInfo).port;
  const p0Before = Number((await run('ip', ['netns', 'exec', DPU.netns, 'cat', `/sys/class/net/${DPU.uplink.dev}/statistics/rx_packets`])).stdout);
  try {
    const script = `const s = require('net').connect(${port}, '${DPU.pf.hostAddress}'); s.on('data', (d) => process.stdout.write(d)); s.end(Buffer.alloc(4 << 20))`;
    const r = await run('ip', ['netns', 'exec', DPU.uplink.fabricNetns, process.execPath, '-e', script], { timeout: 10_000 });
    assert.is(r.stdout.trim(), `${DPU.uplink.fabricAddress} ${4 << 20}`);
  } finally {
    server.close();
  }
  const p0After = Number((await run('ip', ['netns', 'exec', DPU.netns, 'cat', `/sys/class/net/${DPU.uplink.dev}/statistics/rx_packets`])).stdout);
  assert.ok(p0After > p0Before, 'it came in at the DPU\'s uplink');
  const workAfter = [runNs(DPU.uplink.dev), runNs(DPU.pf.hostDev)];
  assert.ok(workAfter[0] > workBefore[0], 'the DPU\'s receive thread at p0 did the receive work');
  assert.ok(workAfter[1] > workBefore[1], 'the host\'s receive thread at hp-pf0 did the receive work');
  // (It could not with TSO on at the sending ends: veth then delivers on the sender's CPU.)
  for (const [netns, dev] of [['', DPU.pf.hostDev], [DPU.netns, DPU.pf.dpuDev], [DPU.netns, DPU.uplink.dev], [DPU.uplink.fabricNetns, DPU.uplink.fabricDev]]) {
    const k = (await run(netns ? 'ip' : 'ethtool', netns ? ['netns', 'exec', netns, 'ethtool', '-k', dev] : ['-k', dev])).stdout;
    assert.match(k, /^tcp-segmentation-offload: off/m, `TSO off at ${dev}`);
  }

  // One NAPI thread per receiving end, pinned to its side's CPUs.
  const threads = receiveThreads();
  assert.equal(threads.map((t) => `${t.side} ${t.dev}`).sort(), ['dpu p0', 'dpu pf0hpf', 'dpu tmfifo_net0', 'fabric node0', 'host hp-pf0', 'host tmfifo_net0']);
  const hostCpus = os.cpus().length > 1 ? (os.cpus().length === 2 ? '0' : `0-${os.cpus().length - 2}`) : dpuCpu;
  for (const t of threads) {
    assert.is(allowedCpus(t.pid), t.side === 'dpu' ? dpuCpu : hostCpus, `${t.dev} (${t.side}) receive thread ${t.pid}`);
  }

  const s = await heteropod(['dpu', 'status']);
  assert.match(s.stdout, /uplink wire +fabric node0 \(hp-fabric\) 10\.233\.100\.1\/24 <-> dpu p0 \(hp-dpu\) 10\.233\.100\.2\/24, packets \d+ in/);
  assert.match(s.stdout, /PF wire +dpu pf0hpf \(hp-dpu\) 10\.233\.101\.2\/30 <-> host hp-pf0 10\.233\.101\.1\/30/);
});

test('a second up is a no-op; a killed agent is unreachable and up repairs it', async () => {
  const pid = agentPid();
  const again = await heteropod(['dpu', 'up']);
  assert.is(again.code, 0, again.stderr);
  assert.match(again.stdout, 'already running');
  assert.is(agentPid(), pid);
  const ca = fs.readFileSync(DPU.pki.caCert, 'utf8');

  process.kill(pid, 'SIGKILL');
  await waitFor('the agent to die', 5000, () => !pidAlive(pid));
  // The link is still up, so the call stays on 192.168.100.0/30 and meets a closed port.
  const err = await refused({ ...hostClientOptions(), timeoutMs: 1500 });
  assert.is(err.kind, 'unreachable', err.message);
  assert.match(err.message, 'DPU agent at 192.168.100.2:7443 unreachable');
  const st = await heteropod(['dpu', 'status']);
  assert.is(st.code, 3);
  assert.match(st.stdout, 'repair with: heteropod dpu up');

  const repair = await heteropod(['dpu', 'up']);
  assert.is(repair.code, 0, repair.stderr);
  assert.is.not(agentPid(), pid);
  assert.is(fs.readFileSync(DPU.pki.caCert, 'utf8'), ca, 'certificates kept: the shim\'s copy stays valid');
  assert.is((await withClient(hostClientOptions(), (c) => c.health())).ok, true);
});

test('down removes everything', async () => {
  if (usersPods) return skip('dpu down', KEEP);
  const d = await heteropod(['dpu', 'down']);
  assert.is(d.code, 0, d.stderr);
  assert.match(d.stdout, 'DPU down');
  const leaks = await persistentLeaksSince(before);
  assert.equal(leaks, [], `left behind:\n${leaks.join('\n')}`);
});

test.after(async () => {
  if (wasUp) {
    // As it was found: up.
    await up();
    if (!usersPods) console.log('DPU brought up again, as it was found');
  } else if (fs.existsSync(DPU.stateDir) || fs.existsSync(DPU.netnsFile)) {
    await down();
  }
  fs.rmSync(tmp, { recursive: true, force: true });
});

test.run();
