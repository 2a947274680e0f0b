// runProgram (libxpu's xpu_run_in): programs started without node's
// child_process, in the caller's namespace, with a working directory and an
// environment of their own; and the fifo keeper started that way (it says
// "ready PID", and the process started has exited by then).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { runProgram } from '../../src/xpu/run-program';

test('runs in the given directory with exactly the given environment; the caller keeps its own', async () => {
  const dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'hp-run-')));
  try {
    const r = await runProgram(['/bin/sh', '-c', 'pwd; echo "A=$A B=${B-unset} PATH=${PATH-unset}"; echo to-stderr >&2'], {
      cwd: dir,
      env: { A: 'one two', PATH: '/usr/bin:/bin' },
    });
    assert.is(r.stdout, `${dir}\nA=one two B=unset PATH=/usr/bin:/bin\n`);
    assert.is(r.stderr, 'to-stderr');
    assert.not.ok(r.cut);
    assert.is.not(process.cwd(), dir, "the caller's directory is untouched");
    // Without options: the caller's directory and environment.
    process.env.HP_RUN_TEST = 'inherited';
    const own = await runProgram(['/bin/sh', '-c', 'pwd; echo "$HP_RUN_TEST"']);
    assert.is(own.stdout, `${process.cwd()}\ninherited\n`);
    // An empty environment.
    assert.is((await runProgram(['/usr/bin/env'], { env: {} })).stdout, '');
  } finally {
    delete process.env.HP_RUN_TEST;
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a failure names the command and says why: its stderr, its exit code, its signal, a missing program or directory', async () => {
  const fail = (argv: string[], opts = {}): Promise<string> =>
    runProgram(argv, opts).then(
      () => 'it did not fail',
      (e: Error) => e.message,
    );
  assert.match(await fail(['/bin/sh', '-c', 'echo broken >&2; exit 3']), /^\/bin\/sh -c echo broken >&2; exit 3: broken$/);
  assert.match(await fail(['/bin/sh', '-c', 'exit 4']), /: exit code 4$/);
  assert.match(await fail(['/bin/sh', '-c', 'kill -9 $$']), /: killed by signal 9$/);
  assert.match(await fail(['hp-no-such-program']), /^hp-no-such-program: hp-no-such-program: not found$/);
  assert.match(await fail(['/bin/true'], { cwd: '/nonexistent/dir' }), /not found \(or no directory \/nonexistent\/dir\)$/);
  assert.match(await fail(['/bin/true'], { netns: '/nonexistent/netns' }), /not found \(or no such network namespace\)/);
});

test('output past what is kept is counted: the result says it was cut', async () => {
  const r = await runProgram(['/bin/sh', '-c', 'head -c 100000 /dev/zero'], { outBytes: 4096 });
  assert.is(r.stdout.length, 4096);
  assert.ok(r.cut);
});

test.run();
