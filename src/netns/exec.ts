// Running the node's networking tools (ip, sysctl, iptables-restore) inside one
// network namespace, named by path as CNI and the OCI spec name it. nsenter
// enters only the network namespace: /proc/sys/net then shows that namespace,
// while files and binaries stay the caller's.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';

export const DEBUG = process.env.HETEROPOD_NETNS_DEBUG === '1';

function trace(msg: string): void {
  if (DEBUG) process.stderr.write(`heteropod netns: ${msg}\n`);
}

/** The caller's own network namespace, as callers name it. */
export const OWN_NETNS = '/proc/self/ns/net';

/** Runs argv in the namespace; rejects with the command and its stderr. The
 * caller's own namespace needs no nsenter (one exec less). */
export function inNetns(netnsPath: string, argv: string[], input?: string): Promise<string> {
  const shown = `${argv.join(' ')} (in ${netnsPath})`;
  trace(input ? `${shown} <<\n${input}` : shown);
  const [file, args] = netnsPath === OWN_NETNS ? [argv[0], argv.slice(1)] : ['nsenter', [`--net=${netnsPath}`, '--', ...argv]];
  return new Promise((resolve, reject) => {
    const child = execFile(file, args, { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${shown}: ${String(stderr).trim() || err.message}`));
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

/** Reads sysctls (names like net.ipv4.conf.eth0.forwarding) in the namespace. */
export async function readSysctls(netnsPath: string, names: string[]): Promise<Map<string, string>> {
  return sysctlValues(netnsPath, names, await inNetns(netnsPath, ['sysctl', '-n', ...names]));
}

function sysctlValues(netnsPath: string, names: string[], out: string): Map<string, string> {
  // One line per name; a value may be empty (ip_local_reserved_ports), so only the last newline goes.
  const values = out.replace(/\n$/, '').split('\n');
  if (values.length !== names.length) throw new Error(`sysctl ${names.join(' ')} in ${netnsPath}: expected ${names.length} values, got "${out.trim()}"`);
  return new Map(names.map((n, i) => [n, values[i].trim()]));
}

/**
 * Reads `names`, then writes `values`, in one visit to the namespace (one
 * process started instead of two): what the namespace had, to put back later.
 */
export async function swapSysctls(netnsPath: string, names: string[], values: Map<string, string>): Promise<Map<string, string>> {
  if (values.size === 0) return readSysctls(netnsPath, names);
  const q = (a: string) => {
    if (a.includes("'")) throw new Error(`sysctl in ${netnsPath}: ${JSON.stringify(a)} holds a quote`);
    return `'${a}'`;
  };
  const script = `sysctl -n ${names.map(q).join(' ')} && sysctl -q -w ${[...values].map(([k, v]) => q(`${k}=${v}`)).join(' ')}`;
  const out = await inNetns(netnsPath, ['sh', '-c', script]);
  return sysctlValues(netnsPath, names, out);
}

export async function writeSysctls(netnsPath: string, values: Map<string, string>): Promise<void> {
  if (values.size === 0) return;
  await inNetns(netnsPath, ['sysctl', '-q', '-w', ...[...values].map(([k, v]) => `${k}=${v}`)]);
}
