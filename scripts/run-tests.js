#!/usr/bin/env node
'use strict';
// Runs every compiled test file (dist/test/**/*.test.js) in its own node process,
// unit tests first, then end-to-end tests, and prints one line CI can read:
// "N passed, N failed, N skipped". Exits non-zero when anything failed.
//
// Counting: uvu prints "Total / Passed / Skipped" per file; a test that skips
// itself because the machine lacks a feature prints a line "# SKIP <name>: <why>"
// (test/lib/skip.ts). A file that dies without a summary counts as one failure.
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
// A filter is a path prefix, of the source (test/e2e/x.test.ts) or of the build.
const filters = process.argv.slice(2).map((f) => f.replace(/^dist\//, '').replace(/\/$/, '').replace(/\.ts$/, '.js'));

function listTests(dir) {
  if (!fs.existsSync(dir)) return [];
  const out = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...listTests(p));
    else if (entry.name.endsWith('.test.js')) out.push(p);
  }
  return out.sort();
}

function selected(file) {
  const rel = path.relative(path.join(root, 'dist'), file);
  return filters.length === 0 || filters.some((f) => rel.startsWith(f));
}

function runFile(file) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--enable-source-maps', file], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, HETEROPOD_TEST: '1' },
    });
    let text = '';
    const tee = (stream, sink) => stream.on('data', (d) => { text += d; sink.write(d); });
    tee(child.stdout, process.stdout);
    tee(child.stderr, process.stderr);
    child.on('close', (code, signal) => {
      const plain = text.replace(/\x1b\[[0-9;]*m/g, '');
      const num = (label) => {
        const m = plain.match(new RegExp(`^\\s*${label}:\\s+(\\d+)`, 'm'));
        return m ? Number(m[1]) : null;
      };
      const total = num('Total');
      const passed = num('Passed');
      // uvu prints a mark per test without a newline ("• " passed, "✘ " failed), so
      // a test's SKIP line may follow the marks of the tests before it.
      const selfSkipped = (plain.match(/^[•✘ ]*# SKIP /gm) || []).length;
      const skipped = selfSkipped + (num('Skipped') ?? 0);
      if (total === null || passed === null) {
        resolve({ passed: 0, failed: 1, skipped, why: `no test summary (exit ${code ?? signal})` });
        return;
      }
      let failed = total - passed;
      if (failed === 0 && code !== 0) failed = 1; // crashed after its summary
      resolve({ passed: passed - selfSkipped, failed, skipped });
    });
  });
}

async function main() {
  const dist = path.join(root, 'dist', 'test');
  const files = [...listTests(path.join(dist, 'unit')), ...listTests(path.join(dist, 'e2e'))].filter(selected);
  if (files.length === 0) {
    console.error(`run-tests: no test files under ${dist} match ${filters.join(' ') || '(all)'}; run "make build" first`);
    process.exit(2);
  }
  const sum = { passed: 0, failed: 0, skipped: 0 };
  const failures = [];
  for (const file of files) {
    const rel = path.relative(root, file);
    console.log(`\n=== ${rel}`);
    const r = await runFile(file);
    sum.passed += r.passed;
    sum.failed += r.failed;
    sum.skipped += r.skipped;
    if (r.failed) failures.push(`${rel}${r.why ? ` (${r.why})` : ''}`);
  }
  console.log('');
  if (failures.length) console.log(`failing files:\n  ${failures.join('\n  ')}`);
  console.log(`${sum.passed} passed, ${sum.failed} failed, ${sum.skipped} skipped`);
  process.exit(sum.failed === 0 ? 0 : 1);
}

main();
