// A warm spare: a shim daemon started ahead of need, its modules loaded, that the
// C launcher (launcher.c) turns into the next pod's daemon. Starting Node.js cold
// is most of what the HeteroPod shim adds to a pod's start; with a spare, the
// launcher hands the pod to a process that is already up, then starts the next
// spare at low priority. One spare per containerd address and shim config.
//
// Protocol on the spare socket (<state_dir>/s/spare-…): the launcher connects and
// writes `key=value` lines (`id`, `socket`, `bundle`) and an empty line; the spare
// stops being a spare (closing, so unlinking, its socket), serves the pod socket,
// and answers `ok` — or `error: …`, after which it exits. A spare leaves once no
// pod shim answers in its state directory or containerd's socket is gone.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { ShimFlags } from './flags';
import { serveDaemon } from './daemon';
import { socketAnswers } from './paths';

const IDLE_CHECK_MS = 2000;

interface Assignment {
  id: string;
  socket: string;
  bundle: string;
}

function parseAssignment(text: string): Assignment {
  const values = new Map<string, string>();
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) values.set(line.slice(0, eq), line.slice(eq + 1));
  }
  const a = { id: values.get('id') ?? '', socket: values.get('socket') ?? '', bundle: values.get('bundle') ?? '' };
  if (!a.id || !a.socket || !path.isAbsolute(a.bundle)) throw new Error(`bad assignment ${JSON.stringify(text)}`);
  return a;
}

// Is any pod shim (not a spare) serving in this state directory?
async function anyPodShim(socketDir: string): Promise<boolean> {
  let names: string[];
  try {
    names = fs.readdirSync(socketDir);
  } catch {
    return false;
  }
  for (const name of names) if (!name.startsWith('spare-') && (await socketAnswers(path.join(socketDir, name)))) return true;
  return false;
}

export async function serveSpare(flags: ShimFlags): Promise<void> {
  const sparePath = flags.socket;
  process.title = `containerd-shim-heteropod-v2 spare -namespace ${flags.namespace} -address ${flags.address}`;
  if (await socketAnswers(sparePath)) return; // another spare got there first
  fs.rmSync(sparePath, { force: true });
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(sparePath, () => resolve());
  });
  fs.chmodSync(sparePath, 0o600);
  const inode = fs.statSync(sparePath).ino;

  const idle = setInterval(() => {
    void (async () => {
      let mine = false;
      try {
        mine = fs.statSync(sparePath).ino === inode;
      } catch {
        // gone
      }
      if (!mine || !fs.existsSync(flags.address) || !(await anyPodShim(path.dirname(sparePath)))) {
        clearInterval(idle);
        if (mine) server.close();
        process.exit(0);
      }
    })();
  }, IDLE_CHECK_MS);

  server.once('connection', (conn) => {
    clearInterval(idle);
    // Booted at low priority (launcher.c); a pod's shim runs at the normal one.
    try {
      os.setPriority(0);
    } catch {
      // not permitted: stays niced
    }
    // Only one pod per spare: later connections are refused by closing.
    server.close();
    let text = '';
    conn.on('data', (d: Buffer) => {
      text += d.toString();
      if (!text.includes('\n\n')) return;
      conn.removeAllListeners('data');
      let assignment: Assignment;
      try {
        assignment = parseAssignment(text);
        process.chdir(assignment.bundle);
      } catch (err) {
        conn.end(`error: ${(err as Error).message}\n`, () => process.exit(1));
        return;
      }
      serveDaemon({ ...flags, id: assignment.id, socket: assignment.socket }, assignment.id, 'bind').then(
        () => conn.end('ok\n'),
        (err: Error) => conn.end(`error: ${err.message}\n`, () => process.exit(1)),
      );
    });
    conn.on('error', () => undefined);
  });
}
