// The DPU half's own wire to the DPU's uplink. On a DPU-mode node the DPU is the
// node's NIC, so traffic between the fabric and the pod's DPU half never needs
// the host: the agent gives the half a veth whose other end is in the DPU's own
// namespace (where p0 is), and the DPU steers to it, by destination port, what
// arrives for the pod IP:
//
//   DPU root: hpd-<pod> ── veth ── eth0 (DPU half: the pod IP /32, default route out)
//   ip rule 20100  to podIP tcp dport <host-half listener in the DPU's ephemeral range>  lookup main
//   ip rule 20101  to podIP tcp dport <DPU-owned port>                                 lookup 4977
//   ip rule 20102  to podIP tcp|udp dport 47000-60999 (the DPU half's ephemeral ports)  lookup 4977
//   table 4977:    podIP dev hpd-<pod>
//
// Everything else for the pod IP follows the DPU's main table to the host's PF,
// as before. The two halves use disjoint ephemeral port ranges (HOST_EPHEMERAL,
// DPU_EPHEMERAL), so the replies to each half's own connections come back to
// it without connection tracking on the DPU; a host-half listener inside the
// DPU's range keeps its port (rule 20100). The wire is static: fixed MAC
// addresses and permanent neighbour entries, so no ARP crosses it, and the DPU
// end has no address (the half's gateway is a link-local name, 169.254.1.1).
import * as net from 'node:net';
import { OWN_NETNS, hasOwnDevice, inNetns } from './exec';
import { chainTag } from './rules';

export const HALF_UPLINK_DEV = 'eth0';
export const UPLINK_GATEWAY = '169.254.1.1';
export const HALVES_TABLE = 4977;
export const RULE_PREF = { hostPort: 20100, dpuPort: 20101, dpuEphemeral: 20102 } as const;
/** Ephemeral (local) port ranges of the halves: disjoint, together the kernel's default range. */
export const HOST_EPHEMERAL: readonly [number, number] = [32768, 46999];
export const DPU_EPHEMERAL: readonly [number, number] = [47000, 60999];
const ROOT_MAC = '02:68:70:00:00:01';
const HALF_MAC = '02:68:70:00:00:02';

/** "a.b.c.d/n" with a valid IPv4 address and a prefix length of 0-32. */
export function isIPv4Cidr(text: string): boolean {
  const m = /^([0-9.]+)\/(\d{1,2})$/.exec(text);
  return m !== null && net.isIPv4(m[1]) && Number(m[2]) <= 32;
}

/** The network (CIDR) of an IPv4 address with a prefix length: networkOf('10.1.2.3', 24) = '10.1.2.0/24'. */
export function networkOf(ip: string, prefixLength: number): string {
  if (!Number.isInteger(prefixLength) || prefixLength < 0 || prefixLength > 32) throw new Error(`prefix length ${prefixLength} is not in 0-32`);
  const n = ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
  // Arithmetic, not bitwise: JavaScript's bitwise operators are 32-bit signed.
  const net = n - (n % 2 ** (32 - prefixLength));
  return `${[24, 16, 8, 0].map((s) => Math.floor(net / 2 ** s) % 256).join('.')}/${prefixLength}`;
}

/** The DPU end's name: 15 characters at most. */
export function uplinkDevice(podId: string): string {
  return `hpd-${chainTag(podId).slice(0, 11)}`;
}

export interface UplinkRule {
  pref: number;
  proto: 'tcp' | 'udp';
  /** a port, or a range "from-to" */
  dport: string;
  table: 'main' | typeof HALVES_TABLE;
}

/** The DPU root's rules for one pod (pure; tested on its output). */
export function uplinkRules(dpuPorts: readonly number[], hostPorts: readonly number[]): UplinkRule[] {
  const [lo, hi] = DPU_EPHEMERAL;
  const out: UplinkRule[] = [];
  for (const p of hostPorts) if (p >= lo && p <= hi) out.push({ pref: RULE_PREF.hostPort, proto: 'tcp', dport: String(p), table: 'main' });
  for (const p of dpuPorts) out.push({ pref: RULE_PREF.dpuPort, proto: 'tcp', dport: String(p), table: HALVES_TABLE });
  for (const proto of ['tcp', 'udp'] as const) out.push({ pref: RULE_PREF.dpuEphemeral, proto, dport: `${lo}-${hi}`, table: HALVES_TABLE });
  return out;
}

function ruleArgs(podIp: string, r: UplinkRule): string {
  return `pref ${r.pref} to ${podIp}/32 ipproto ${r.proto} dport ${r.dport} lookup ${r.table}`;
}

const key = (r: UplinkRule) => `${r.pref} ${r.proto} ${r.dport} ${r.table}`;

interface ShownRule {
  priority: number;
  dst?: string;
  ipproto?: string;
  dport?: number;
  dport_start?: number;
  dport_end?: number;
  table?: string;
}

/** The rules for `podIp` in the root namespace now, as `ip rule del` arguments (a crashed owner's included). */
async function existingRules(rootNetns: string, podIp: string): Promise<string[]> {
  // The kernel's list filtered by ip to the pod's address: not every pod's rules each time.
  const shown = JSON.parse(await inNetns(rootNetns, ['ip', '-j', 'rule', 'show', 'to', `${podIp}/32`])) as ShownRule[];
  const prefs = Object.values(RULE_PREF) as number[];
  return shown
    .filter((r) => r.dst === podIp && prefs.includes(r.priority))
    .map((r) => {
      const dport = r.dport !== undefined ? String(r.dport) : `${r.dport_start}-${r.dport_end}`;
      return `pref ${r.priority} to ${podIp}/32 ipproto ${r.ipproto} dport ${dport} lookup ${r.table}`;
    });
}

/** Removes every rule of `podIp` and the pod's DPU end (and with it the half's end); for clean-up after a crash too. */
export async function removeUplink(rootNetns: string, podId: string, podIp: string | undefined): Promise<void> {
  if (podIp) {
    const rules = await existingRules(rootNetns, podIp);
    if (rules.length) await inNetns(rootNetns, ['ip', '-batch', '-'], rules.map((r) => `rule del ${r}\n`).join(''));
  }
  await inNetns(rootNetns, ['ip', 'link', 'del', uplinkDevice(podId)]).catch(() => undefined);
}

export interface UplinkOptions {
  podId: string;
  podIp: string;
  /** the DPU half's namespace */
  halfNetns: string;
  /** the DPU's own namespace, where the uplink is (the agent's: /proc/self/ns/net) */
  rootNetns: string;
}

export class DpuUplink {
  private applied = new Map<string, UplinkRule>();

  private constructor(private readonly o: UplinkOptions) {}

  get device(): string {
    return uplinkDevice(this.o.podId);
  }

  /** Wires the half to the DPU's namespace; rules for the ephemeral range only until setPorts. */
  static async attach(o: UplinkOptions): Promise<DpuUplink> {
    const u = new DpuUplink(o);
    const dev = u.device;
    const initial = uplinkRules([], []);
    try {
      // What a crashed owner left goes in the same batch that wires the pod:
      // its rules, and its end of the wire if there is one (a device that is
      // not there would fail the batch; the DPU's own namespace is looked at
      // directly, another is asked).
      const stale = (await existingRules(o.rootNetns, o.podIp)).map((r) => `rule del ${r}`);
      if (o.rootNetns !== OWN_NETNS) await inNetns(o.rootNetns, ['ip', 'link', 'del', dev]).catch(() => undefined);
      else if (hasOwnDevice(dev)) stale.push(`link del ${dev}`);
      await inNetns(
        o.rootNetns,
        ['ip', '-batch', '-'],
        [
          ...stale,
          `link add ${dev} address ${ROOT_MAC} type veth peer name ${HALF_UPLINK_DEV} address ${HALF_MAC} netns ${o.halfNetns}`,
          `link set ${dev} up`,
          `neigh replace ${o.podIp} lladdr ${HALF_MAC} dev ${dev} nud permanent`,
          `route replace ${o.podIp}/32 dev ${dev} table ${HALVES_TABLE}`,
          ...initial.map((r) => `rule add ${ruleArgs(o.podIp, r)}`),
        ].join('\n') + '\n',
      );
      u.applied = new Map(initial.map((r) => [key(r), r]));
      await inNetns(
        o.halfNetns,
        ['ip', '-batch', '-'],
        [
          `addr add ${o.podIp}/32 dev ${HALF_UPLINK_DEV}`,
          `link set ${HALF_UPLINK_DEV} up`,
          `neigh replace ${UPLINK_GATEWAY} lladdr ${ROOT_MAC} dev ${HALF_UPLINK_DEV} nud permanent`,
          `route add ${UPLINK_GATEWAY}/32 dev ${HALF_UPLINK_DEV} scope link`,
          `route replace default via ${UPLINK_GATEWAY} dev ${HALF_UPLINK_DEV} src ${o.podIp}`,
        ].join('\n') + '\n',
      );
      return u;
    } catch (err) {
      await removeUplink(o.rootNetns, o.podId, o.podIp).catch(() => undefined);
      throw new Error(`wire the DPU half of pod ${o.podId} to the DPU's uplink: ${(err as Error).message}`);
    }
  }

  /** Steers the DPU-owned ports to the half, keeps host listeners in the DPU's range on the host. */
  async setPorts(dpuPorts: readonly number[], hostPorts: readonly number[]): Promise<void> {
    const want = new Map(uplinkRules(dpuPorts, hostPorts).map((r) => [key(r), r]));
    const lines: string[] = [];
    // Additions first: a port moving between rules is never unsteered for a moment.
    for (const [k, r] of want) if (!this.applied.has(k)) lines.push(`rule add ${ruleArgs(this.o.podIp, r)}`);
    for (const [k, r] of this.applied) if (!want.has(k)) lines.push(`rule del ${ruleArgs(this.o.podIp, r)}`);
    if (lines.length === 0) return;
    await inNetns(this.o.rootNetns, ['ip', '-batch', '-'], lines.join('\n') + '\n');
    this.applied = want;
  }

  async close(): Promise<void> {
    await removeUplink(this.o.rootNetns, this.o.podId, this.o.podIp);
    this.applied.clear();
  }
}
