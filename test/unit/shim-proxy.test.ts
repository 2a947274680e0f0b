// Runs the C tests of the shim's ttrpc proxy (test/unit/shim-proxy.c), plain and
// under AddressSanitizer: the Create rewrite, framing, malformed frames, the
// proxy's exit when runc's shim dies, and an offload pod's routing between runc's
// shim and a fake node daemon (Attach, placed, the daemon down and back), and
// the stdio fifos the proxy holds for the daemon's processes. Each must exit 0;
// its output is shown when it does not.
import { test } from 'uvu';
import { runCTest } from '../lib/c-tests';

const run = (binary: string): string => runCTest(binary, /all proxy tests passed/);

test('proxy: Create rewrite, relay, malformed frames, exit with runc’s shim, routing to the node daemon', () => {
  run('shim-test-proxy');
});

test('proxy under AddressSanitizer', () => {
  run('shim-test-proxy-asan');
});

test.run();
