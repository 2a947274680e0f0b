// The C unit tests' programs (build/…, made by `make build`), as the TS test
// files run them: each must exit 0 and print its closing line; its output is
// shown when it does not.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as assert from 'uvu/assert';

export const BUILD = path.resolve(__dirname, '..', '..', '..', 'build');

/** Runs build/<binary> [args]; asserts exit 0 and that its output matches `passed`. Returns the output. */
export function runCTest(binary: string, passed: RegExp, args: string[] = []): string {
  const file = path.join(BUILD, binary);
  assert.ok(fs.existsSync(file), `${file} is missing: run "make build"`);
  const r = spawnSync(file, args, { encoding: 'utf8', timeout: 120_000 });
  const output = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  if (r.status !== 0) assert.unreachable(`${binary} failed (${r.error?.message ?? r.signal ?? `exit ${r.status}`}):\n${output}`);
  assert.match(output, passed);
  return output;
}
