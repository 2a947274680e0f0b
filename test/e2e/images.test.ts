// Imports the built archives into a real containerd 1.6 and runs them with runc.
// The containerd is private to this test: its root, state and sockets live in a
// temporary directory, and it runs in its own mount namespace with a fresh tmpfs on
// /run, because containerd 1.6 shims and ctr put sockets, runc state and FIFOs
// under /run/containerd whatever the configuration says. The host's /run is never
// written. The last test checks that nothing is left behind.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ChildProcess, execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildImageArchive, findImage, importImages } from '../../src/images';
import { skip } from '../lib/skip';

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<Result> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') {
        reject(new Error(`${cmd} ${args.join(' ')}: ${err.message}`));
        return;
      }
      resolve({ code: err ? Number(err.code) : 0, stdout, stderr });
    });
  });
}

function onPath(cmd: string): boolean {
  return (process.env.PATH ?? '').split(':').some((dir) => dir !== '' && fs.existsSync(path.join(dir, cmd)));
}

/** Mount points at or under `dir` in this process's mount namespace. */
function mountsUnder(dir: string): string[] {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => unescape(l.split(' ')[4]))
    .filter((mp) => mp === dir || mp.startsWith(`${dir}/`));
}

/** Pids of processes whose command line mentions `needle`, this process excluded. */
function processesMentioning(needle: string): number[] {
  const pids: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      if (fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').includes(needle)) pids.push(Number(name));
    } catch {
      // The process exited while we looked.
    }
  }
  return pids;
}

/** A throwaway containerd with the CRI plugin disabled, in its own mount namespace. */
class PrivateContainerd {
  readonly socket: string;
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();

  constructor(readonly dir: string) {
    this.socket = path.join(dir, 'c.sock');
  }

  async start(): Promise<void> {
    const config = path.join(this.dir, 'config.toml');
    fs.writeFileSync(
      config,
      [
        'version = 2',
        `root = "${this.dir}/root"`,
        `state = "${this.dir}/state"`,
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
        '[grpc]',
        `  address = "${this.socket}"`,
        '[ttrpc]',
        `  address = "${this.socket}.ttrpc"`,
        '[debug]',
        '  address = ""',
        '[metrics]',
        '  address = ""',
        '[plugins."io.containerd.internal.v1.opt"]',
        `  path = "${this.dir}/opt"`,
        '',
      ].join('\n'),
    );
    const log = fs.openSync(path.join(this.dir, 'containerd.log'), 'a');
    // unshare execs sh, which mounts the tmpfs and execs containerd: the child's pid is containerd's.
    const script = `mount -t tmpfs -o mode=0755 hp-img-test-run /run && exec containerd --config '${config}'`;
    this.child = spawn('unshare', ['--mount', '--propagation', 'private', '--', 'sh', '-c', script], {
      stdio: ['ignore', log, log],
    });
    fs.closeSync(log);
    const child = this.child;
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
    const deadline = Date.now() + 15_000;
    while (!fs.existsSync(this.socket)) {
      if (child.exitCode !== null || Date.now() > deadline) {
        throw new Error(`containerd did not start: ${this.log().slice(-2000)}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    // The socket exists before the services are registered; wait until ctr gets an answer.
    while ((await run('ctr', ['-a', this.socket, 'version'])).code !== 0) {
      if (Date.now() > deadline) throw new Error(`containerd is not answering: ${this.log().slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  log(): string {
    try {
      return fs.readFileSync(path.join(this.dir, 'containerd.log'), 'utf8');
    } catch {
      return '';
    }
  }

  /** ctr against this containerd, inside its mount namespace (where its /run is). */
  ctr(args: string[], timeoutMs?: number): Promise<Result> {
    if (!this.child?.pid) throw new Error('containerd is not running');
    return run('nsenter', ['-t', String(this.child.pid), '-m', '--', 'ctr', '-a', this.socket, '-n', 'k8s.io', ...args], timeoutMs);
  }

  /** SIGTERM, then SIGKILL after 10 s. */
  async stop(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await this.exited;
    clearTimeout(timer);
  }
}

const haveTools = process.getuid?.() === 0 && ['containerd', 'ctr', 'runc', 'unshare', 'nsenter'].every(onPath);
const tmp = haveTools ? fs.mkdtempSync(path.join(os.tmpdir(), 'hp-img-e2e-')) : '';
const containerd = haveTools ? new PrivateContainerd(tmp) : undefined;
const cgroupName = `hp-img-test-${process.pid}`;
const archives = new Map<string, string>();
let started = false;

async function teardown(): Promise<void> {
  if (!containerd) return;
  await containerd.stop();
  // Anything mounted under the directory in our namespace (there should be none:
  // containerd's mounts live and die in its own namespace).
  if (mountsUnder(tmp).length > 0) await run('umount', ['-R', tmp]);
}

test.after(async () => {
  if (!containerd) return;
  await teardown();
  if (mountsUnder(tmp).length === 0) fs.rmSync(tmp, { recursive: true, force: true });
});

test('a private containerd starts', async () => {
  if (!containerd) return skip('images e2e', 'needs root and containerd, ctr, runc, unshare, nsenter');
  const archiveDir = path.join(tmp, 'archives');
  for (const name of ['busybox', 'haproxy', 'node-exporter']) {
    archives.set(name, (await buildImageArchive(findImage(name), archiveDir)).archive);
  }
  await containerd.start();
  started = true;
});

test('ctr imports the busybox archive under its name', async () => {
  if (!started) return skip('images import', 'no private containerd');
  await importImages({ address: containerd!.socket, namespace: 'k8s.io', archives: [archives.get('busybox')!] });
  const ls = await containerd!.ctr(['images', 'ls', '-q']);
  assert.is(ls.code, 0, ls.stderr);
  assert.ok(ls.stdout.split('\n').includes('heteropod.local/busybox:1'), `images: ${ls.stdout}`);
});

test('a container from the busybox image runs echo', async () => {
  if (!started) return skip('images run busybox', 'no private containerd');
  const r = await containerd!.ctr(['run', '--rm', '--cgroup', `/${cgroupName}`, 'heteropod.local/busybox:1', 'hp-img-test', 'echo', 'hello-from-image']);
  assert.is(r.code, 0, `ctr run failed: ${r.stderr}`);
  assert.is(r.stdout.trim(), 'hello-from-image');
});

test('the ldd closures are complete: haproxy and node-exporter start in their images', async () => {
  if (!started) return skip('images run closures', 'no private containerd');
  await importImages({
    address: `unix://${containerd!.socket}`,
    namespace: 'k8s.io',
    archives: [archives.get('haproxy')!, archives.get('node-exporter')!],
  });
  const haproxy = await containerd!.ctr([
    'run', '--rm', '--cgroup', `/${cgroupName}`, 'heteropod.local/haproxy:1', 'hp-img-haproxy',
    '/usr/sbin/haproxy', '-c', '-f', '/etc/haproxy/haproxy.cfg',
  ]);
  assert.is(haproxy.code, 0, `haproxy -c failed: ${haproxy.stdout} ${haproxy.stderr}`);
  assert.match(haproxy.stdout + haproxy.stderr, /Configuration file is valid/);
  const exporter = await containerd!.ctr([
    'run', '--rm', '--cgroup', `/${cgroupName}`, 'heteropod.local/node-exporter:1', 'hp-img-exporter',
    '/usr/bin/prometheus-node-exporter', '--version',
  ]);
  assert.is(exporter.code, 0, `node-exporter --version failed: ${exporter.stderr}`);
  assert.match(exporter.stdout + exporter.stderr, /node_exporter, version/);
  const shell = await containerd!.ctr(['run', '--rm', '--cgroup', `/${cgroupName}`, 'heteropod.local/haproxy:1', 'hp-img-sh', 'sh', '-c', 'id -u; cat /etc/passwd | wc -l']);
  assert.is(shell.code, 0, shell.stderr);
  assert.is(shell.stdout.trim().split('\n')[0], '0');
});

test('a failed import carries ctr\'s error', async () => {
  if (!started) return skip('images import error', 'no private containerd');
  const junk = path.join(tmp, 'junk.oci.tar');
  fs.writeFileSync(junk, 'this is not a tar archive\n');
  try {
    await importImages({ address: containerd!.socket, namespace: 'k8s.io', archives: [junk] });
    assert.unreachable('the import should fail');
  } catch (err) {
    const message = (err as Error).message;
    assert.match(message, junk);
    assert.match(message, /ctr: /);
  }
  try {
    await importImages({ address: path.join(tmp, 'no.sock'), namespace: 'k8s.io', archives: [junk] });
    assert.unreachable('the import should fail');
  } catch (err) {
    assert.match((err as Error).message, /no containerd socket/);
  }
});

test('leaves no processes, mounts or cgroups behind', async () => {
  if (!containerd) return skip('images leak check', 'no private containerd');
  await teardown();
  assert.equal(processesMentioning(tmp), [], 'no containerd or shim still running');
  assert.equal(mountsUnder(tmp), [], 'no mounts under the test directory');
  const cgroups = fs.existsSync('/sys/fs/cgroup')
    ? fs.readdirSync('/sys/fs/cgroup').map((c) => path.join('/sys/fs/cgroup', c, cgroupName)).filter((p) => fs.existsSync(p))
    : [];
  if (fs.existsSync(path.join('/sys/fs/cgroup', cgroupName))) cgroups.push(path.join('/sys/fs/cgroup', cgroupName));
  assert.equal(cgroups, [], 'no container cgroup left');
  fs.rmSync(tmp, { recursive: true, force: true });
  assert.not.ok(fs.existsSync(tmp));
});

test.run();
