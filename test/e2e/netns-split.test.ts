// End to end: a pod's split network namespace in namespaces this test makes.
//
//   <tag>-node  hpn0 10.233.250.1/24 ──veth── eth0 10.233.250.2/24  <tag>-pod (host half, the "pod IP")
//                                                 xpu0 169.254.77.1 ══ XPU link ══ xpu0 169.254.77.2  <tag>-dpu (DPU half)
//
// The host half is opened in this process (as the shim will), the DPU half in a
// child process (as the agent will); listening ports travel between them as
// JSON lines, standing in for the agent API. Every path is checked with real
// TCP connections, then tear-down, the poststop hook after a killed host half,
// and the leak check. Nothing here touches the test bed or any address outside
// these namespaces.
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { NetnsHalf, openDpuHalf, openHostHalf, podWindowPath } from '../../src/netns/half';
import { chainTag } from '../../src/netns/rules';
import { readStats } from '../../src/xpu/window';
import { waitFor } from '../../src/testbed/proc';
import { HostSnapshot, persistentLeaksSince, snapshotHost } from '../../src/testbed/leaks';
import { addNetns, canMakeNetns, delNetns, listNetns, processesMatching } from '../lib/netns';
import { skip } from '../lib/skip';

const root = path.resolve(__dirname, '..', '..', '..');
const halfProcess = path.join(root, 'dist', 'src', 'netns', 'half-process.js');
const hook = path.join(root, 'hooks', 'heteropod-netns-cleanup');
const tag = `hpx-ns${process.pid}`;
const NODE = `${tag}-node`;
const POD = `${tag}-pod`;
const DPU = `${tag}-dpu`;
const nsPath = (ns: string) => `/run/netns/${ns}`;
const NODE_IP = '10.233.250.1';
const POD_IP = '10.233.250.2';
const POD_ID = `${'5e1f'.repeat(4)}${process.pid.toString(16).padStart(8, '0')}`; // hex, like a sandbox id
const DECLARED = 'proxy=15006';
const why = canMakeNetns();
const children: ChildProcess[] = [];
let before: HostSnapshot;
let tmp = '';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function track(c: ChildProcess): ChildProcess {
  children.push(c);
  return c;
}

function sh(cmd: string, args: string[], input?: string): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

const inNs = (ns: string, args: string[]): [string, string[]] => ['nsenter', [`--net=${nsPath(ns)}`, '--', ...args]];

// Small TCP programs run inside a namespace; each carries the tag in its
// command line so that the leak check finds any left running.
const SERVER = `const net=require('net');const [,half,port,bind]=process.argv;
net.createServer(c=>c.end(JSON.stringify({half,remote:c.remoteAddress,local:c.localAddress})+'\\n'))
 .listen(+port,bind,()=>console.log(JSON.stringify({listening:true,at:Date.now()})));
setTimeout(()=>process.exit(0),120000);`;
const DIAL = `const net=require('net');const [,host,port,ms]=process.argv;let out='';
const s=net.connect({host,port:+port,timeout:+ms});
s.on('data',d=>out+=d);s.on('end',()=>{console.log(out.trim()||'{}');process.exit(0)});
s.on('timeout',()=>{console.log(JSON.stringify({error:'timeout'}));process.exit(0)});
s.on('error',e=>{console.log(JSON.stringify({error:e.code}));process.exit(0)});`;
// Connects every 20 ms until a reply comes or the deadline passes; prints when it came.
const PROBE = `const net=require('net');const [,host,port,ms]=process.argv;const end=Date.now()+ +ms;
(function once(){let out='';const s=net.connect({host,port:+port,timeout:500});
s.on('data',d=>out+=d);s.on('end',()=>{console.log(JSON.stringify({at:Date.now(),reply:JSON.parse(out)}));process.exit(0)});
const again=()=>{s.destroy();if(Date.now()>end){console.log(JSON.stringify({error:'deadline'}));process.exit(0)}setTimeout(once,20)};
s.on('error',again);s.on('timeout',again);})();`;

function node(ns: string, script: string, args: string[]): ChildProcess {
  const [cmd, argv] = inNs(ns, [process.execPath, '-e', script, '--', ...args, tag]);
  return track(spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] }));
}

function lastJson(c: ChildProcess, ms: number): Promise<Record<string, unknown>> {
  let out = '';
  let err = '';
  c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  c.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      c.kill('SIGKILL');
      reject(new Error(`no answer within ${ms} ms: ${out} ${err}`));
    }, ms);
    c.on('exit', () => {
      clearTimeout(t);
      const line = out.trim().split('\n').pop() ?? '';
      try {
        resolve(JSON.parse(line));
      } catch {
        reject(new Error(`not JSON: "${out}" ${err}`));
      }
    });
  });
}

interface Server {
  child: ChildProcess;
  at: number;
}

async function serve(ns: string, half: string, port: number, bind = '0.0.0.0'): Promise<Server> {
  const child = node(ns, SERVER, [half, String(port), bind]);
  let out = '';
  let err = '';
  const at = await new Promise<number>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /"at":(\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) => reject(new Error(`server ${half}:${port} in ${ns} exited ${code}: ${err}`)));
  });
  return { child, at };
}

async function stop(s: Server): Promise<void> {
  if (s.child.exitCode !== null || s.child.signalCode !== null) return;
  const exited = new Promise((r) => s.child.once('exit', r));
  s.child.kill('SIGTERM');
  await exited;
}

function dial(ns: string, host: string, port: number, ms = 1500): Promise<Record<string, unknown>> {
  return lastJson(node(ns, DIAL, [host, String(port), String(ms)]), ms + 5000);
}

/** Keeps dialling until a reply or the deadline; resolves with its time and reply. */
function probe(ns: string, host: string, port: number, ms: number): Promise<Record<string, unknown>> {
  return lastJson(node(ns, PROBE, [host, String(port), String(ms)]), ms + 5000);
}

/** The DPU half in a child process; ports flow both ways as JSON lines. */
interface PeerProcess {
  child: ChildProcess;
  listening: number[];
  exit: Promise<{ code: number | null; stderr: string }>;
  send(ports: number[]): void;
}

async function startHalfProcess(side: 'host' | 'dpu', ns: string, onListening: (ports: number[]) => void, extra: string[] = []): Promise<PeerProcess> {
  const child = track(spawn(process.execPath, [halfProcess, side, '--pod', POD_ID, '--netns', nsPath(ns), '--ports', DECLARED, ...extra], { stdio: ['pipe', 'pipe', 'pipe'] }));
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exit = new Promise<{ code: number | null; stderr: string }>((r) => child.on('exit', (code) => r({ code, stderr })));
  const p: PeerProcess = {
    child,
    listening: [],
    exit,
    send: (ports) => child.stdin!.write(JSON.stringify({ peerListening: ports }) + '\n'),
  };
  await new Promise<void>((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const msg = JSON.parse(buf.slice(0, i)) as { ready?: boolean; listening?: number[] };
        buf = buf.slice(i + 1);
        if (msg.ready) resolve();
        if (msg.listening) {
          p.listening = msg.listening;
          onListening(msg.listening);
        }
      }
    });
    void exit.then(({ code }) => reject(new Error(`${side} half process exited ${code}: ${stderr}`)));
  });
  return p;
}

function chainsIn(ns: string): string[] {
  return sh(...inNs(ns, ['iptables-save'])).split('\n').filter((l) => l.includes(`HP-${chainTag(POD_ID)}-`));
}

function hasDevice(ns: string, dev: string): boolean {
  return spawnSync('ip', ['-n', ns, 'link', 'show', 'dev', dev], { encoding: 'utf8' }).status === 0;
}

function sysctl(ns: string, name: string): string {
  return sh(...inNs(ns, ['sysctl', '-n', name])).trim();
}

let hostHalf: NetnsHalf | null = null;
const hostLog: string[] = [];
let dpu: PeerProcess | null = null;

test.before(async () => {
  if (why) return;
  before = await snapshotHost();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), `${tag}-`));
  for (const ns of [NODE, POD, DPU]) addNetns(ns);
  // The node's side of the pod's veth is made in the node namespace: nothing in the host's.
  sh('ip', ['-n', NODE, 'link', 'add', 'hpn0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', POD]);
  sh('ip', ['-n', NODE, '-batch', '-'], `addr add ${NODE_IP}/24 dev hpn0\nlink set hpn0 up\n`);
  sh('ip', ['-n', POD, '-batch', '-'], `addr add ${POD_IP}/24 dev eth0\nlink set eth0 up\nroute add default via ${NODE_IP}\n`);
  // As in a CNI namespace that does not route: the host half must turn forwarding on, and back off.
  sh(...inNs(POD, ['sysctl', '-q', '-w', 'net.ipv4.conf.eth0.forwarding=0']));
});

test('open both halves: xpu0 in each, link addresses, the DPU half routes via the host half', async () => {
  if (why) return skip('netns halves', why);
  hostHalf = await openHostHalf({
    podId: POD_ID,
    netnsPath: nsPath(POD),
    podIp: POD_IP,
    declaredDpuPorts: [15006],
    onListeningPorts: (ports) => dpu?.send(ports),
    log: (level, msg) => hostLog.push(`${level}: ${msg}`),
  });
  const host = hostHalf;
  dpu = await startHalfProcess('dpu', DPU, (ports) => void host.setPeerListeningPorts(ports), ['--pod-ip', POD_IP]);
  dpu.send(host.listeningPorts());
  assert.ok(await host.waitUp(5000), 'XPU link up');
  assert.is(host.windowPath, podWindowPath(POD_ID));
  assert.match(sh('ip', ['-n', POD, '-4', '-o', 'addr', 'show', 'dev', 'xpu0']), '169.254.77.1/30');
  assert.match(sh('ip', ['-n', DPU, '-4', '-o', 'addr', 'show', 'dev', 'xpu0']), '169.254.77.2/30');
  assert.match(sh('ip', ['-n', DPU, 'route', 'show', 'default']), 'default via 169.254.77.1 dev xpu0');
  assert.is(sysctl(POD, 'net.ipv4.conf.eth0.forwarding'), '1');
  assert.is(sysctl(DPU, 'net.ipv4.conf.xpu0.route_localnet'), '1');
  assert.ok(chainsIn(POD).length > 0 && chainsIn(DPU).length > 0, 'per-pod chains in both halves');
  // Link addresses answer across.
  assert.is((await dial(POD, '169.254.77.2', 1, 1500)).error, 'ECONNREFUSED', 'the DPU half answers (refused: nothing listens)');
});

test('localhost both ways: a declared DPU port, and a loopback-only host listener found while running', async () => {
  if (why) return skip('netns localhost', why);
  const proxy = await serve(DPU, 'dpu', 15006);
  const app = await serve(POD, 'host', 8080, '127.0.0.1');
  try {
    const r = await dial(POD, '127.0.0.1', 15006);
    assert.is(r.half, 'dpu', `host 127.0.0.1:15006 reaches the DPU half: ${JSON.stringify(r)}`);
    const back = await probe(DPU, '127.0.0.1', 8080, 1500);
    assert.is((back.reply as Record<string, unknown>)?.half, 'host', `DPU 127.0.0.1:8080 reaches the host's loopback listener: ${JSON.stringify(back)}`);
    assert.is((back.reply as Record<string, unknown>).local, '127.0.0.1');
    assert.equal(hostHalf!.status().peerListening.includes(15006), true);
  } finally {
    await stop(proxy);
    await stop(app);
  }
});

test('pod IP: DPU ports from the node keep the client address; loopback-only listeners stay private', async () => {
  if (why) return skip('netns pod IP', why);
  const proxy = await serve(DPU, 'dpu', 15006);
  const admin = await serve(DPU, 'dpu', 15000, '127.0.0.1');
  const web = await serve(POD, 'host', 8081);
  try {
    await sleep(600); // both halves have seen the listeners
    const fromNode = await dial(NODE, POD_IP, 15006);
    assert.is(fromNode.half, 'dpu', `node → podIP:15006: ${JSON.stringify(fromNode)}`);
    assert.is(fromNode.remote, NODE_IP, 'the DPU half sees the client address');
    assert.is((await dial(NODE, POD_IP, 8081)).half, 'host', 'node → podIP:8081 stays in the host half');
    const adminFromNode = await dial(NODE, POD_IP, 15000);
    assert.ok(adminFromNode.error, `a DPU listener on 127.0.0.1 is not reachable at the pod IP: ${JSON.stringify(adminFromNode)}`);
    assert.is((await dial(POD, '127.0.0.1', 15000)).half, 'dpu', 'but it is at localhost from the host half');
    assert.is((await dial(POD, POD_IP, 15006)).half, 'dpu', 'host half → its own podIP:15006');
    assert.is((await dial(DPU, POD_IP, 15006)).half, 'dpu', 'DPU half → podIP:15006 (its own port)');
    assert.is((await dial(DPU, POD_IP, 8081)).half, 'host', 'DPU half → podIP:8081');
    // A neighbour that routes the link addresses through the pod gets nowhere.
    sh('ip', ['-n', NODE, 'route', 'add', '169.254.77.0/30', 'via', POD_IP]);
    try {
      const direct = await dial(NODE, '169.254.77.2', 15006, 800);
      assert.is(direct.error, 'timeout', `the DPU half's link address is not reachable from the network: ${JSON.stringify(direct)}`);
    } finally {
      sh('ip', ['-n', NODE, 'route', 'del', '169.254.77.0/30']);
    }
  } finally {
    for (const s of [proxy, admin, web]) await stop(s);
  }
});

test('egress from the DPU half leaves through the host half as the pod IP', async () => {
  if (why) return skip('netns egress', why);
  const outside = await serve(NODE, 'node', 9000);
  try {
    const r = await dial(DPU, NODE_IP, 9000);
    assert.is(r.half, 'node', JSON.stringify(r));
    assert.is(r.remote, POD_IP, 'SNAT to the pod IP');
  } finally {
    await stop(outside);
  }
});

test('a listener that appears later is reachable from the other half within 1 s, both ways', async () => {
  if (why) return skip('netns late listeners', why);
  for (const [from, to, half, port] of [[POD, DPU, 'dpu', 9100], [DPU, POD, 'host', 9200]] as const) {
    const prober = probe(from, '127.0.0.1', port, 4000);
    await sleep(300); // the prober is being refused
    const s = await serve(to, half, port);
    try {
      const r = await prober;
      assert.is((r.reply as Record<string, unknown>)?.half, half, JSON.stringify(r));
      const ms = (r.at as number) - s.at;
      assert.ok(ms < 1000, `${half} listener on ${port} reachable after ${ms} ms`);
      console.log(`# ${half} listener on ${port} reachable from the other half after ${ms} ms`);
    } finally {
      await stop(s);
    }
  }
});

test('a port listened on in both halves: each localhost keeps its own, the pod IP goes to the host half', async () => {
  if (why) return skip('netns conflict', why);
  const h = await serve(POD, 'host', 7000);
  const d = await serve(DPU, 'dpu', 7000);
  try {
    await sleep(600);
    assert.equal(hostHalf!.status().conflicts, [7000]);
    assert.ok(hostLog.some((l) => /^warn: .*ports 7000 are listened on in both halves/.test(l)), hostLog.join('\n'));
    assert.is((await dial(POD, '127.0.0.1', 7000)).half, 'host');
    assert.is((await dial(DPU, '127.0.0.1', 7000)).half, 'dpu');
    assert.is((await dial(NODE, POD_IP, 7000)).half, 'host');
  } finally {
    await stop(h);
    await stop(d);
  }
});

test('close: no rule, device, route, sysctl change or window remains', async () => {
  if (why) return skip('netns close', why);
  const window = hostHalf!.windowPath;
  await hostHalf!.close();
  await hostHalf!.close(); // idempotent
  hostHalf = null;
  dpu!.child.kill('SIGTERM');
  const { code, stderr } = await dpu!.exit;
  assert.is(code, 0, stderr);
  dpu = null;
  for (const ns of [POD, DPU]) {
    assert.equal(chainsIn(ns), [], `no chain of the pod in ${ns}`);
    assert.not.ok(hasDevice(ns, 'xpu0'), `no xpu0 in ${ns}`);
  }
  assert.is(sh('ip', ['-n', DPU, 'route', 'show']).trim(), '', 'no route left in the DPU half');
  assert.is(sysctl(POD, 'net.ipv4.conf.eth0.forwarding'), '0', 'eth0 forwarding put back');
  assert.not.ok(fs.existsSync(window), 'window removed');
  assert.equal(sh(...inNs(POD, ['iptables-save'])).split('\n').filter((l) => l.startsWith('-A')), [], 'no rule at all in the pod namespace');
});

test('poststop hook after a killed host half: removes chains, device and window; runs again harmlessly', async () => {
  if (why) return skip('netns hook', why);
  let peer: PeerProcess | null = null;
  const host = await startHalfProcess('host', POD, (ports) => peer?.send(ports), ['--pod-ip', POD_IP]);
  peer = await startHalfProcess('dpu', DPU, (ports) => host.send(ports));
  const window = podWindowPath(POD_ID);
  assert.ok(fs.existsSync(window));
  host.child.kill('SIGKILL'); // the shim dies
  await host.exit;
  assert.ok(chainsIn(POD).length > 0, 'a killed host half leaves its chains');
  assert.ok(fs.existsSync(window), 'and its window');

  // runc gives a poststop hook the state of the sandbox container.
  const bundle = path.join(tmp, 'bundle');
  fs.mkdirSync(bundle);
  fs.writeFileSync(path.join(bundle, 'config.json'), JSON.stringify({ linux: { namespaces: [{ type: 'pid' }, { type: 'network', path: nsPath(POD) }] } }));
  const state = { ociVersion: '1.0.2', id: POD_ID, status: 'stopped', bundle, annotations: { 'io.kubernetes.cri.sandbox-id': POD_ID } };
  const r = spawnSync(hook, [], { input: JSON.stringify(state), encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stderr, 'removed 4 netfilter chains');
  assert.match(r.stderr, `removed XPU window ${window}`);
  assert.equal(chainsIn(POD), []);
  assert.not.ok(hasDevice(POD, 'xpu0'));
  assert.not.ok(fs.existsSync(window));
  const again = spawnSync(hook, ['--pod', POD_ID, '--netns', nsPath(POD)], { encoding: 'utf8' });
  assert.is(again.status, 0, again.stderr);
  assert.is(again.stderr, '', 'nothing left to remove');

  // The DPU half outlives its peer and still closes cleanly.
  peer.child.kill('SIGTERM');
  const { code, stderr } = await peer.exit;
  assert.is(code, 0, stderr);
  assert.equal(chainsIn(DPU), []);
  assert.not.ok(hasDevice(DPU, 'xpu0'));
});

test('a host half opened again after a killed one: the window it left says to look, and its chains go first', async () => {
  if (why) return skip('netns reopen', why);
  const window = podWindowPath(POD_ID);
  const jumps = () => chainsIn(POD).filter((l) => /^-A (PREROUTING|OUTPUT|POSTROUTING|FORWARD) /.test(l));
  const first = await startHalfProcess('host', POD, () => undefined, ['--pod-ip', POD_IP]);
  const installed = jumps();
  assert.is(installed.length, 4, 'one jump from each built-in chain');
  first.child.kill('SIGKILL');
  await first.exit;
  assert.ok(fs.existsSync(window), 'a killed host half leaves its window');
  // Its end counts as live until its heartbeat is a second old.
  await waitFor('the killed host end to go stale', 5000, () => !readStats(window).host.alive || undefined, 50);
  const second = await startHalfProcess('host', POD, () => undefined, ['--pod-ip', POD_IP]);
  assert.equal(jumps(), installed, 'the old jumps went before the new ones: none doubled');
  second.child.kill('SIGTERM');
  const { code, stderr } = await second.exit;
  assert.is(code, 0, stderr);
  assert.equal(chainsIn(POD), []);
  assert.not.ok(fs.existsSync(window));
});

test('a failed open says why and leaves nothing behind', async () => {
  if (why) return skip('netns failed open', why);
  const window = podWindowPath(POD_ID);
  // (The killed host half above could not put eth0's forwarding back: the hook does not know the old value.)
  const forwarding = sysctl(POD, 'net.ipv4.conf.eth0.forwarding');
  await openHostHalf({ podId: POD_ID, netnsPath: nsPath(POD), podIp: '10.233.250.99' }).then(
    () => assert.unreachable('opened with a pod IP the namespace does not have'),
    (err: Error) => assert.match(err.message, `open the host half of pod ${POD_ID} in ${nsPath(POD)}: no device in ${nsPath(POD)} has the pod IP 10.233.250.99`),
  );
  assert.not.ok(hasDevice(POD, 'xpu0'), 'its xpu0 is gone');
  assert.not.ok(fs.existsSync(window), 'its window is gone');
  assert.equal(chainsIn(POD), []);
  await openDpuHalf({ podId: POD_ID, netnsPath: nsPath(DPU) }).then(
    () => assert.unreachable('opened a DPU half without a host half'),
    (err: Error) => assert.match(err.message, 'does not exist (the host half is opened first)'),
  );
  await openHostHalf({ podId: POD_ID, netnsPath: path.join(tmp, 'not-a-netns'), podIp: POD_IP }).then(
    () => assert.unreachable('opened in a path that is not a namespace'),
    (err: Error) => assert.match(err.message, 'is not a network namespace'),
  );
  assert.is(sysctl(POD, 'net.ipv4.conf.eth0.forwarding'), forwarding, 'sysctls untouched');
});

test.after(async () => {
  if (why) return;
  await hostHalf?.close().catch(() => undefined);
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await sleep(300);
  spawnSync(hook, ['--pod', POD_ID]);
  for (const ns of [NODE, POD, DPU]) delNetns(ns);
  fs.rmSync(tmp, { recursive: true, force: true });
  assert.equal(listNetns(tag), [], 'network namespaces left behind');
  assert.equal(processesMatching(tag), [], 'processes left behind');
  // Test-made things carry an hpx-<test> tag; another test's (unit tests run
  // without the test bed lock, in other checkouts too) are that test's to check.
  const leaks = (await persistentLeaksSince(before)).filter((l) => !/hpx-/.test(l) || l.includes(tag));
  assert.equal(leaks, [], `left behind:\n${leaks.join('\n')}`);
});

test.run();
