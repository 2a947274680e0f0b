// Unit tests of the split network namespace's pure parts: the heteropod.io/ports
// annotation, port ownership, libxpu's listener records, rule generation and
// removal, the hook's reading of the OCI state; and the listener watcher (as
// root) on this process's own namespace and on one the test makes.
import { execFileSync, spawn } from 'node:child_process';
import * as net from 'node:net';
import * as os from 'node:os';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { quoted } from '../../src/placement/annotations';
import { AnnotationError, conflictingPorts, declaredPortList, dpuOwnedPorts, hostOwnedPorts, parsePortsAnnotation } from '../../src/netns/ports';
import { Listener, ListenerWatcher, decodeListeners } from '../../src/netns/listeners';
import { LISTENER_BYTES } from '../../src/xpu/native';
import { chainName, chainTag, halfRules, multiportChunks, removalRules } from '../../src/netns/rules';
import { parseArgs, targetFromState } from '../../src/netns/hook';
import { podWindowPath } from '../../src/netns/half';
import { OWN_NETNS, addresses4, hasOwnDevice, inNetns, readSysctls, setUpLink, swapSysctls, writeSysctls } from '../../src/netns/exec';
import { addNetns, canMakeNetns, delNetns, listNetns } from '../lib/netns';
import { skip } from '../lib/skip';

const POD = '4f2a9c7e1b3d5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcd';
const T = '4f2a9c7e1b3d';

// ---- heteropod.io/ports

test('ports annotation: one container, several, a trailing ";", empty', () => {
  assert.equal([...parsePortsAnnotation('istio-proxy=15001,15006')], [['istio-proxy', [15001, 15006]]]);
  assert.equal([...parsePortsAnnotation('istio-proxy=15001,15006;log-agent=24224;')], [
    ['istio-proxy', [15001, 15006]],
    ['log-agent', [24224]],
  ]);
  assert.equal(declaredPortList(parsePortsAnnotation('b=3,1;a=2')), [1, 2, 3]);
  assert.is(parsePortsAnnotation('').size, 0);
  assert.is(parsePortsAnnotation(undefined).size, 0);
  assert.equal([...parsePortsAnnotation('proxy=1,65535', ['proxy', 'metrics'])], [['proxy', [1, 65535]]]);
});

test('ports annotation: bad input names the annotation, the value and what is wrong', () => {
  const cases: Array<[string, RegExp, string[]?]> = [
    ['istio-proxy', /entry "istio-proxy" has no "="/],
    ['=15001', /"" is not a container name/],
    ['Istio_Proxy=1', /"Istio_Proxy" is not a container name/],
    ['proxy=', /container "proxy" has no ports/],
    ['proxy=0', /"0" \(container "proxy"\) is not a port number in 1-65535/],
    ['proxy=65536', /"65536" .* not a port number/],
    ['proxy=80,http', /"http" .* not a port number/],
    ['proxy=1,,2', /"" \(container "proxy"\) is not a port number/],
    ['proxy=-1', /"-1" .* not a port number/],
    ['proxy=80,80', /port 80 is listed twice for container "proxy"/],
    ['a=80;b=80', /port 80 is claimed by both "a" and "b"/],
    ['a=1;a=2', /container "a" is listed twice/],
    ['a=1;;b=2', /empty entry between ";"/],
    [' a=1', /whitespace at character 1: values are read exactly as written/],
    ['a = 1', /whitespace at character 2/],
    ['a=1,\t2', /whitespace at character 5/],
    [`a=${'1'.repeat(10_000)}`, /"a=1111+"\.\.\. \(10002 characters\): "1111+"\.\.\. \(10000 characters\) \(container "a"\) is not a port number/],
    ['app=8080', /container "app" is not offloaded \(heteropod.io\/offload names: proxy\)/, ['proxy']],
  ];
  for (const [value, why, offloaded] of cases) {
    try {
      parsePortsAnnotation(value, offloaded);
      assert.unreachable(`"${value}" was accepted`);
    } catch (err) {
      assert.instance(err, AnnotationError, value);
      const e = err as AnnotationError;
      assert.ok(e.message.startsWith(`annotation heteropod.io/ports=${quoted(value)}: `), e.message);
      assert.ok(e.message.length < 400, `a short error: ${e.message.length} characters`);
      assert.match(e.message, why);
      assert.is(e.annotation, 'heteropod.io/ports');
      assert.is(e.value, value);
    }
  }
});

// ---- ownership

test('ownership: declared ports are the DPU half\'s; listeners elsewhere follow their half; conflicts', () => {
  const v = { declaredDpu: [15006], hostListening: [8080, 7000, 15006], dpuListening: [15000, 7000, 9100] };
  assert.equal(dpuOwnedPorts(v), [9100, 15000, 15006], 'host half sends these across');
  assert.equal(hostOwnedPorts(v), [8080], 'DPU half sends these across (not 7000: its own; not 15006: declared)');
  assert.equal(conflictingPorts(v), [7000]);
  const none = { declaredDpu: [], hostListening: [], dpuListening: [] };
  assert.equal([dpuOwnedPorts(none), hostOwnedPorts(none), conflictingPorts(none)], [[], [], []]);
});

// ---- listening sockets

/** struct xpu_listener records as libxpu writes them (host byte order port). */
function listenerRecords(rows: Array<[number, number, number[]]>): Buffer {
  const buf = Buffer.alloc(rows.length * LISTENER_BYTES);
  rows.forEach(([family, port, addr], i) => {
    const r = buf.subarray(i * LISTENER_BYTES);
    r[0] = family;
    if (os.endianness() === 'LE') r.writeUInt16LE(port, 2);
    else r.writeUInt16BE(port, 2);
    Buffer.from(addr).copy(r, 4);
  });
  return buf;
}

test('listener records: family, address as text, port; only the first count; unknown family skipped', () => {
  const v6 = (...tail: number[]) => [...new Array(16 - tail.length).fill(0), ...tail];
  const buf = listenerRecords([
    [4, 8080, [127, 0, 0, 1]],
    [4, 15014, [0, 0, 0, 0]],
    [6, 15000, v6()],
    [6, 15001, v6(1)],
    [6, 15002, v6(0xff, 0xff, 127, 0, 0, 1)],
    [6, 80, [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]],
    [9, 1, [1, 2, 3, 4]],
    [4, 9999, [10, 0, 0, 1]],
  ]);
  assert.equal(decodeListeners(buf, 7), [
    { family: 4, address: '127.0.0.1', port: 8080 },
    { family: 4, address: '0.0.0.0', port: 15014 },
    { family: 6, address: '::', port: 15000 },
    { family: 6, address: '::1', port: 15001 },
    { family: 6, address: '::ffff:7f00:1', port: 15002 },
    { family: 6, address: '2001:db8:1::1', port: 80 },
  ]);
  assert.equal(decodeListeners(buf, 0), []);
});

test('listener watcher: sees a listener appear and go in its namespace', async () => {
  if (process.getuid?.() !== 0) return skip('listener watcher', 'needs root (setns)');
  const w = await ListenerWatcher.open('/proc/self/ns/net');
  const server = net.createServer();
  try {
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    assert.ok(w.ports().includes(port), `port ${port} seen`);
    assert.ok(w.listeners().some((l) => l.port === port && l.address === '127.0.0.1' && l.family === 4));
    const changed = new Promise<number[]>((r) => w.start({ intervalMs: 20, onChange: r }));
    await new Promise((r) => server.close(r));
    // The watcher's timer does not hold the process open (its owner does); this one does.
    const hold = setTimeout(() => undefined, 5000);
    assert.not.ok((await changed).includes(port), 'gone after close');
    clearTimeout(hold);
  } finally {
    server.close();
    w.close();
    w.close();
  }
  assert.throws(() => w.ports(), /closed/);
  assert.throws(() => w.listeners(), /listener watcher for \/proc\/self\/ns\/net is closed/);
});

test('listener watchers share one timer: each sees its change; one closed, the others go on', async () => {
  if (process.getuid?.() !== 0) return skip('listener watchers, one timer', 'needs root (setns)');
  const ws = await Promise.all([1, 2, 3].map(() => ListenerWatcher.open('/proc/self/ns/net')));
  const seen = ws.map(() => [] as number[][]);
  const servers: net.Server[] = [];
  const listen = async () => {
    const s = net.createServer();
    servers.push(s);
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    return (s.address() as net.AddressInfo).port;
  };
  const hold = setTimeout(() => undefined, 10_000); // the shared timer does not hold the process open
  try {
    ws.forEach((w, i) => {
      w.refresh();
      w.start({ intervalMs: 20, onChange: (ports) => seen[i].push(ports) });
    });
    const first = await listen();
    assert.ok(await waitUntil(() => seen.every((s) => s.some((p) => p.includes(first)))), 'every watcher saw the first listener');
    ws[1].close();
    const second = await listen();
    assert.ok(await waitUntil(() => [0, 2].every((i) => seen[i].some((p) => p.includes(second)))), 'the open watchers saw the second');
    assert.not.ok(seen[1].some((p) => p.includes(second)), 'the closed one looks no more');
  } finally {
    clearTimeout(hold);
    for (const s of servers) s.close();
    for (const w of ws) w.close();
  }
});

test('listener watcher settles: every tick while its ports change, less often once they have not changed for a while, every tick again after a change', async () => {
  if (process.getuid?.() !== 0) return skip('listener watcher settling', 'needs root (setns)');
  const w = await ListenerWatcher.open('/proc/self/ns/net');
  const seen: number[][] = [];
  const server = net.createServer();
  const hold = setTimeout(() => undefined, 10_000); // the shared timer does not hold the process open
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const looksIn = async (ms: number) => {
    const before = w.looks;
    await sleep(ms);
    return w.looks - before;
  };
  try {
    w.refresh();
    w.start({ intervalMs: 20, idleIntervalMs: 200, settleMs: 300, onChange: (ports) => seen.push(ports) });
    const starting = await looksIn(250);
    assert.ok(starting >= 5, `every 20 ms tick while starting: ${starting} looks in 250 ms`);
    await sleep(200); // settled: no change for 300 ms
    const settled = await looksIn(1000);
    assert.ok(settled >= 2 && settled <= 10, `every 200 ms once settled: ${settled} looks in 1000 ms`);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    assert.ok(await waitUntil(() => seen.some((p) => p.includes(port)), 1000), 'a new listener is seen while settled');
    const changed = await looksIn(200);
    assert.ok(changed >= 4, `every tick again after a change: ${changed} looks in 200 ms`);
  } finally {
    clearTimeout(hold);
    server.close();
    w.close();
  }
});

async function waitUntil(ok: () => boolean, ms = 3000): Promise<boolean> {
  for (const t0 = Date.now(); Date.now() - t0 < ms; await new Promise((r) => setTimeout(r, 10))) if (ok()) return true;
  return ok();
}

test('listener watcher: a path that is no network namespace is refused, naming it', async () => {
  if (process.getuid?.() !== 0) return skip('listener watcher paths', 'needs root (setns)');
  const refused = async (p: string, why: RegExp) => {
    const err = await ListenerWatcher.open(p).then(
      (w) => {
        w.close();
        return new Error(`opened ${p}`);
      },
      (e: Error) => e,
    );
    assert.ok(err.message.startsWith(`watch listening sockets in ${p}: `), err.message);
    assert.match(err.message, why);
  };
  await refused('/nonexistent/netns', /ENOENT: no such file or directory/);
  await refused('/proc/self/ns/uts', /not a network namespace/);
  await refused('/proc/self/ns', /not a network namespace|EISDIR/);
});

// Run inside the test's namespace: listeners on 127.0.0.1:7001, [::]:7002 and
// 127.0.0.1:7100-7199; an ESTABLISHED connection to 7003 and a TIME_WAIT socket on
// 7004, both of whose listeners are closed again. Prints the client ports, then
// waits for its stdin to close (and gives up by itself after a minute).
const SOCKETS_IN_NAMESPACE = `
const net = require('node:net');
setTimeout(() => process.exit(3), 60000).unref();
const listen = (port, host, onConn = () => {}) =>
  new Promise((ok) => { const s = net.createServer(onConn); s.listen(port, host, () => ok(s)); });
const connect = (port) => new Promise((ok) => { const c = net.connect(port, '127.0.0.1', () => ok(c)); });
(async () => {
  await listen(7001, '127.0.0.1');
  await listen(7002, '::');
  for (let p = 7100; p < 7200; p++) await listen(p, '127.0.0.1');
  const kept = [];
  const est = await listen(7003, '127.0.0.1', (c) => kept.push(c));
  const client = await connect(7003);
  est.close(); // stops listening now; the connection stays
  // The accepting side closes first, so its socket (port 7004) goes to TIME_WAIT.
  const tw = await listen(7004, '127.0.0.1', (c) => c.end());
  const closer = await connect(7004);
  await new Promise((ok) => closer.on('close', ok).resume());
  await new Promise((ok) => tw.close(ok));
  process.stdout.write(JSON.stringify({ established: client.localPort, timeWait: closer.localPort }) + '\\n');
  process.stdin.on('end', () => process.exit(0)).resume();
})();
`;

test('listener watcher: in a namespace of its own, LISTEN sockets only, both families, none of ours', async () => {
  const why = canMakeNetns();
  if (why) return skip('listener watcher in a namespace', why);
  const name = `hpx-lw${process.pid}`;
  const path = addNetns(name);
  const child = spawn('ip', ['netns', 'exec', name, process.execPath, '-e', SOCKETS_IN_NAMESPACE], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise<void>((r) => child.once('close', () => r()));
  const ours = net.createServer();
  let w: ListenerWatcher | undefined;
  try {
    const clientPorts = await new Promise<{ established: number; timeWait: number }>((resolve, reject) => {
      let out = '';
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('\n')) resolve(JSON.parse(out));
      });
      child.once('exit', (code) => reject(new Error(`sockets in ${name}: exited ${code}`)));
    });
    // The namespace really holds the connections whose ports must not be listed.
    const ss = execFileSync('ip', ['netns', 'exec', name, 'ss', '-Htan'], { encoding: 'utf8' });
    assert.match(ss, /ESTAB\s+\S+\s+\S+\s+127\.0\.0\.1:7003\s/);
    assert.match(ss, /TIME-WAIT\s+\S+\s+\S+\s+127\.0\.0\.1:7004\s/);
    await new Promise<void>((r) => ours.listen(0, '127.0.0.1', r));
    const ourPort = (ours.address() as net.AddressInfo).port;

    w = await ListenerWatcher.open(path);
    const byPort = (a: Listener, b: Listener) => a.port - b.port;
    const want: Listener[] = [{ family: 4, address: '127.0.0.1', port: 7001 }, { family: 6, address: '::', port: 7002 }];
    for (let p = 7100; p < 7200; p++) want.push({ family: 4, address: '127.0.0.1', port: p });
    // 102 listeners: more than the first look has room for.
    assert.equal(w.listeners().sort(byPort), want.sort(byPort));
    const ports = w.ports();
    for (const p of [7003, 7004, clientPorts.established, clientPorts.timeWait, ourPort]) {
      assert.not.ok(ports.includes(p), `port ${p} listed`);
    }
    assert.ok(w.refresh());
    assert.not.ok(w.refresh(), 'nothing changed');
  } finally {
    w?.close();
    ours.close();
    child.stdin!.end();
    const t = setTimeout(() => child.kill('SIGKILL'), 2000);
    await exited;
    clearTimeout(t);
    delNetns(name);
  }
  assert.equal(listNetns(name), [], 'namespace removed');
});

// ---- rules

test('chain names: a sandbox id prefix, or a hash; never over iptables\' 28 characters', () => {
  assert.is(chainTag(POD), T);
  assert.is(chainName(POD, 'POSTROUTING'), `HP-${T}-POSTROUTING`);
  assert.is(chainTag('my pod!'), chainTag('my pod!'));
  assert.match(chainTag('my pod!'), /^[0-9a-f]{12}$/);
  assert.ok(chainName('x', 'POSTROUTING').length <= 28);
  assert.is(podWindowPath(POD), `/dev/shm/heteropod/pod-${POD}.xpu`);
  assert.throws(() => podWindowPath('../etc'), /invalid pod id/);
});

test('host half rules: jumps, localhost and pod IP to the DPU half, SNATs, forwarding', () => {
  const text = halfRules({ side: 'host', podId: POD, podIp: '10.233.250.2', peerPorts: [15000, 15006] }, { jumps: true });
  const c = `HP-${T}`;
  assert.fixture(
    text,
    [
      '*nat',
      `:${c}-PREROUTING - [0:0]`,
      `:${c}-OUTPUT - [0:0]`,
      `:${c}-POSTROUTING - [0:0]`,
      `-I PREROUTING 1 -m comment --comment "heteropod pod ${POD} host half" -j ${c}-PREROUTING`,
      `-I OUTPUT 1 -m comment --comment "heteropod pod ${POD} host half" -j ${c}-OUTPUT`,
      `-I POSTROUTING 1 -m comment --comment "heteropod pod ${POD} host half" -j ${c}-POSTROUTING`,
      `-A ${c}-PREROUTING -s 169.254.77.2/32 -d 169.254.77.1/32 -i xpu0 -p tcp -m comment --comment "localhost from the DPU half" -j DNAT --to-destination 127.0.0.1`,
      `-A ${c}-PREROUTING -d 10.233.250.2/32 ! -i xpu0 -p tcp -m multiport --dports 15000,15006 -m comment --comment "pod IP to the DPU half" -j DNAT --to-destination 169.254.77.2`,
      `-A ${c}-OUTPUT -d 10.233.250.2/32 -p tcp -m multiport --dports 15000,15006 -m comment --comment "pod IP to the DPU half" -j DNAT --to-destination 169.254.77.2`,
      `-A ${c}-OUTPUT -d 127.0.0.1/32 -p tcp -m multiport --dports 15000,15006 -m comment --comment "localhost to the DPU half" -j DNAT --to-destination 169.254.77.2`,
      `-A ${c}-POSTROUTING -s 127.0.0.0/8 -o xpu0 -m comment --comment "localhost to the DPU half" -j SNAT --to-source 169.254.77.1`,
      `-A ${c}-POSTROUTING -s 169.254.77.2/32 ! -o xpu0 -m comment --comment "DPU half egress as the pod IP" -j SNAT --to-source 10.233.250.2`,
      'COMMIT',
      '*filter',
      `:${c}-FORWARD - [0:0]`,
      `-I FORWARD 1 -m comment --comment "heteropod pod ${POD} host half" -j ${c}-FORWARD`,
      `-A ${c}-FORWARD -s 169.254.77.0/30 ! -i xpu0 -m comment --comment "link addresses only from the link" -j DROP`,
      `-A ${c}-FORWARD -i xpu0 -m comment --comment "from the DPU half" -j ACCEPT`,
      `-A ${c}-FORWARD -o xpu0 -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -m comment --comment "to the DPU half: replies, pod IP ports" -j ACCEPT`,
      `-A ${c}-FORWARD -o xpu0 -m comment --comment "to the DPU half: nothing else" -j DROP`,
      'COMMIT',
      '',
    ].join('\n'),
  );
  const update = halfRules({ side: 'host', podId: POD, podIp: '10.233.250.2', peerPorts: [] }, { jumps: false });
  assert.not.match(update, /^-I /m, 'updates leave the jumps alone');
  assert.not.match(update, /multiport/, 'no port rule without ports');
  assert.throws(() => halfRules({ side: 'host', podId: POD, peerPorts: [] }, { jumps: true }), /pod IP is required/);
});

test('DPU half rules: localhost to the host half, its own pod-IP ports kept local; no filter table', () => {
  const text = halfRules({ side: 'dpu', podId: POD, podIp: '10.233.250.2', peerPorts: [8080], ownPodIpPorts: [15006] }, { jumps: true });
  assert.match(text, `-A HP-${T}-PREROUTING -s 169.254.77.1/32 -d 169.254.77.2/32 -i xpu0 -p tcp -m comment --comment "localhost from the host half" -j DNAT --to-destination 127.0.0.1`);
  assert.match(text, `-A HP-${T}-OUTPUT -d 127.0.0.1/32 -p tcp -m multiport --dports 8080 -m comment --comment "localhost to the host half" -j DNAT --to-destination 169.254.77.1`);
  assert.match(text, `-A HP-${T}-OUTPUT -d 10.233.250.2/32 -p tcp -m multiport --dports 15006 -m comment --comment "pod IP served in this half" -j DNAT --to-destination 169.254.77.2`);
  assert.match(text, `-j SNAT --to-source 169.254.77.2`);
  assert.not.match(text, /\*filter/);
  assert.not.match(text, /! -o xpu0/, 'no egress SNAT: the host half does it');
  const noIp = halfRules({ side: 'dpu', podId: POD, peerPorts: [], ownPodIpPorts: [15006] }, { jumps: false });
  assert.not.match(noIp, /pod IP served/);
  // On the DPU's uplink the pod IP is the half's own address: only the host half's ports cross.
  const local = halfRules({ side: 'dpu', podId: POD, podIp: '10.233.250.2', peerPorts: [8080], ownPodIpPorts: [15006], podIpLocal: true }, { jumps: false });
  assert.match(local, `-A HP-${T}-OUTPUT -d 10.233.250.2/32 -p tcp -m multiport --dports 8080 -m comment --comment "pod IP served in the host half" -j DNAT --to-destination 169.254.77.1`);
  assert.not.match(local, /pod IP served in this half/);
});

test('multiport: at most 15 ports a rule', () => {
  const ports = Array.from({ length: 31 }, (_, i) => 1000 + i);
  const chunks = multiportChunks(ports);
  assert.is(chunks.length, 3);
  assert.is(chunks[0].split(',').length, 15);
  assert.is(chunks[2], '1030');
  const text = halfRules({ side: 'dpu', podId: POD, peerPorts: ports }, { jumps: false });
  assert.is((text.match(/localhost to the host half" -j DNAT/g) ?? []).length, 3);
});

test('removal: exactly the pod\'s jumps and chains, from iptables-save output; nothing when absent', () => {
  const other = 'HP-0123456789ab';
  const saved = [
    '# Generated by iptables-save v1.8.9 (nf_tables)',
    '*filter',
    ':INPUT ACCEPT [0:0]',
    ':FORWARD DROP [0:0]',
    ':OUTPUT ACCEPT [0:0]',
    `:HP-${T}-FORWARD - [0:0]`,
    `-A FORWARD -m comment --comment "heteropod pod ${POD} host half" -j HP-${T}-FORWARD`,
    '-A FORWARD -i eth0 -j ACCEPT',
    `-A HP-${T}-FORWARD -i xpu0 -m comment --comment "from the DPU half" -j ACCEPT`,
    'COMMIT',
    '*nat',
    ':PREROUTING ACCEPT [0:0]',
    ':OUTPUT ACCEPT [0:0]',
    `:HP-${T}-OUTPUT - [0:0]`,
    `:${other}-OUTPUT - [0:0]`,
    '-A PREROUTING -p tcp -j ISTIO_INBOUND',
    `-A OUTPUT -m comment --comment "heteropod pod ${POD} host half" -j HP-${T}-OUTPUT`,
    `-A OUTPUT -j ${other}-OUTPUT`,
    `-A HP-${T}-OUTPUT -d 127.0.0.1/32 -p tcp -m multiport --dports 1 -j DNAT --to-destination 169.254.77.2`,
    'COMMIT',
    '*mangle',
    ':PREROUTING ACCEPT [0:0]',
    'COMMIT',
  ].join('\n');
  assert.fixture(
    removalRules(saved, POD),
    [
      '*filter',
      `:HP-${T}-FORWARD - [0:0]`,
      `-D FORWARD -m comment --comment "heteropod pod ${POD} host half" -j HP-${T}-FORWARD`,
      `-X HP-${T}-FORWARD`,
      'COMMIT',
      '*nat',
      `:HP-${T}-OUTPUT - [0:0]`,
      `-D OUTPUT -m comment --comment "heteropod pod ${POD} host half" -j HP-${T}-OUTPUT`,
      `-X HP-${T}-OUTPUT`,
      'COMMIT',
      '',
    ].join('\n'),
  );
  assert.is(removalRules(saved.replaceAll(T, 'ffffffffffff'), POD), '');
  assert.is(removalRules('', POD), '');
});

// ---- the hook's input

test('hook: the pod and its namespace from the OCI state and the bundle\'s config.json', () => {
  const spec = JSON.stringify({ linux: { namespaces: [{ type: 'pid' }, { type: 'network', path: '/var/run/netns/cni-1234' }] } });
  const files = new Map([['/b/config.json', spec]]);
  const read = (p: string) => {
    const f = files.get(p);
    if (f === undefined) throw new Error(`ENOENT ${p}`);
    return f;
  };
  assert.equal(targetFromState(JSON.stringify({ id: 'c1', bundle: '/b', annotations: { 'io.kubernetes.cri.sandbox-id': POD } }), read), {
    podId: POD,
    netnsPath: '/var/run/netns/cni-1234',
  });
  assert.equal(targetFromState(JSON.stringify({ id: POD, bundle: '/gone' }), read), { podId: POD, netnsPath: undefined });
  assert.throws(() => targetFromState('not json', read), /OCI state on stdin is not JSON/);
  assert.throws(() => targetFromState('{}', read), /has no id/);
  assert.equal(parseArgs(['--pod', POD, '--netns', '/run/netns/x']), { podId: POD, netnsPath: '/run/netns/x' });
  assert.is(parseArgs([]), null);
  assert.throws(() => parseArgs(['--netns', '/x']), /--pod is required/);
  assert.throws(() => parseArgs(['--pod']), /unexpected argument "--pod"/);
});

// ---- visits to a namespace (exec.ts)

test('sysctls: swapSysctls reads the old values, then writes, in one visit without a process; the caller\'s namespace is untouched; a bad name is named', async () => {
  const why = canMakeNetns();
  if (why) return skip('sysctl swap', why);
  const p = addNetns('hpx-sysctl');
  try {
    const names = ['net.ipv4.ip_local_port_range', 'net.ipv4.ip_local_reserved_ports'];
    const own = await readSysctls(OWN_NETNS, names);
    const before = await readSysctls(p, names);
    const old = await swapSysctls(p, names, new Map([['net.ipv4.ip_local_port_range', '47000 60999'], ['net.ipv4.ip_local_reserved_ports', '15006']]));
    assert.equal(old, before, 'the values from before the write');
    const now = await readSysctls(p, names);
    assert.is(now.get('net.ipv4.ip_local_port_range')!.replace(/\s+/g, ' '), '47000 60999');
    assert.is(now.get('net.ipv4.ip_local_reserved_ports'), '15006');
    // The same read by sysctl(8) in the namespace: the library wrote that namespace's value.
    assert.is((await inNetns(p, ['sysctl', '-n', 'net.ipv4.ip_local_reserved_ports'])).trim(), '15006');
    assert.equal(await readSysctls(OWN_NETNS, names), own, "the caller's own namespace keeps its values");
    // Emptied again: an empty value is written as such.
    await writeSysctls(p, new Map([['net.ipv4.ip_local_reserved_ports', '']]));
    assert.is((await readSysctls(p, ['net.ipv4.ip_local_reserved_ports'])).get('net.ipv4.ip_local_reserved_ports'), '');
    const missing = await swapSysctls(p, names, new Map([['net.ipv4.conf.nosuchdev.forwarding', '1']])).catch((e: Error) => e);
    assert.instance(missing, Error);
    assert.match((missing as Error).message, /net\.ipv4\.conf\.nosuchdev\.forwarding.*ENOENT/);
    const bad = await swapSysctls(p, ['net.ipv4.ip_forward\nnet.ipv4.ip_forward'], new Map()).catch((e: Error) => e);
    assert.match((bad as Error).message, /is not a sysctl name/);
    assert.match((await readSysctls('/nonexistent/netns', names).catch((e: Error) => e) as Error).message, /no such network namespace/);
    // The caller's own namespace: inNetns runs the tool itself; hasOwnDevice asks if_nametoindex.
    assert.ok(hasOwnDevice('lo'));
    assert.not.ok(hasOwnDevice('hpxnosuchdev0'));
    assert.match(await inNetns(OWN_NETNS, ['ip', '-o', 'link', 'show', 'dev', 'lo']), /lo:/);
  } finally {
    delNetns('hpx-sysctl');
  }
});

test('inNetns: runs the tool inside the namespace (no nsenter), with its input, and says why it failed', async () => {
  const why = canMakeNetns();
  if (why) return skip('inNetns', why);
  const p = addNetns('hpx-run');
  try {
    await inNetns(p, ['ip', 'link', 'add', 'hpxdummy0', 'type', 'veth', 'peer', 'name', 'hpxdummy1']);
    assert.match(await inNetns(p, ['ip', '-o', 'link', 'show']), /hpxdummy0/);
    assert.not.match(await inNetns(OWN_NETNS, ['ip', '-o', 'link', 'show']), /hpxdummy0/, "not in the caller's namespace");
    assert.is(await inNetns(p, ['cat'], 'line one\nline two\n'), 'line one\nline two\n');
    // Output and input both larger than a pipe: neither side waits for the other.
    const big = 'x'.repeat(300_000) + '\n';
    assert.is((await inNetns(p, ['cat'], big)).length, big.length);
    // More than libxpu's buffer: read again, whole.
    assert.is((await inNetns(p, ['sh', '-c', 'head -c 1500000 /dev/zero | tr "\\0" x'])).length, 1_500_000);
    const failed = await inNetns(p, ['sh', '-c', 'echo oops >&2; exit 3']).catch((e: Error) => e);
    assert.match((failed as Error).message, /^sh -c echo oops >&2; exit 3 \(in .*hpx-run\): oops$/);
    const quiet = await inNetns(p, ['sh', '-c', 'exit 4']).catch((e: Error) => e);
    assert.match((quiet as Error).message, /exit code 4$/);
    const missing = await inNetns(p, ['no-such-tool-hpx']).catch((e: Error) => e);
    assert.match((missing as Error).message, /no-such-tool-hpx: not found/);
    const nons = await inNetns('/nonexistent/netns', ['true']).catch((e: Error) => e);
    assert.match((nons as Error).message, /not found \(or no such network namespace\)/);
    // Many at once, each its own answer.
    const many = await Promise.all(Array.from({ length: 16 }, (_, i) => inNetns(p, ['sh', '-c', `echo ${i}`])));
    assert.equal(many.map((o) => o.trim()), Array.from({ length: 16 }, (_, i) => String(i)));
  } finally {
    delNetns('hpx-run');
  }
});

test('link: setUpLink gives the device its MAC, address, permanent neighbour and route, and lo up; addresses4 lists them', async () => {
  const why = canMakeNetns();
  if (why) return skip('link set-up', why);
  const p = addNetns('hpx-link');
  try {
    await inNetns(p, ['ip', 'link', 'add', 'xpu0', 'type', 'veth', 'peer', 'name', 'xpu0p']);
    await inNetns(p, ['ip', 'link', 'set', 'xpu0', 'up']);
    setUpLink(p, { dev: 'xpu0', mac: '02:68:70:77:00:02', cidr: '169.254.77.2/30', peer: '169.254.77.1', peerMac: '02:68:70:77:00:01', route: 'default', loUp: true });
    const link = JSON.parse(await inNetns(p, ['ip', '-j', 'addr', 'show', 'dev', 'xpu0'])) as Array<{ address: string; addr_info: Array<{ family: string; local: string; prefixlen: number }> }>;
    assert.is(link[0].address, '02:68:70:77:00:02');
    assert.equal(link[0].addr_info.filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`), ['169.254.77.2/30']);
    assert.match(await inNetns(p, ['ip', 'neigh', 'show', 'dev', 'xpu0']), /169\.254\.77\.1 lladdr 02:68:70:77:00:01 PERMANENT/);
    assert.match(await inNetns(p, ['ip', 'route', 'show', 'default']), /default via 169\.254\.77\.1 dev xpu0/);
    assert.match(await inNetns(p, ['ip', '-o', 'link', 'show', 'dev', 'lo']), /[<,]UP[,>]/);
    assert.equal(
      addresses4(p).filter((a) => a.dev !== 'lo'),
      [{ dev: 'xpu0', ip: '169.254.77.2', prefixLength: 30 }],
    );
    assert.ok(addresses4(OWN_NETNS).every((a) => a.ip !== '169.254.77.2'), "not in the caller's namespace");
    // A step that fails is named: the device is not there.
    assert.throws(
      () => setUpLink(p, { dev: 'nosuch0', mac: '02:00:00:00:00:01', cidr: '10.9.9.1/30', peer: '10.9.9.2', peerMac: '02:00:00:00:00:02' }),
      /set up nosuch0 in .*\(set the MAC address\): ENODEV/,
    );
    assert.throws(() => setUpLink(p, { dev: 'xpu0', mac: 'zz', cidr: '10.9.9.1/30', peer: '10.9.9.2', peerMac: '02:00:00:00:00:02' }), /\(MAC address\): EINVAL/);
  } finally {
    delNetns('hpx-link');
  }
});

test.run();
