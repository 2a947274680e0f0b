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

/** Runs argv in the namespace; rejects with the command and its stderr. */
export function inNetns(netnsPath: string, argv: string[], input?: string): Promise<string> {
  const shown = `${argv.join(' ')} (in ${netnsPath})`;
  trace(input ? `${shown} <<\n${input}` : shown);
  return new Promise((resolve, reject) => {
    const child = execFile('nsenter', [`--net=${netnsPath}`, '--', ...argv], { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${shown}: ${String(stderr).trim() || err.message}`));
      else resolve(String(stdout));
    });
    if (input !== undefined) child.stdin!.end(input);
  });
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
  const out = await inNetns(netnsPath, ['sysctl', '-n', ...names]);
  // One line per name; a value may be empty (ip_local_reserved_ports), so only the last newline goes.
  const values = out.replace(/\n$/, '').split('\n');
  if (values.length !== names.length) throw new Error(`sysctl ${names.join(' ')} in ${netnsPath}: expected ${names.length} values, got "${out.trim()}"`);
  return new Map(names.map((n, i) => [n, values[i].trim()]));
}

export async function writeSysctls(netnsPath: string, values: Map<string, string>): Promise<void> {
  if (values.size === 0) return;
  await inNetns(netnsPath, ['sysctl', '-q', '-w', ...[...values].map(([k, v]) => `${k}=${v}`)]);
}
