// CRI Exec, the client side: what `crictl exec -it` does. Exec answers with a
// one-use URL on the runtime's streaming server; the connection is a WebSocket
// speaking "v4.channel.k8s.io": each message starts with its channel, 0 stdin,
// 1 stdout, 2 stderr, 3 the outcome (a Kubernetes Status as JSON, sent once at the
// end), 4 terminal size ({"Width":w,"Height":h}).
import type { CriClient } from './client';
import type { CriObject } from './config';
import { CHANNEL_PROTOCOL, connectWebSocket } from './websocket';

const STDIN = 0;
const STDOUT = 1;
const STDERR = 2;
const STATUS = 3;
const RESIZE = 4;

export interface ExecStreamOptions {
  tty: boolean;
  /** Input to send; with a terminal, what is typed. */
  stdin?: NodeJS.ReadableStream;
  stdout: (data: Buffer) => void;
  stderr?: (data: Buffer) => void;
  /** The terminal size at start; `resize` can change it later. */
  size?: { columns: number; rows: number };
}

export interface ExecSession {
  resize(columns: number, rows: number): void;
  /** The command's exit code, when it ends. */
  exitCode: Promise<number>;
}

/** Reads the outcome Status: 0 on Success, the ExitCode cause on a non-zero exit, else an error. */
export function exitCodeOf(statusJson: string): number {
  let status: { status?: string; message?: string; reason?: string; details?: { causes?: { reason?: string; message?: string }[] } };
  try {
    status = JSON.parse(statusJson);
  } catch {
    throw new Error(`exec: the runtime's status is not JSON: ${JSON.stringify(statusJson.slice(0, 200))}`);
  }
  if (status.status === 'Success') return 0;
  const code = status.details?.causes?.find((c) => c.reason === 'ExitCode')?.message;
  if (status.reason === 'NonZeroExitCode' && code !== undefined && /^\d+$/.test(code)) return Number(code);
  throw new Error(`exec: ${status.message ?? statusJson}`);
}

export async function execStream(cri: CriClient, containerId: string, cmd: string[], opts: ExecStreamOptions): Promise<ExecSession> {
  const req: CriObject = { container_id: containerId, cmd, tty: opts.tty, stdin: Boolean(opts.stdin), stdout: true, stderr: !opts.tty };
  const url = await cri.exec(req);
  const ws = await connectWebSocket(url, CHANNEL_PROTOCOL);
  const resize = (columns: number, rows: number) => {
    if (opts.tty) ws.sendOn(RESIZE, Buffer.from(JSON.stringify({ Width: columns, Height: rows })));
  };
  let status = '';
  const exitCode = new Promise<number>((resolve, reject) => {
    ws.on('message', (m: Buffer) => {
      const data = m.subarray(1);
      if (data.length === 0) return;
      if (m[0] === STDOUT) opts.stdout(Buffer.from(data));
      else if (m[0] === STDERR) (opts.stderr ?? opts.stdout)(Buffer.from(data));
      else if (m[0] === STATUS) status += data.toString();
    });
    ws.on('error', reject);
    ws.on('close', () => {
      opts.stdin?.removeListener('data', onInput);
      if (!status) return reject(new Error('exec: the connection closed before the runtime sent the outcome'));
      try {
        resolve(exitCodeOf(status));
      } catch (err) {
        reject(err);
      }
    });
  });
  const onInput = (d: Buffer | string) => ws.sendOn(STDIN, Buffer.from(d));
  opts.stdin?.on('data', onInput);
  if (opts.size) resize(opts.size.columns, opts.size.rows);
  return { resize, exitCode };
}
