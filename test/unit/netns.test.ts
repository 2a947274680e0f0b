// Unit tests of the split network namespace's pure parts: the heteropod.io/ports
// annotation, port ownership, /proc/net/tcp parsing, rule generation and
// removal, the hook's reading of the OCI state; and the listener watcher on
// this process's own namespace (as root).
import * as net from 'node:net';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { AnnotationError, conflictingPorts, declaredPortList, dpuOwnedPorts, hostOwnedPorts, parsePortsAnnotation } from '../../src/netns/ports';
import { ListenerWatcher, parseProcNetTcp } from '../../src/netns/listeners';
import { chainName, chainTag, halfRules, multiportChunks, removalRules } from '../../src/netns/rules';
import { parseArgs, targetFromState } from '../../src/netns/hook';
import { podWindowPath } from '../../src/netns/half';
import { skip } from '../lib/skip';

const POD = '4f2a9c7e1b3d5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcd';
const T = '4f2a9c7e1b3d';

// ---- heteropod.io/ports

test('ports annotation: one container, several, spaces, a trailing ";", empty', () => {
  assert.equal([...parsePortsAnnotation('istio-proxy=15001,15006')], [['istio-proxy', [15001, 15006]]]);
  assert.equal([...parsePortsAnnotation(' istio-proxy = 15001 , 15006 ; log-agent=24224;')], [
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
    ['app=8080', /container "app" is not offloaded \(heteropod.io\/offload names: proxy\)/, ['proxy']],
  ];
  for (const [value, why, offloaded] of cases) {
    try {
      parsePortsAnnotation(value, offloaded);
      assert.unreachable(`"${value}" was accepted`);
    } catch (err) {
      assert.instance(err, AnnotationError, value);
      const e = err as AnnotationError;
      assert.ok(e.message.startsWith(`invalid annotation heteropod.io/ports: "${value}": `), e.message);
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

// ---- /proc/net/tcp

const TCP4 = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1677 1 00000000b8f6698f 100 0 0 10 0
   1: 00000000:3AA6 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1678 1 00000000b8f6698f 100 0 0 10 0
   2: 0201FEA9:3A98 0101FEA9:C350 01 00000000:00000000 00:00000000 00000000     0        0 1679 1 00000000b8f6698f 100 0 0 10 0
   3: 02FAE90A:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1680 1 00000000b8f6698f 100 0 0 10 0
`;
const TCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:3A98 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:3A99 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:3A9A 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2003 1 0000000000000000 100 0 0 10 0
   3: B80D0120000000000000000001000000:0050 00000000000000000000000000000000:0000 06 00000000:00000000 00:00000000 00000000     0        0 0 3 0000000000000000
`;

test('/proc/net/tcp and tcp6: listening sockets only, addresses as text', () => {
  assert.equal(parseProcNetTcp(TCP4, 4), [
    { family: 4, address: '127.0.0.1', port: 8080 },
    { family: 4, address: '0.0.0.0', port: 15014 },
    { family: 4, address: '10.233.250.2', port: 8081 },
  ]);
  assert.equal(parseProcNetTcp(TCP6, 6), [
    { family: 6, address: '::', port: 15000 },
    { family: 6, address: '::1', port: 15001 },
    { family: 6, address: '::ffff:7f00:1', port: 15002 },
  ]);
  assert.equal(parseProcNetTcp('', 4), []);
  assert.equal(parseProcNetTcp(TCP4.split('\n')[0], 4), [], 'header only');
});

test('listener watcher: sees a listener appear and go in its namespace', async () => {
  if (process.getuid?.() !== 0) return skip('listener watcher', 'needs root (nsenter)');
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
  await ListenerWatcher.open('/nonexistent/netns').then(
    () => assert.unreachable('opened a missing namespace'),
    (err: Error) => assert.match(err.message, 'watch listening sockets in /nonexistent/netns'),
  );
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

test.run();
