// Runs the C tests of libxpu's split-network rules and port ownership
// (test/unit/xpu-rules.c), plain and under AddressSanitizer: SHA-256 against
// the FIPS 180-2 vectors, chain tags, texts in buffers too small, multiport
// chunks, one half's rules, removal from iptables-save output, ownership. Each
// must exit 0; its output is shown when it does not. Then the binding: the
// link's constants of rules.ts are the ones the C text is made with, and what
// the wrappers refuse.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { runCTest } from '../lib/c-tests';
import { DPU_LINK_IP, HOST_LINK_IP, LINK_PREFIX, LINK_TAP, chainName, halfRules, multiportChunks, removalRules } from '../../src/netns/rules';
import { sortedPorts } from '../../src/netns/ports';

const run = (binary: string): string => runCTest(binary, /all rules tests passed\n$/);

test('rules: SHA-256, chain tags, short buffers, multiport, half rules, removal, ownership', () => {
  run('xpu-test-rules');
});

test('rules under AddressSanitizer', () => {
  run('xpu-test-rules-asan');
});

test("binding: rules.ts's link constants are xpu.h's", () => {
  const host = halfRules({ side: 'host', podId: 'p', podIp: '10.0.0.1', peerPorts: [] }, { jumps: false });
  const link = `${HOST_LINK_IP.replace(/\.\d+$/, '.0')}/${LINK_PREFIX}`;
  assert.ok(host.includes(`-s ${DPU_LINK_IP}/32 -d ${HOST_LINK_IP}/32 -i ${LINK_TAP} `), host);
  assert.ok(host.includes(`-s ${link} ! -i ${LINK_TAP} `), host);
  const dpu = halfRules({ side: 'dpu', podId: 'p', peerPorts: [] }, { jumps: false });
  assert.ok(dpu.includes(`-s ${HOST_LINK_IP}/32 -d ${DPU_LINK_IP}/32 -i ${LINK_TAP} `), dpu);
});

test('binding: texts longer than the first buffer; refusals name the pod and the reason', () => {
  const ports = Array.from({ length: 3000 }, (_, i) => 10_000 + i);
  const text = halfRules({ side: 'host', podId: 'p', podIp: '10.0.0.1', peerPorts: ports }, { jumps: true });
  assert.is((text.match(/localhost to the DPU half" -j DNAT/g) ?? []).length, 200);
  assert.is(multiportChunks(ports).join(','), ports.join(','));
  const saved = ['*nat', ...Array.from({ length: 500 }, (_, i) => `-A OUTPUT -m comment --comment "rule ${i}" -j ${chainName('p', 'OUTPUT')}`), 'COMMIT'].join('\n');
  assert.is(removalRules(saved, 'p').split('\n').filter((l) => l.startsWith('-D OUTPUT')).length, 500);
  assert.throws(
    () => halfRules({ side: 'host', podId: 'p', peerPorts: [] }, { jumps: true }),
    (e: Error) => e.message === 'rules for the host half of pod p: the pod IP is required',
  );
  assert.throws(
    () => halfRules({ side: 'dpu', podId: 'a"b', peerPorts: [] }, { jumps: true }),
    /^rules for the dpu half of pod a"b: the pod id holds a quote, a backslash or a control character$/,
  );
  assert.throws(() => halfRules({ side: 'dpu', podId: 'p', podIp: '10.0.0.1/32', peerPorts: [] }, { jumps: true }), /pod IP is not an IPv4 address/);
  assert.throws(() => sortedPorts([80, 65536]), /65536 is not a TCP port number/);
  assert.throws(() => multiportChunks([1.5]), /1.5 is not a TCP port number/);
  assert.equal(sortedPorts(new Set([443, 80, 443])), [80, 443]);
});

test.run();
