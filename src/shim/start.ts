// `start`: find or start the pod's shim daemon, write its address into the
// bundle, print only that address. containerd reads stdout+stderr until EOF, so
// the daemon gets neither: it reports readiness on a pipe of its own (fd 3).
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { loadConfig } from './config';
import { ShimFlags, formatFlags } from './flags';
import { decodeRuntimeOptions } from './options';
import { groupOf, groupPaths } from './paths';
import { readSpec } from './bundle';
import { writeStartRecord } from './record';

export async function startShim(flags: ShimFlags): Promise<string> {
  const bundle = process.cwd();
  const options = decodeRuntimeOptions(readStdin());
  const config = loadConfig(options.configPath);
  const group = groupOf(flags.id, readSpec(bundle).annotations);
  const paths = groupPaths(config.stateDir, flags.address, flags.namespace, group);
  const address = `unix://${paths.socket}`;

  if (!(await answers(paths.socket))) {
    fs.mkdirSync(path.dirname(paths.socket), { recursive: true, mode: 0o711 });
    fs.rmSync(paths.socket, { force: true });
    await spawnDaemon(flags, group, paths.socket, options.configPath, bundle);
  }
  writeStartRecord(bundle, { configPath: options.configPath, group });
  fs.writeFileSync(path.join(bundle, 'address'), address);
  return address;
}

function readStdin(): Buffer {
  try {
    if (process.stdin.isTTY) return Buffer.alloc(0);
    return fs.readFileSync(0);
  } catch {
    return Buffer.alloc(0);
  }
}

function answers(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socketPath);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

async function spawnDaemon(flags: ShimFlags, group: string, socket: string, configPath: string, bundle: string): Promise<void> {
  const args = [
    // A lean heap: one process per pod.
    '--max-semi-space-size=1',
    path.join(__dirname, 'main.js'),
    ...formatFlags({ namespace: flags.namespace, address: flags.address, publishBinary: flags.publishBinary, id: group, debug: flags.debug, socket, configPath }),
    'serve',
  ];
  const child = spawn(process.execPath, args, {
    cwd: bundle,
    detached: true, // its own session: containerd's signals to `start` do not reach it
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
    env: process.env,
  });
  const ready = child.stdio[3] as NodeJS.ReadableStream;
  let said = '';
  await new Promise<void>((resolve, reject) => {
    const fail = (why: string): void => {
      child.kill('SIGKILL');
      reject(new Error(`start shim daemon: ${why}`));
    };
    const timer = setTimeout(() => fail('not ready after 10 s'), 10_000);
    ready.on('data', (d: Buffer) => {
      said += d.toString();
      if (said.startsWith('ready\n')) {
        clearTimeout(timer);
        resolve();
      } else if (said.includes('\n')) {
        clearTimeout(timer);
        fail(said.trim());
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`start shim daemon: exited (${code ?? signal}) before it was ready${said ? `: ${said.trim()}` : ''}`));
    });
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`start shim daemon: ${err.message}`));
    });
  });
  (ready as unknown as { destroy(): void }).destroy();
  child.unref();
}
