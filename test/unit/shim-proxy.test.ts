// Runs the C tests of the shim's ttrpc proxy (test/unit/shim-proxy.c), plain and
// under AddressSanitizer: the Create rewrite, framing, malformed frames, the
// proxy's exit when runc's shim dies, and an offload pod's routing between runc's
// shim and a fake node daemon (Attach, placed, the daemon down and back), and
// the stdio fifos the proxy holds for the daemon's processes. Each must exit 0;
// its output is shown when it does not.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';

const build = path.resolve(__dirname, '..', '..', '..', 'build');

function run(binary: string): void {
  const file = path.join(build, binary);
  assert.ok(fs.existsSync(file), `${file} is missing: run "make build"`);
  const r = spawnSync(file, [], { encoding: 'utf8', timeout: 120_000 });
  const output = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  if (r.status !== 0) assert.unreachable(`${binary} failed (${r.error?.message ?? r.signal ?? `exit ${r.status}`}):\n${output}`);
  assert.match(output, /all proxy tests passed/);
}

test('proxy: Create rewrite, relay, malformed frames, exit with runc’s shim, routing to the node daemon', () => {
  run('shim-test-proxy');
});

test('proxy under AddressSanitizer', () => {
  run('shim-test-proxy-asan');
});

test.run();
