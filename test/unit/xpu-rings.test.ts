// Runs the C tests of libxpu: the ring tests (test/unit/xpu-rings.c) in their
// three builds, plain, AddressSanitizer and ThreadSanitizer, and the window API
// tests (test/unit/xpu-window.c), plain and AddressSanitizer. Each must exit 0; its output is shown
// when it does not.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';

const build = path.resolve(__dirname, '..', '..', '..', 'build');

function run(binary: string, args: string[], timeoutMs: number, passed = /all ring tests passed/): void {
  const file = path.join(build, binary);
  assert.ok(fs.existsSync(file), `${file} is missing: run "make build"`);
  const r = spawnSync(file, args, { encoding: 'utf8', timeout: timeoutMs });
  const output = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  process.stdout.write(output.replace(/^/gm, `  [${binary}] `));
  if (r.status !== 0) {
    assert.unreachable(`${binary} ${args.join(' ')} failed (${r.error?.message ?? r.signal ?? `exit ${r.status}`}):\n${output}`);
  }
  assert.match(output, passed);
}

test('rings: wrap-around, every size, back-pressure, 10M frames across processes, sleep/wake race', () => {
  run('xpu-test-rings', [], 120_000);
});

test('rings under AddressSanitizer (fewer frames)', () => {
  run('xpu-test-rings-asan', ['--frames', '1000000', '--roundtrips', '50000'], 120_000);
});

test('rings under ThreadSanitizer, two threads (fewer frames)', () => {
  run('xpu-test-rings-tsan', ['--threads', '--frames', '300000', '--roundtrips', '20000'], 150_000);
});

test('window API: validation, errors, nothing left behind (plain and AddressSanitizer)', () => {
  run('xpu-test-window', [], 30_000, /all window tests passed/);
  run('xpu-test-window-asan', [], 30_000, /all window tests passed/);
});

test.run();
