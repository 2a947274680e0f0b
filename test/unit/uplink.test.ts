// The DPU half's wire to the DPU's uplink (src/netns/uplink.ts): the rules that
// steer the pod IP's ports on the DPU, pure; then the wire itself in namespaces
// of the test's own (a "DPU" and a "DPU half"), its rules as they change, and
// nothing left after close, nor after a crashed owner's wire is replaced.
import { execFileSync } from 'node:child_process';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DPU_EPHEMERAL, DpuUplink, HALVES_TABLE, HOST_EPHEMERAL, networkOf, uplinkDevice, uplinkRules } from '../../src/netns/uplink';
import { addNetns, canMakeNetns, delNetns } from '../lib/netns';
import { skip } from '../lib/skip';

test('network of an address: prefix lengths 0, 8, 24, 30, 32; bad lengths refused', () => {
  assert.is(networkOf('10.233.77.5', 24), '10.233.77.0/24');
  assert.is(networkOf('10.233.77.5', 30), '10.233.77.4/30');
  assert.is(networkOf('10.233.77.5', 32), '10.233.77.5/32');
  assert.is(networkOf('250.1.2.3', 8), '250.0.0.0/8');
  assert.is(networkOf('250.1.2.3', 0), '0.0.0.0/0');
  assert.throws(() => networkOf('10.0.0.1', 33), /prefix length 33/);
});

test('ephemeral ranges: disjoint, together the kernel\'s default 32768-60999', () => {
  assert.is(HOST_EPHEMERAL[0], 32768);
  assert.is(HOST_EPHEMERAL[1] + 1, DPU_EPHEMERAL[0]);
  assert.is(DPU_EPHEMERAL[1], 60999);
});

test('uplink rules: DPU ports and the DPU\'s ephemeral range to the half; host listeners in that range stay the host\'s', () => {
  const rules = uplinkRules([15006, 9100], [8080, 50000]);
  assert.equal(rules, [
    { pref: 20100, proto: 'tcp', dport: '50000', table: 'main' },
    { pref: 20101, proto: 'tcp', dport: '15006', table: HALVES_TABLE },
    { pref: 20101, proto: 'tcp', dport: '9100', table: HALVES_TABLE },
    { pref: 20102, proto: 'tcp', dport: '47000-60999', table: HALVES_TABLE },
    { pref: 20102, proto: 'udp', dport: '47000-60999', table: HALVES_TABLE },
  ]);
  // The host rule comes first: a lower preference wins.
  assert.ok(rules[0].pref < rules[3].pref);
  assert.equal(uplinkRules([], []).map((r) => r.dport), ['47000-60999', '47000-60999']);
});

test('device names: at most 15 characters, one per pod', () => {
  const a = uplinkDevice('7493299870bb4843b95368a3f97a9456d251ef78a4065ace8d55e212dd5f0ac5');
  assert.is(a, 'hpd-7493299870b');
  assert.ok(a.length <= 15);
  assert.is.not(uplinkDevice('pod-a'), uplinkDevice('pod-b'));
});

function sh(ns: string, args: string[]): string {
  return execFileSync('ip', ['-n', ns, ...args], { encoding: 'utf8' });
}

test('the wire: pod IP in the half, steering rules follow the ports, close removes all', async () => {
  const why = canMakeNetns();
  if (why) return skip('uplink wire', why);
  const root = 'hpx-upl-dpu';
  const half = 'hpx-upl-half';
  const rootPath = addNetns(root);
  const halfPath = addNetns(half);
  try {
    const podId = 'upl-test-pod';
    const podIp = '10.233.88.7';
    const u = await DpuUplink.attach({ podId, podIp, halfNetns: halfPath, rootNetns: rootPath });
    assert.match(sh(half, ['-o', 'addr', 'show', 'dev', 'eth0']), `inet ${podIp}/32`);
    assert.match(sh(half, ['route', 'show', 'default']), `default via 169.254.1.1 dev eth0 src ${podIp}`);
    assert.match(sh(root, ['route', 'show', 'table', String(HALVES_TABLE)]), `${podIp} dev ${u.device}`);
    const rules = () => sh(root, ['rule', 'show']).split('\n').filter((l) => l.includes(podIp)).map((l) => l.replace(/\s+/g, ' ').trim());
    assert.is(rules().length, 2, 'the ephemeral range (tcp, udp) only');

    await u.setPorts([15006], [50000, 8080]);
    const r1 = rules();
    assert.ok(r1.some((l) => l.startsWith('20101:') && l.includes('dport 15006')), r1.join('\n'));
    assert.ok(r1.some((l) => l.startsWith('20100:') && l.includes('dport 50000') && l.includes('lookup main')), r1.join('\n'));
    assert.ok(!r1.some((l) => l.includes('dport 8080')), 'a host port outside the DPU range needs no rule');
    await u.setPorts([9100], []);
    const r2 = rules();
    assert.ok(r2.some((l) => l.includes('dport 9100')) && !r2.some((l) => l.includes('dport 15006') || l.includes('dport 50000')), r2.join('\n'));

    // A crashed owner's wire: a new attach for the same pod replaces it whole.
    const again = await DpuUplink.attach({ podId, podIp, halfNetns: halfPath, rootNetns: rootPath }).catch((e: Error) => e);
    assert.ok(!(again instanceof Error), `attach over a leftover wire: ${(again as Error).message}`);
    await again.setPorts([9100], []);
    assert.is(rules().length, 3);

    await again.close();
    assert.equal(rules(), [], 'no rule left for the pod IP');
    assert.not.match(sh(root, ['-o', 'link', 'show']), 'hpd-', 'no wire left');
    assert.is(sh(root, ['route', 'show', 'table', String(HALVES_TABLE)]).trim(), '');
  } finally {
    delNetns(root);
    delNetns(half);
  }
});

test.run();
