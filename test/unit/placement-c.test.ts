// Runs the C tests of placement (test/unit/placement-c.c), plain and under
// AddressSanitizer and UBSan: the offload annotations, heteropod.io/ports and
// where each container runs, on the inputs of placement.test.ts and netns.test.ts
// with the TS's messages expected, plus JSON-type edge cases and the quote's cut.
// Each must exit 0; its output is shown when it does not.
import { test } from 'uvu';
import { runCTest } from '../lib/c-tests';

const run = (binary: string): string => runCTest(binary, /all placement tests passed/);

test('placement in C: annotations, ports, placement, the TS messages', () => {
  run('placement-test');
});

test('placement in C under AddressSanitizer and UBSan', () => {
  run('placement-test-asan');
});

test.run();
