// Runs the C ring tests (test/unit/xpu-rings.c) in their three builds: plain,
// AddressSanitizer and ThreadSanitizer. Each must exit 0; its output is shown
// when it does not.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';

const build = path.resolve(__dirname, '..', '..', '..', 'build');

function run(binary: string, args: string[], timeoutMs: number): void {
  const file = path.join(build, binary);
  assert.ok(fs.existsSync(file), `${file} is missing: run "make build"`);
  const r = spawnSync(file, args, { encoding: 'utf8', timeout: timeoutMs });
  const output = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  process.stdout.write(output.replace(/^/gm, `  [${binary}] `));
  if (r.status !== 0) {
    assert.unreachable(`${binary} ${args.join(' ')} failed (${r.error?.message ?? r.signal ?? `exit ${r.status}`}):\n${output}`);
  }
  assert.match(output, /all ring tests passed/);
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

test.run();
