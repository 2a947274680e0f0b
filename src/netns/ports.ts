// Port ownership in a split network namespace: which half a TCP port belongs to.
// Pure functions only; the rules (rules.ts) and the halves (half.ts) are built
// on what these decide. The decisions are libxpu's (src/xpu/rules.c:
// xpu_ports_*), the one implementation the node daemon uses too; the functions
// below are its wrappers.
//
// Ownership, in order of precedence:
//  1. A port declared in `heteropod.io/ports` belongs to the DPU half, from
//     before its container starts, whether or not a host process also listens
//     on it (the declaration is the user's word; a host listener on that port
//     is reachable only from the host half's own sockets that bind it directly).
//  2. Otherwise a port belongs to the half in which a listening socket was seen.
//  3. Seen listening in both halves (a conflict, which one namespace could not
//     have): each half's localhost reaches its own listener, and the pod IP
//     reaches the host half, which is the pod's face to the network. Conflicts
//     are reported so that the shim can log them.
// A port nobody listens on stays in the half that dialled it and is refused
// there, as it would be in one namespace.

import { AnnotationError, checkNoWhitespace, PORTS, quoted } from '../placement/annotations';
import { RawPortView, errnoText, native, portArray } from '../xpu/native';

export { AnnotationError };
export const PORTS_ANNOTATION = PORTS;

/** Container name → ports it listens on, in the order given. */
export type DeclaredPorts = Map<string, number[]>;

// A Kubernetes container name is a DNS-1123 label.
const CONTAINER_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/**
 * Parses `heteropod.io/ports`: `container=port,port;container=port`, for
 * example `istio-proxy=15001,15006;log-agent=24224`, read exactly as written
 * (no spaces: the rule of src/placement/annotations.ts); an empty or absent
 * value declares nothing. When
 * `offloaded` (the containers `heteropod.io/offload` names) is given, every
 * container named here must be one of them: a port declared for a container
 * on the host would be routed to the wrong half.
 */
export function parsePortsAnnotation(value: string | undefined, offloaded?: readonly string[]): DeclaredPorts {
  const out: DeclaredPorts = new Map();
  if (value === undefined || value === '') return out;
  checkNoWhitespace(PORTS_ANNOTATION, value, 'istio-proxy=15001,15006;log-agent=24224');
  const bad = (reason: string): never => {
    throw new AnnotationError(PORTS_ANNOTATION, value, reason);
  };
  const owner = new Map<number, string>();
  const entries = value.split(';');
  for (const [i, entry] of entries.entries()) {
    if (entry === '') {
      if (i === entries.length - 1) continue; // a trailing ";" is harmless
      bad('empty entry between ";" separators (expected container=port,port;container=port)');
    }
    const eq = entry.indexOf('=');
    if (eq < 0) bad(`entry ${quoted(entry)} has no "=" (expected container=port,port)`);
    const name = entry.slice(0, eq);
    if (!CONTAINER_NAME.test(name) || name.length > 63) bad(`${quoted(name)} is not a container name (a DNS-1123 label)`);
    if (out.has(name)) bad(`container "${name}" is listed twice`);
    if (offloaded && !offloaded.includes(name)) {
      bad(`container "${name}" is not offloaded (heteropod.io/offload names: ${offloaded.join(',') || 'none'})`);
    }
    const portsText = entry.slice(eq + 1);
    if (portsText === '') bad(`container "${name}" has no ports`);
    const ports: number[] = [];
    for (const p of portsText.split(',')) {
      if (!/^[0-9]{1,5}$/.test(p) || Number(p) < 1 || Number(p) > 65535) {
        bad(`${quoted(p)} (container "${name}") is not a port number in 1-65535`);
      }
      const port = Number(p);
      const prev = owner.get(port);
      if (prev !== undefined) {
        bad(prev === name ? `port ${port} is listed twice for container "${name}"` : `port ${port} is claimed by both "${prev}" and "${name}"`);
      }
      owner.set(port, name);
      ports.push(port);
    }
    out.set(name, ports);
  }
  return out;
}

/** Every declared port, sorted: the DPU half's ports from before start. */
export function declaredPortList(declared: DeclaredPorts): number[] {
  return sortedPorts([...declared.values()].flat());
}

/** The ports, each once, in ascending order. */
export function sortedPorts(ports: Iterable<number>): number[] {
  const list = portArray(ports);
  return portsResult('sorted ports', list.length, (out) => native().portsSorted(list, list.length, out, out.length));
}

/** What one half knows: the declaration, and the listeners seen in each half. */
export interface PortView {
  declaredDpu: readonly number[];
  hostListening: readonly number[];
  dpuListening: readonly number[];
}

// A port list of libxpu; room: as many as it can hold (no more than its input).
function portsResult(what: string, room: number, call: (out: Uint16Array) => number): number[] {
  const out = new Uint16Array(room);
  const n = call(out);
  if (n < 0) throw new Error(`${what}: ${errnoText(-n)}`);
  if (n > room) throw new Error(`${what}: libxpu found ${n} ports in ${room}`);
  return Array.from(out.subarray(0, n));
}

function ownership(what: string, v: PortView, fn: (raw: RawPortView, out: Uint16Array, max: number) => number): number[] {
  const declared = portArray(v.declaredDpu);
  const host = portArray(v.hostListening);
  const dpu = portArray(v.dpuListening);
  const raw: RawPortView = {
    declared_dpu: declared,
    host_listening: host,
    dpu_listening: dpu,
    declared_dpu_count: declared.length,
    host_listening_count: host.length,
    dpu_listening_count: dpu.length,
  };
  return portsResult(what, declared.length + host.length + dpu.length, (out) => fn(raw, out, out.length));
}

/**
 * Ports the DPU half serves, seen from the host half: traffic for them to
 * 127.0.0.1 or to the pod IP crosses to the DPU half.
 */
export function dpuOwnedPorts(v: PortView): number[] {
  return ownership('DPU-owned ports', v, (raw, out, max) => native().portsDpuOwned(raw, out, max));
}

/**
 * Ports the host half serves, seen from the DPU half: the DPU half's traffic for
 * them to 127.0.0.1 crosses to the host half. (Its traffic to the pod IP goes to
 * the host half anyway, by its default route.)
 */
export function hostOwnedPorts(v: PortView): number[] {
  return ownership('host-owned ports', v, (raw, out, max) => native().portsHostOwned(raw, out, max));
}

/** Ports seen listening in both halves (rule 3 above). */
export function conflictingPorts(v: PortView): number[] {
  return ownership('conflicting ports', v, (raw, out, max) => native().portsConflicting(raw, out, max));
}
