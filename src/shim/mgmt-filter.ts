// The management link's guard. The DPU agent listens on the DPU's management
// network (tmfifo_net0 on a BlueField), which the host reaches directly. A pod
// with a default route through the host would otherwise have its packets
// forwarded there too: only a missing return route and the agent's mutual TLS
// would stop them. The node daemon makes one chain that drops every packet the
// host forwards onto that link, in the family of the agent's address (the one
// the management network is addressed in; the other's table is not touched):
//
//   filter FORWARD -> HETEROPOD-MGMT: -o <link> DROP
//
// The host's own processes (the node daemon, the CLI) send from the host itself
// (OUTPUT, not FORWARD), so they still reach the agent; everything routed through
// the host (pods, other namespaces) does not. The chain is made anew at each
// start of the daemon and kept while it is down or being upgraded: a daemon that
// stops does not open the link to pods. `removeManagementGuard` undoes it (the
// test bed's `local down`).
import * as dns from 'node:dns/promises';
import * as net from 'node:net';
import { inNetns } from '../netns/exec';

export const MGMT_CHAIN = 'HETEROPOD-MGMT';

export interface ManagementLink {
  dev: string;
  family: 4 | 6;
}

// The node's own network namespace: the tools run there as in a pod's half.
const own = (argv: string[], input?: string): Promise<string> => inNetns(`/proc/${process.pid}/ns/net`, argv, input);
const succeeds = (argv: string[]): Promise<boolean> => own(argv).then(() => true, () => false);

const TOOLS = {
  4: { restore: 'iptables-restore', iptables: 'iptables' },
  6: { restore: 'ip6tables-restore', iptables: 'ip6tables' },
} as const;

/** The host part of the agent's "host:port" (IPv6 in brackets). */
export function agentHost(address: string): string {
  const m = /^\[([^\]]+)\]:\d+$/.exec(address) ?? /^([^:]+):\d+$/.exec(address);
  if (!m) throw new Error(`DPU agent address ${JSON.stringify(address)}: expected host:port`);
  return m[1];
}

/**
 * The link the agent's address is directly on, from the kernel's route to it;
 * null when it is reached through a gateway or over loopback (no link of its own
 * to guard).
 */
export async function managementLink(address: string): Promise<ManagementLink | null> {
  const host = agentHost(address);
  const ip = net.isIP(host) ? host : (await dns.lookup(host)).address;
  const dev = linkOfRoute(await own(['ip', 'route', 'get', ip]));
  return dev ? { dev, family: net.isIPv6(ip) ? 6 : 4 } : null;
}

/** The device of `ip route get` output when the destination is on it directly. */
export function linkOfRoute(routeGet: string): string | null {
  const first = routeGet.split('\n')[0];
  if (/\bvia\b/.test(first) || /^local\b/.test(first)) return null;
  const dev = /\bdev (\S+)/.exec(first)?.[1];
  return dev && dev !== 'lo' ? dev : null;
}

/** iptables-restore input that makes the chain (flushed if it was there) and its rule. */
export function guardRules(link: string): string {
  return [
    '*filter',
    `:${MGMT_CHAIN} - [0:0]`,
    `-A ${MGMT_CHAIN} -o ${link} -m comment --comment "heteropod: no forwarded packet onto the DPU management link" -j DROP`,
    'COMMIT',
    '',
  ].join('\n');
}

/** Makes (or remakes) the guard of `link` and hooks it first in FORWARD. */
export async function guardManagementLink(link: ManagementLink): Promise<void> {
  const f = TOOLS[link.family];
  await own([f.restore, '-w', '--noflush'], guardRules(link.dev));
  if (!(await succeeds([f.iptables, '-w', '-C', 'FORWARD', '-j', MGMT_CHAIN]))) await own([f.iptables, '-w', '-I', 'FORWARD', '1', '-j', MGMT_CHAIN]);
}

/** Removes the guard, if there (a family whose filter table has no such chain is not touched). */
export async function removeManagementGuard(): Promise<void> {
  for (const f of Object.values(TOOLS)) {
    const saved = await own([`${f.iptables}-save`, '-t', 'filter']).catch(() => '');
    if (!saved.includes(`:${MGMT_CHAIN} `)) continue;
    while (await succeeds([f.iptables, '-w', '-D', 'FORWARD', '-j', MGMT_CHAIN])) {
      // one hook per start at most, but a crash between two steps may have left two
    }
    await succeeds([f.iptables, '-w', '-F', MGMT_CHAIN]);
    await succeeds([f.iptables, '-w', '-X', MGMT_CHAIN]);
  }
}
