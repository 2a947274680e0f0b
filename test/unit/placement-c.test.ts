// Runs the C tests of placement (test/unit/placement-c.c), plain and under
// AddressSanitizer and UBSan: the offload annotations, heteropod.io/ports and
// where each container runs, on the inputs of placement.test.ts and netns.test.ts
// with the TS's messages expected, plus JSON-type edge cases and the quote's cut.
// Each must exit 0; its output is shown when it does not.
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
  assert.match(output, /all placement tests passed/);
}

test('placement in C: annotations, ports, placement, the TS messages', () => {
  run('placement-test');
});

test('placement in C under AddressSanitizer and UBSan', () => {
  run('placement-test-asan');
});

test.run();
