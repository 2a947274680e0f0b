// Work inside one network namespace, named by path as CNI and the OCI spec name
// it, all through libxpu: the node's networking tools (ip, iptables-restore)
// started from a thread inside the namespace, which enters only the network
// namespace (files and binaries stay the caller's), and sysctls, addresses and
// the link's device without a process at all.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { ADDR4_BYTES, errnoText, native } from '../xpu/native';

export const DEBUG = process.env.HETEROPOD_NETNS_DEBUG === '1';

function trace(msg: string): void {
  if (DEBUG) process.stderr.write(`heteropod netns: ${msg}\n`);
}

/** The caller's own network namespace, as callers name it. */
export const OWN_NETNS = '/proc/self/ns/net';

// What a tool may print and still come back through libxpu's buffers; more
// (iptables-save of a node with very many rules) is read again through nsenter.
const RUN_OUT_BYTES = 1 << 20;
const RUN_ERR_BYTES = 64 << 10;

/**
 * Runs argv in the namespace; rejects with the command and its stderr. libxpu
 * starts it (xpu_run, on a worker thread: posix_spawn from a thread inside the
 * namespace), so the event loop neither forks this process nor waits, and no
 * nsenter runs.
 */
export function inNetns(netnsPath: string, argv: string[], input?: string): Promise<string> {
  const shown = `${argv.join(' ')} (in ${netnsPath})`;
  trace(input ? `${shown} <<\n${input}` : shown);
  const args = Buffer.from(argv.map((a) => `${a}\0`).join(''), 'utf8');
  const stdin = Buffer.from(input ?? '', 'utf8');
  const out = Buffer.allocUnsafe(RUN_OUT_BYTES);
  const err = Buffer.allocUnsafe(RUN_ERR_BYTES);
  const outUsed = [0];
  const errUsed = [0];
  return new Promise((resolve, reject) => {
    native().run.async(netnsPath, args, args.length, stdin, stdin.length, out, out.length, outUsed, err, err.length, errUsed, (callErr, status) => {
      if (callErr) return reject(new Error(`${shown}: ${(callErr as Error).message}`));
      if (status < 0) {
        const why = -status === os.constants.errno.ENOENT ? `${argv[0]}: not found (or no such network namespace)` : errnoText(-status);
        return reject(new Error(`${shown}: ${why}`));
      }
      const stderr = err.subarray(0, Math.min(errUsed[0], err.length)).toString('utf8').trim();
      const code = (status & 0x7f) === 0 ? (status >> 8) & 0xff : -1;
      if (code !== 0) return reject(new Error(`${shown}: ${stderr || (code < 0 ? `killed by signal ${status & 0x7f}` : `exit code ${code}`)}`));
      if (outUsed[0] > out.length) return resolve(viaNsenter(shown, netnsPath, argv, input));
      resolve(out.subarray(0, outUsed[0]).toString('utf8'));
    });
  });
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

/** The network devices of the caller's own namespace (/proc/self/net/dev: no process started). */
export function ownDevices(): Set<string> {
  const lines = fs.readFileSync('/proc/self/net/dev', 'utf8').split('\n').slice(2);
  return new Set(lines.map((l) => l.split(':')[0].trim()).filter(Boolean));
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
