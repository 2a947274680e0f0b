// Programs started by libxpu (xpu_run_in) instead of node's child_process: on a
// koffi worker thread, with posix_spawn (clone(CLONE_VM | CLONE_VFORK)), so the
// event loop neither forks this process, copying its page tables, nor waits. A
// program may start inside a network namespace, from a thread of the library
// that enters it (no nsenter runs).
import * as os from 'node:os';
import { errnoText, native } from './native';

export interface RunOptions {
  /** The path of a network namespace the program starts in; default: the caller's. */
  netns?: string;
  /** Its working directory; default: the caller's. */
  cwd?: string;
  /** Its whole environment; default: the caller's. */
  env?: Record<string, string>;
  /** What it reads on stdin (default: nothing, end-of-file). */
  input?: string;
  /** How much of its stdout is kept (default 64 KiB); stderr keeps 16 KiB. */
  outBytes?: number;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  /** It wrote more to stdout than was kept (stdout is cut). */
  cut: boolean;
}

// Each call's buffers are memory outside V8's heap, which counts towards its
// collections: small by default (a tool here prints a line or a few).
const OUT_BYTES = 64 << 10;
const ERR_BYTES = 16 << 10;

const strings = (list: string[]): Buffer => Buffer.from(list.map((s) => `${s}\0`).join(''), 'utf8');

/** Runs argv to its end; rejects with the command line and its stderr (or exit code) when it fails. */
export function runProgram(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
  const shown = opts.netns ? `${argv.join(' ')} (in ${opts.netns})` : argv.join(' ');
  const args = strings(argv);
  const env = opts.env ? strings(Object.entries(opts.env).map(([k, v]) => `${k}=${v}`)) : null;
  const envBytes = env && env.length === 0 ? Buffer.from([0]) : env; // a lone NUL: an empty environment
  const stdin = Buffer.from(opts.input ?? '', 'utf8');
  const out = Buffer.allocUnsafe(opts.outBytes ?? OUT_BYTES);
  const err = Buffer.allocUnsafe(ERR_BYTES);
  const outUsed = [0];
  const errUsed = [0];
  return new Promise((resolve, reject) => {
    native().runIn.async(
      opts.netns ?? null, opts.cwd ?? null, envBytes, envBytes?.length ?? 0, args, args.length, stdin, stdin.length,
      out, out.length, outUsed, err, err.length, errUsed,
      (callErr, status) => {
        if (callErr) return reject(new Error(`${shown}: ${(callErr as Error).message}`));
        if (status < 0) {
          // posix_spawn says ENOENT for each of the three.
          const or = [opts.netns && 'no such network namespace', opts.cwd && `no directory ${opts.cwd}`].filter(Boolean).join(', or ');
          const notFound = `${argv[0]}: not found${or ? ` (or ${or})` : ''}`;
          return reject(new Error(`${shown}: ${-status === os.constants.errno.ENOENT ? notFound : errnoText(-status)}`));
        }
        const stderr = err.subarray(0, Math.min(errUsed[0], err.length)).toString('utf8').trim();
        const code = (status & 0x7f) === 0 ? (status >> 8) & 0xff : -1;
        if (code !== 0) return reject(new Error(`${shown}: ${stderr || (code < 0 ? `killed by signal ${status & 0x7f}` : `exit code ${code}`)}`));
        const cut = outUsed[0] > out.length;
        resolve({ stdout: out.subarray(0, Math.min(outUsed[0], out.length)).toString('utf8'), stderr, cut });
      },
    );
  });
}
