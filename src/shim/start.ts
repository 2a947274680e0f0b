// `start` in TypeScript, used when the C launcher (launcher.c, which also uses
// warm spares) is not built: find or start the pod's shim daemon, write its
// address into the bundle, print only that address. containerd reads stdout+stderr until EOF, so
// the daemon gets neither. `start` binds and listens on the socket itself and
// hands it to the daemon as fd 3: the address is valid the moment it is printed,
// and containerd's first calls wait in the backlog while the daemon boots.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { loadConfig } from './config';
import { ShimFlags, formatFlags } from './flags';
import { decodeRuntimeOptions } from './options';
import { groupOf, groupPaths, socketAnswers } from './paths';
import { readSpec } from './bundle';
import { writeStartRecord } from './record';

export async function startShim(flags: ShimFlags): Promise<string> {
  const bundle = process.cwd();
  const options = decodeRuntimeOptions(readStdin());
  const config = loadConfig(options.configPath);
  const group = groupOf(flags.id, readSpec(bundle).annotations);
  const paths = groupPaths(config.stateDir, flags.address, flags.namespace, group);
  const address = `unix://${paths.socket}`;

  if (!(await socketAnswers(paths.socket))) {
    fs.mkdirSync(path.dirname(paths.socket), { recursive: true, mode: 0o711 });
    fs.rmSync(paths.socket, { force: true });
    const listener = await listen(paths.socket);
    try {
      spawnDaemon(flags, group, paths.socket, options.configPath, bundle, listener);
    } catch (err) {
      fs.rmSync(paths.socket, { force: true });
      throw err;
    }
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

// The listening descriptor. The server object is never closed here: closing
// would unlink the socket the daemon now serves; `start` just exits.
function listen(socketPath: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', (err) => reject(new Error(`listen on ${socketPath}: ${err.message}`)));
    server.listen({ path: socketPath, backlog: 128 }, () => {
      fs.chmodSync(socketPath, 0o600);
      const fd = (server as unknown as { _handle?: { fd?: number } })._handle?.fd;
      if (typeof fd !== 'number' || fd < 0) reject(new Error(`listen on ${socketPath}: no descriptor`));
      else resolve(fd);
    });
  });
}

function spawnDaemon(flags: ShimFlags, group: string, socket: string, configPath: string, bundle: string, listener: number): void {
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
    stdio: ['ignore', 'ignore', 'ignore', listener],
    env: process.env,
  });
  if (!child.pid) throw new Error('start shim daemon: spawn failed');
  child.unref();
}
