// The netfilter rules of a split network namespace, as iptables-restore input.
// The text is libxpu's (src/xpu/rules.c: xpu_rules_*), the one implementation
// the node daemon uses too, so both make the same rules; these are its
// wrappers. Applying and removing run iptables-restore inside the half's
// namespace.
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
import * as os from 'node:os';
import { RULES_JUMPS, RULES_POD_IP_LOCAL, SIDES, errnoText, native, nativeText, portArray } from '../xpu/native';
import { inNetns } from './exec';

export const HOST_LINK_IP = '169.254.77.1';
export const DPU_LINK_IP = '169.254.77.2';
export const LINK_PREFIX = 30;
export const LINK_TAP = 'xpu0';

export type HalfSide = 'host' | 'dpu';

// The link's constants above are xpu.h's XPU_HOST_LINK_IP, XPU_DPU_LINK_IP,
// XPU_LINK_NET and XPU_LINK_TAP, which the rules text is made with
// (test/unit/xpu-rules.test.ts holds them to each other).

/** A libxpu text; what: the message's start should the library refuse. */
function libxpuText(what: string, call: (out: Buffer, outLen: number) => number, room?: number): string {
  const { rc, text } = nativeText(call, room);
  if (rc < 0) throw new Error(`${what}: ${errnoText(-rc)}`);
  return text;
}

/**
 * The pod's tag in chain names: the first 12 characters of a CRI sandbox id (as
 * `crictl pods` shows them), or of a hash for any other id. Chain names are at
 * most 28 characters; "HP-" + 12 + "-POSTROUTING" is 27.
 */
export function chainTag(podId: string): string {
  return libxpuText(`chain tag of pod ${podId}`, (out, len) => native().rulesChainTag(podId, out, len), 16);
}

export function chainName(podId: string, builtin: string): string {
  return libxpuText(`chain ${builtin} of pod ${podId}`, (out, len) => native().rulesChainName(podId, builtin, out, len), 64);
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
  const list = portArray(ports);
  const text = libxpuText('multiport lists', (out, len) => native().rulesMultiport(list, list.length, out, len));
  return text === '' ? [] : text.slice(0, -1).split('\n');
}

/**
 * The nat (and, on the host half, filter) rules of one half. With `jumps`, the
 * text also inserts the jumps from the built-in chains (first install only;
 * later updates rewrite our chains and leave the jumps in place).
 */
export function halfRules(r: RuleInput, opts: { jumps: boolean }): string {
  const what = `rules for the ${r.side} half of pod ${r.podId}`;
  const peer = portArray(r.peerPorts);
  const own = portArray(r.ownPodIpPorts ?? []);
  const input = {
    side: SIDES.indexOf(r.side),
    flags: (opts.jumps ? RULES_JUMPS : 0) | (r.podIpLocal ? RULES_POD_IP_LOCAL : 0),
    pod_id: r.podId,
    pod_ip: r.podIp ?? null,
    tap: r.tap ?? null,
    peer_ports: peer,
    own_pod_ip_ports: own,
    peer_ports_count: peer.length,
    own_pod_ip_ports_count: own.length,
  };
  const { rc, text } = nativeText((out, len) => native().rulesHalf(input, out, len), 4096);
  // EINVAL: the input makes no rules, and the text says why ("the pod IP is required").
  if (rc === -os.constants.errno.EINVAL) throw new Error(`${what}: ${text}`);
  if (rc < 0) throw new Error(`${what}: ${errnoText(-rc)}`);
  return text;
}

/**
 * From iptables-save output, the iptables-restore --noflush input that removes
 * every jump to the pod's chains and the chains themselves; '' when there is
 * nothing of the pod's. Rules of anyone else are not touched.
 */
export function removalRules(saved: string, podId: string): string {
  return libxpuText(`removal of the rules of pod ${podId}`, (out, len) => native().rulesRemoval(saved, podId, out, len), 4096);
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
