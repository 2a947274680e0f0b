// Whether a process runs, as the node daemon asks it of a window's host end
// before it takes a pod over: an exited process that its parent has not reaped
// (a zombie) exists for kill(2) but holds nothing.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { pidAlive, processRunning, processState } from '../../src/common/processes';

test('a running process runs; an exited, unreaped one (a zombie) exists but does not run; a reaped one neither', async () => {
  // sh starts a child that exits at once, then becomes `sleep`, which never reaps it.
  const parent = spawn('sh', ['-c', 'sleep 0 & echo $!; exec sleep 5'], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    const zombie = await new Promise<number>((resolve) => parent.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))));
    const deadline = Date.now() + 5000;
    while (processRunning(zombie) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.ok(pidAlive(zombie), 'the zombie exists for kill(2)');
    assert.not.ok(processRunning(zombie), 'the zombie does not run');
    assert.is(processState(zombie), 'Z');
    assert.ok(processRunning(parent.pid!), 'its parent runs');
  } finally {
    parent.kill('SIGKILL');
  }
  await new Promise((r) => parent.once('exit', r));
  await new Promise((r) => setTimeout(r, 50)); // reaped by node
  assert.not.ok(pidAlive(parent.pid!), 'a reaped process does not exist');
  assert.not.ok(processRunning(parent.pid!), 'nor run');
  assert.not.ok(processRunning(0), 'pid 0 is no process');
  assert.is(processState(parent.pid!), null);
});

test.run();
