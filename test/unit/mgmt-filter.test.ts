// The management link's guard (src/shim/mgmt-filter.ts) at its pure edges: the
// agent's host out of its address, the link out of `ip route get`, and the
// rules handed to iptables-restore. The rules at work are tested end to end
// (test/e2e/faults.test.ts).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { agentHost, guardRules, linkOfRoute, MGMT_CHAIN } from '../../src/shim/mgmt-filter';

test('the agent host out of host:port, IPv4, IPv6 and names', () => {
  assert.is(agentHost('192.168.100.2:50051'), '192.168.100.2');
  assert.is(agentHost('[fd00::2]:50051'), 'fd00::2');
  assert.is(agentHost('dpu0.local:50051'), 'dpu0.local');
  assert.throws(() => agentHost('192.168.100.2'), /DPU agent address "192\.168\.100\.2": expected host:port/);
});

test('the link is the one the agent is directly on; a gateway or loopback guards nothing', () => {
  assert.is(linkOfRoute('192.168.100.2 dev tmfifo_net0 src 192.168.100.1 uid 0 \n    cache \n'), 'tmfifo_net0');
  assert.is(linkOfRoute('10.0.0.9 via 192.0.2.1 dev eth0 src 192.0.2.2 uid 0 \n'), null);
  assert.is(linkOfRoute('local 127.0.0.1 dev lo src 127.0.0.1 uid 0 \n'), null);
  assert.is(linkOfRoute('127.0.0.1 dev lo src 127.0.0.1 uid 0 \n'), null);
});

test('the rules: the chain flushed and one DROP of what is forwarded onto the link', () => {
  const rules = guardRules('tmfifo_net0').split('\n');
  assert.equal(rules.slice(0, 2), ['*filter', `:${MGMT_CHAIN} - [0:0]`]);
  assert.match(rules[2], new RegExp(`^-A ${MGMT_CHAIN} -o tmfifo_net0 .*-j DROP$`));
  assert.is(rules[3], 'COMMIT');
});

test.run();
