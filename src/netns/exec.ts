// Work inside one network namespace, named by path as CNI and the OCI spec name
// it, all through libxpu: the node's networking tools (ip, iptables-restore)
// started from a thread inside the namespace, which enters only the network
// namespace (files and binaries stay the caller's), and sysctls, addresses and
// the link's device without a process at all.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { ADDR4_BYTES, errnoText, libc, native } from '../xpu/native';
import { runProgram } from '../xpu/run-program';

export const DEBUG = process.env.HETEROPOD_NETNS_DEBUG === '1';

function trace(msg: string): void {
  if (DEBUG) process.stderr.write(`heteropod netns: ${msg}\n`);
}

/** The caller's own network namespace, as callers name it. */
export const OWN_NETNS = '/proc/self/ns/net';

/**
 * Runs argv in the namespace; rejects with the command and its stderr. libxpu
 * starts it (runProgram: posix_spawn from a thread inside the namespace), so
 * the event loop neither forks this process nor waits, and no nsenter runs.
 */
export async function inNetns(netnsPath: string, argv: string[], input?: string): Promise<string> {
  const shown = `${argv.join(' ')} (in ${netnsPath})`;
  trace(input ? `${shown} <<\n${input}` : shown);
  const { stdout, cut } = await runProgram(argv, { netns: netnsPath, input });
  // Output past libxpu's buffer (iptables-save of a node with very many rules) is read again.
  return cut ? viaNsenter(shown, netnsPath, argv, input) : stdout;
}

// The same through nsenter and node's own child process: for output larger than libxpu's buffer.
function viaNsenter(shown: string, netnsPath: string, argv: string[], input?: string): Promise<string> {
  const [file, args] = netnsPath === OWN_NETNS ? [argv[0], argv.slice(1)] : ['nsenter', [`--net=${netnsPath}`, '--', ...argv]];
  return new Promise((resolve, reject) => {
    const child = execFile(file, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 }, (e, stdout, stderr) => {
      if (e) reject(new Error(`${shown}: ${String(stderr).trim() || e.message}`));
      else resolve(String(stdout));
    });
    if (input !== undefined) child.stdin!.end(input);
  });
}

/** Whether the caller's own namespace has a network device of that name (if_nametoindex: no file read, no process). */
export function hasOwnDevice(name: string): boolean {
  return libc().ifNameToIndex(name) !== 0;
}

/** A path that exists and is a network namespace (an nsfs mount or /proc/PID/ns/net). */
export function isNetns(netnsPath: string): boolean {
  try {
    // nsfs inodes live on their own anonymous device; a plain file or
    // directory at the path is not a namespace (e.g. a netns file whose mount
    // was already taken away).
    const st = fs.statSync(netnsPath);
    const nsfs = fs.statSync('/proc/self/ns/net');
    return st.dev === nsfs.dev;
  } catch {
    return false;
  }
}

// Sysctls, addresses and the link's device are libxpu's (xpu_netns_*): a thread
// of the library enters the namespace, so no process is started for them.

function nativeFailure(what: string, rc: number, detail: string): Error {
  // Without a detail (what failed inside), the namespace itself could not be entered.
  const { ENOENT, EINVAL } = os.constants.errno;
  const why = detail ? errnoText(-rc) : -rc === ENOENT ? 'no such network namespace' : -rc === EINVAL ? 'not a network namespace' : errnoText(-rc);
  return new Error(`${what}${detail ? ` (${detail})` : ''}: ${why}`);
}

function sysctlLine(netnsPath: string, text: string): string {
  if (/[\n=]/.test(text) || text === '') throw new Error(`sysctl in ${netnsPath}: ${JSON.stringify(text)} is not a sysctl name`);
  return text;
}

/**
 * Reads `names`, then writes `values`, in one visit to the namespace: what the
 * namespace had, to put back later. Names like net.ipv4.conf.eth0.forwarding,
 * or with slashes (net/ipv4/conf/eth0.1/forwarding), as sysctl(8) takes them.
 */
export async function swapSysctls(netnsPath: string, names: string[], values: Map<string, string>): Promise<Map<string, string>> {
  const reads = names.map((n) => sysctlLine(netnsPath, n) + '\n').join('');
  const writes = [...values]
    .map(([k, v]) => {
      if (v.includes('\n')) throw new Error(`sysctl ${k} in ${netnsPath}: the value ${JSON.stringify(v)} holds a newline`);
      return `${sysctlLine(netnsPath, k)}=${v}\n`;
    })
    .join('');
  const out = Buffer.alloc(16384);
  const rc = native().netnsSysctls(netnsPath, reads, writes, out, out.length);
  const text = out.subarray(0, out.indexOf(0)).toString('utf8');
  if (rc < 0) throw nativeFailure(`sysctl in ${netnsPath}`, rc, text);
  const lines = text.split('\n').slice(0, names.length);
  return new Map(names.map((n, i) => [n, lines[i].trim()]));
}

/** Reads sysctls in the namespace. */
export function readSysctls(netnsPath: string, names: string[]): Promise<Map<string, string>> {
  return swapSysctls(netnsPath, names, new Map());
}

export async function writeSysctls(netnsPath: string, values: Map<string, string>): Promise<void> {
  if (values.size > 0) await swapSysctls(netnsPath, [], values);
}

export interface Address4 {
  dev: string;
  ip: string;
  prefixLength: number;
}

/** The namespace's IPv4 addresses (of devices with one). */
export function addresses4(netnsPath: string): Address4[] {
  let buf = Buffer.alloc(16 * ADDR4_BYTES);
  for (;;) {
    const room = buf.length / ADDR4_BYTES;
    const n = native().netnsAddrs4(netnsPath, buf, room);
    if (n < 0) throw nativeFailure(`list the IPv4 addresses in ${netnsPath}`, n, '');
    if (n <= room) {
      return Array.from({ length: n }, (_, i) => {
        const r = buf.subarray(i * ADDR4_BYTES, (i + 1) * ADDR4_BYTES);
        return { dev: r.subarray(0, r.indexOf(0)).toString('utf8'), ip: [...r.subarray(16, 20)].join('.'), prefixLength: r[20] };
      });
    }
    buf = Buffer.alloc((n + 4) * ADDR4_BYTES);
  }
}

export interface LinkSetup {
  dev: string;
  mac: string;
  /** this end's address, "a.b.c.d/n" */
  cidr: string;
  peer: string;
  peerMac: string;
  /** "default" or "a.b.c.d/n", routed via the peer; none when absent */
  route?: string;
  /** set the namespace's loopback up */
  loUp?: boolean;
}

/** The link's device: MAC address, address, a permanent neighbour entry for the peer, a route via it. */
export function setUpLink(netnsPath: string, l: LinkSetup): void {
  const why = Buffer.alloc(128);
  const rc = native().netnsLink4(netnsPath, l.dev, l.mac, l.cidr, l.peer, l.peerMac, l.route ?? '', l.loUp ? 1 : 0, why, why.length);
  if (rc < 0) throw nativeFailure(`set up ${l.dev} in ${netnsPath}`, rc, why.subarray(0, why.indexOf(0)).toString('utf8'));
}
