// Runs the C tests of the node daemon's host half of a pod's split network
// namespace (test/unit/noded-half.c), plain and under AddressSanitizer and
// UBSan: as root, each in a network namespace of its own (hp-halftest-<pid>)
// that it makes and deletes. Each must exit 0; its output is shown when it
// does not. Should one die before its clean-up, its namespace and window files
// are removed here.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { skip } from '../lib/skip';

const build = path.resolve(__dirname, '..', '..', '..', 'build');
const WINDOW_DIR = '/dev/shm/heteropod';

/** What a test binary of pid `pid` made, should it have died before removing it. */
function leftovers(pid: number): void {
  const ns = `hp-halftest-${pid}`;
  if (fs.existsSync(`/run/netns/${ns}`)) spawnSync('ip', ['netns', 'del', ns]);
  const prefix = `pod-halftest-${pid}-`;
  for (const f of fs.existsSync(WINDOW_DIR) ? fs.readdirSync(WINDOW_DIR) : []) {
    if (f.startsWith(prefix) && f.endsWith('.xpu')) fs.rmSync(path.join(WINDOW_DIR, f), { force: true });
  }
  fs.rmSync(`/tmp/hp-halftest-${pid}`, { recursive: true, force: true });
}

function run(name: string, binary: string): void {
  if (process.getuid?.() !== 0) return skip(name, 'needs root (network namespaces, TAP devices, netfilter)');
  const file = path.join(build, binary);
  assert.ok(fs.existsSync(file), `${file} is missing: run "make build"`);
  const r = spawnSync(file, [], { encoding: 'utf8', timeout: 120_000 });
  if (r.pid) leftovers(r.pid);
  const output = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  if (r.status !== 0) assert.unreachable(`${binary} failed (${r.error?.message ?? r.signal ?? `exit ${r.status}`}):\n${output}`);
  assert.match(output, /all half tests passed/);
}

test('host half: open, ports both ways, rules, sysctls, close; refused and failed opens; takeover and reopen after a crash', () => {
  run('host half', 'noded-test-half');
});

test('host half under AddressSanitizer and UBSan', () => {
  run('host half under AddressSanitizer', 'noded-test-half-asan');
});

test.run();
