import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { buildProgram } from '../../src/cli/main';

test('the heteropod command knows its name and version', () => {
  const program = buildProgram();
  assert.is(program.name(), 'heteropod');
  assert.match(program.version() ?? '', /^\d+\.\d+\.\d+$/);
});

test.run();
