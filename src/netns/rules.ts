// The netfilter rules of a split network namespace, as iptables-restore input.
// Generation is pure (tested on its text); applying and removing run
// iptables-restore inside the half's namespace.
//
// Each half keeps its rules in chains of its own, named after the pod
// (HP-<pod>-PREROUTING, …), reached by one jump from the built-in chain that
// carries the comment "heteropod pod <pod id>". Updates replace the contents
// of our chains in one iptables-restore transaction (declaring a chain in
// --noflush input empties it); tear-down deletes exactly the jumps to our
// chains and the chains, found in iptables-save output, so it also works after
// a crash from whatever state was left.
//
// The binaries are `iptables-restore` / `iptables-save`, the ones the node's
// alternatives select (nft or legacy), the same ones the leak check reads.
import { createHash } from 'node:crypto';
import { inNetns } from './exec';

export const HOST_LINK_IP = '169.254.77.1';
export const DPU_LINK_IP = '169.254.77.2';
export const LINK_PREFIX = 30;
export const LINK_TAP = 'xpu0';

export type HalfSide = 'host' | 'dpu';

/**
 * The pod's tag in chain names: the first 12 characters of a CRI sandbox id (as
 * `crictl pods` shows them), or of a hash for any other id. Chain names are at
 * most 28 characters; "HP-" + 12 + "-POSTROUTING" is 27.
 */
export function chainTag(podId: string): string {
  if (/^[0-9a-f]{12,}$/.test(podId)) return podId.slice(0, 12);
  return createHash('sha256').update(podId).digest('hex').slice(0, 12);
}

export function chainName(podId: string, builtin: string): string {
  return `HP-${chainTag(podId)}-${builtin}`;
}

export interface RuleInput {
  side: HalfSide;
  podId: string;
  /** The pod IP; required for the host half, optional for the DPU half. */
  podIp?: string;
  tap?: string;
  /** Ports whose listener is in the other half: this half's traffic for them crosses. */
  peerPorts: readonly number[];
  /**
   * DPU half only: ports it serves at the pod IP. Its own traffic to the pod IP
   * for them stays local instead of going out to the host half and back.
   */
  ownPodIpPorts?: readonly number[];
  /**
   * DPU half only: the pod IP is an address of this half (it has the DPU's
   * uplink). Its own traffic to the pod IP stays local by itself, and for the
   * host half's ports (peerPorts) crosses to the host half.
   */
  podIpLocal?: boolean;
}

/** iptables' multiport match takes at most 15 ports. */
export function multiportChunks(ports: readonly number[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < ports.length; i += 15) out.push(ports.slice(i, i + 15).join(','));
  return out;
}

function comment(text: string): string {
  return `-m comment --comment "${text}"`;
}

const NAT_CHAINS = ['PREROUTING', 'OUTPUT', 'POSTROUTING'] as const;
const FILTER_CHAINS = ['FORWARD'] as const;

/**
 * The nat (and, on the host half, filter) rules of one half. With `jumps`, the
 * text also inserts the jumps from the built-in chains (first install only;
 * later updates rewrite our chains and leave the jumps in place).
 */
export function halfRules(r: RuleInput, opts: { jumps: boolean }): string {
  const tap = r.tap ?? 'xpu0';
  const self = r.side === 'host' ? HOST_LINK_IP : DPU_LINK_IP;
  const peer = r.side === 'host' ? DPU_LINK_IP : HOST_LINK_IP;
  const other = r.side === 'host' ? 'DPU' : 'host';
  if (r.side === 'host' && !r.podIp) throw new Error(`rules for the host half of pod ${r.podId}: the pod IP is required`);
  const c = (b: string) => chainName(r.podId, b);
  const jump = comment(`heteropod pod ${r.podId} ${r.side} half`);
  const lines: string[] = ['*nat', ...NAT_CHAINS.map((b) => `:${c(b)} - [0:0]`)];
  if (opts.jumps) for (const b of NAT_CHAINS) lines.push(`-I ${b} 1 ${jump} -j ${c(b)}`);

  // Localhost of the other half arrives SNATed to the peer's link address, for
  // this half's link address: hand it to loopback, where a listener bound to
  // 127.0.0.1 only (an admin port, say) sees it as local traffic, as in one
  // namespace. Only that pair of addresses is mapped, so traffic from the
  // network for the pod IP never reaches loopback-only listeners.
  lines.push(`-A ${c('PREROUTING')} -s ${peer}/32 -d ${self}/32 -i ${tap} -p tcp ${comment(`localhost from the ${other} half`)} -j DNAT --to-destination 127.0.0.1`);
  for (const ports of multiportChunks(r.peerPorts)) {
    if (r.side === 'host') {
      // podIP:PORT from the network (eth0), for a DPU port. Not from xpu0: the
      // DPU half's own traffic to the pod IP stays on its side (below).
      lines.push(`-A ${c('PREROUTING')} -d ${r.podIp}/32 ! -i ${tap} -p tcp -m multiport --dports ${ports} ${comment('pod IP to the DPU half')} -j DNAT --to-destination ${peer}`);
      lines.push(`-A ${c('OUTPUT')} -d ${r.podIp}/32 -p tcp -m multiport --dports ${ports} ${comment('pod IP to the DPU half')} -j DNAT --to-destination ${peer}`);
    }
    lines.push(`-A ${c('OUTPUT')} -d 127.0.0.1/32 -p tcp -m multiport --dports ${ports} ${comment(`localhost to the ${other} half`)} -j DNAT --to-destination ${peer}`);
  }
  if (r.side === 'dpu' && r.podIp && r.podIpLocal) {
    for (const ports of multiportChunks(r.peerPorts)) {
      lines.push(`-A ${c('OUTPUT')} -d ${r.podIp}/32 -p tcp -m multiport --dports ${ports} ${comment('pod IP served in the host half')} -j DNAT --to-destination ${peer}`);
    }
  } else if (r.side === 'dpu' && r.podIp) {
    for (const ports of multiportChunks(r.ownPodIpPorts ?? [])) {
      lines.push(`-A ${c('OUTPUT')} -d ${r.podIp}/32 -p tcp -m multiport --dports ${ports} ${comment('pod IP served in this half')} -j DNAT --to-destination ${self}`);
    }
  }
  // Loopback sources cannot leave a device (route_localnet lets them be routed
  // at all); the peer sees this half's link address instead.
  lines.push(`-A ${c('POSTROUTING')} -s 127.0.0.0/8 -o ${tap} ${comment(`localhost to the ${other} half`)} -j SNAT --to-source ${self}`);
  if (r.side === 'host') {
    // Egress of the DPU half leaves as the pod IP.
    lines.push(`-A ${c('POSTROUTING')} -s ${peer}/32 ! -o ${tap} ${comment('DPU half egress as the pod IP')} -j SNAT --to-source ${r.podIp}`);
  }
  lines.push('COMMIT');

  if (r.side === 'host') {
    // Forwarding between eth0 and the DPU half, ahead of anything that drops.
    // Towards the DPU half only what the pod's single namespace would accept:
    // replies to its egress and connections to its ports at the pod IP (DNAT).
    // Nothing from the network may reach its link address directly, nor claim
    // a link address as source (the DPU half maps those to loopback).
    const link = `${HOST_LINK_IP.replace(/\.\d+$/, '.0')}/${LINK_PREFIX}`;
    lines.push('*filter', ...FILTER_CHAINS.map((b) => `:${c(b)} - [0:0]`));
    if (opts.jumps) for (const b of FILTER_CHAINS) lines.push(`-I ${b} 1 ${jump} -j ${c(b)}`);
    lines.push(`-A ${c('FORWARD')} -s ${link} ! -i ${tap} ${comment('link addresses only from the link')} -j DROP`);
    lines.push(`-A ${c('FORWARD')} -i ${tap} ${comment('from the DPU half')} -j ACCEPT`);
    lines.push(`-A ${c('FORWARD')} -o ${tap} -m conntrack --ctstate RELATED,ESTABLISHED,DNAT ${comment('to the DPU half: replies, pod IP ports')} -j ACCEPT`);
    lines.push(`-A ${c('FORWARD')} -o ${tap} ${comment('to the DPU half: nothing else')} -j DROP`);
    lines.push('COMMIT');
  }
  return lines.join('\n') + '\n';
}

/**
 * From iptables-save output, the iptables-restore --noflush input that removes
 * every jump to the pod's chains and the chains themselves; '' when there is
 * nothing of the pod's. Rules of anyone else are not touched.
 */
export function removalRules(saved: string, podId: string): string {
  const prefix = `HP-${chainTag(podId)}-`;
  const out: string[] = [];
  let table = '';
  let deletes: string[] = [];
  let chains: string[] = [];
  const flush = () => {
    if (table && (deletes.length > 0 || chains.length > 0)) {
      out.push(`*${table}`, ...chains.map((ch) => `:${ch} - [0:0]`), ...deletes, ...chains.map((ch) => `-X ${ch}`), 'COMMIT');
    }
    deletes = [];
    chains = [];
  };
  for (const line of saved.split('\n')) {
    if (line.startsWith('*')) {
      flush();
      table = line.slice(1).trim();
    } else if (line.startsWith(':')) {
      const name = line.slice(1).split(' ')[0];
      if (name.startsWith(prefix)) chains.push(name);
    } else if (line.startsWith('-A ')) {
      const [, chain] = line.split(' ');
      // Jumps into our chains from chains that are not ours (ours are flushed).
      if (!chain.startsWith(prefix) && (line.includes(` -j ${prefix}`) || line.includes(` -g ${prefix}`))) {
        deletes.push(`-D ${line.slice(3)}`);
      }
    } else if (line.startsWith('COMMIT')) {
      flush();
      table = '';
    }
  }
  flush();
  return out.length ? out.join('\n') + '\n' : '';
}

export async function applyRules(netnsPath: string, text: string): Promise<void> {
  await inNetns(netnsPath, ['iptables-restore', '-w', '--noflush'], text);
}

/** Every rule and chain of the pod in the namespace, from its live state. */
export async function savedRules(netnsPath: string): Promise<string> {
  return inNetns(netnsPath, ['iptables-save']);
}

/** Removes the pod's rules from the namespace; returns how many chains went. */
export async function removeRules(netnsPath: string, podId: string): Promise<number> {
  const text = removalRules(await savedRules(netnsPath), podId);
  if (text === '') return 0;
  await applyRules(netnsPath, text);
  return (text.match(/^-X /gm) ?? []).length;
}
