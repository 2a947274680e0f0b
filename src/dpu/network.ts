// The emulated node's wiring, as on a BlueField in DPU mode:
//
//   fabric (hp-fabric)          DPU (hp-dpu)                          host
//   node0 10.233.100.1 ── wire ── p0 10.233.100.2
//                                 pf0hpf 10.233.101.2 ── PF link ── hp-pf0 10.233.101.1
//                                 tmfifo_net0 192.168.100.2 ── mgmt ── tmfifo_net0 192.168.100.1
//
// The DPU owns the uplink: the fabric routes the pod network to the node through
// p0, the DPU forwards between p0 and the host's PF, and the host reaches the
// fabric only through the DPU. The management link is the only way to the agent.
// Each link is a veth pair; its DPU (or fabric) end is made in the host under a
// temporary name, moved into its namespace and renamed there (two links cannot
// share a name in one namespace). Every receiving end does its packet work on
// its own side's CPUs (napi.ts).
import * as fs from 'node:fs';
import { run } from '../testbed/proc';
import { recordReceiveThreads, ReceiveThread, threadReceive } from './napi';
import { DPU } from './paths';

const HOST_CIDR = `${DPU.hostAddress}/${DPU.prefixLength}`;
const DPU_CIDR = `${DPU.dpuAddress}/${DPU.prefixLength}`;
const { uplink: UP, pf: PF } = DPU;
const FABRIC_NET = `${UP.fabricAddress.replace(/\.\d+$/, '.0')}/${UP.prefixLength}`;
const PF_NET = `${PF.hostAddress.replace(/\.\d+$/, '.0')}/${PF.prefixLength}`;

export interface NetworkOptions {
  /** the pod network (CIDR) that the fabric routes to this node */
  podCidr: string;
  hostCpus: number[];
  dpuCpus: number[];
}

async function ip(args: string[]): Promise<{ code: number; stdout: string }> {
  return run('ip', args, { allowFail: true });
}

async function hasAddress(netns: string, dev: string, cidr: string): Promise<boolean> {
  const r = await ip([...(netns ? ['-n', netns] : []), '-o', 'addr', 'show', 'dev', dev]);
  return r.code === 0 && r.stdout.includes(`inet ${cidr}`);
}

/** True when every namespace, link, address and route is as `createNetwork` leaves them. */
export async function networkReady(podCidr: string): Promise<boolean> {
  if (!fs.existsSync(DPU.netnsFile) || !fs.existsSync(UP.fabricNetnsFile)) return false;
  const lo = await ip(['-n', DPU.netns, '-o', 'link', 'show', 'dev', 'lo']);
  const fabricRoute = await ip(['-n', UP.fabricNetns, 'route', 'show', podCidr]);
  const hostRoute = await ip(['route', 'show', FABRIC_NET]);
  return (
    (await hasAddress('', DPU.link, HOST_CIDR)) &&
    (await hasAddress(DPU.netns, DPU.link, DPU_CIDR)) &&
    (await hasAddress(DPU.netns, UP.dev, `${UP.address}/${UP.prefixLength}`)) &&
    (await hasAddress(DPU.netns, PF.dpuDev, `${PF.dpuAddress}/${PF.prefixLength}`)) &&
    (await hasAddress(UP.fabricNetns, UP.fabricDev, `${UP.fabricAddress}/${UP.prefixLength}`)) &&
    (await hasAddress('', PF.hostDev, `${PF.hostAddress}/${PF.prefixLength}`)) &&
    /[<,]UP[,>]/.test(lo.stdout) &&
    fabricRoute.stdout.includes(`via ${UP.address}`) &&
    hostRoute.stdout.includes(`via ${PF.dpuAddress}`)
  );
}

export async function createNetwork(o: NetworkOptions): Promise<void> {
  const step = async (what: string, args: string[]) => {
    const r = await run('ip', args, { allowFail: true });
    if (r.code !== 0) throw new Error(`make the DPU network: ${what}: ip ${args.join(' ')}: ${r.stderr.trim()}`);
  };
  const sysctl = async (what: string, netns: string, kv: string) => {
    const argv = [...(netns ? ['ip', 'netns', 'exec', netns] : []), 'sysctl', '-q', '-w', kv];
    const r = await run(argv[0], argv.slice(1), { allowFail: true });
    if (r.code !== 0) throw new Error(`make the DPU network: ${what}: ${kv}: ${r.stderr.trim()}`);
  };
  /** A veth pair whose far end lands in `netns` under `name`. */
  const wire = async (what: string, near: string, far: string, farTemp: string, netns: string) => {
    await step(`${what}: create`, ['link', 'add', near, 'type', 'veth', 'peer', 'name', farTemp]);
    await step(`${what}: move ${far}`, ['link', 'set', farTemp, 'netns', netns]);
    await step(`${what}: name ${far}`, ['-n', netns, 'link', 'set', farTemp, 'name', far]);
  };

  await step('create namespace', ['netns', 'add', DPU.netns]);
  await step('create the fabric namespace', ['netns', 'add', UP.fabricNetns]);

  // Management link: host <-> DPU.
  await wire('management link', DPU.link, DPU.link, DPU.linkPeerTemp, DPU.netns);
  await step('host address', ['addr', 'add', HOST_CIDR, 'dev', DPU.link]);
  await step('host link up', ['link', 'set', DPU.link, 'up']);
  await step('DPU address', ['-n', DPU.netns, 'addr', 'add', DPU_CIDR, 'dev', DPU.link]);
  await step('DPU link up', ['-n', DPU.netns, 'link', 'set', DPU.link, 'up']);
  await step('DPU loopback up', ['-n', DPU.netns, 'link', 'set', 'lo', 'up']);

  // Uplink: DPU p0 <-> fabric node0. The veth is made in the host and both ends moved.
  await step('uplink: create', ['link', 'add', UP.fabricDevTemp, 'type', 'veth', 'peer', 'name', `${UP.fabricDevTemp}p`]);
  await step('uplink: move p0', ['link', 'set', `${UP.fabricDevTemp}p`, 'netns', DPU.netns]);
  await step('uplink: name p0', ['-n', DPU.netns, 'link', 'set', `${UP.fabricDevTemp}p`, 'name', UP.dev]);
  await step('uplink: move the fabric end', ['link', 'set', UP.fabricDevTemp, 'netns', UP.fabricNetns]);
  await step('uplink: name the fabric end', ['-n', UP.fabricNetns, 'link', 'set', UP.fabricDevTemp, 'name', UP.fabricDev]);
  await step('uplink: DPU address', ['-n', DPU.netns, 'addr', 'add', `${UP.address}/${UP.prefixLength}`, 'dev', UP.dev]);
  await step('uplink: DPU end up', ['-n', DPU.netns, 'link', 'set', UP.dev, 'up']);
  await step('uplink: fabric address', ['-n', UP.fabricNetns, 'addr', 'add', `${UP.fabricAddress}/${UP.prefixLength}`, 'dev', UP.fabricDev]);
  await step('uplink: fabric end up', ['-n', UP.fabricNetns, 'link', 'set', UP.fabricDev, 'up']);
  await step('fabric loopback up', ['-n', UP.fabricNetns, 'link', 'set', 'lo', 'up']);

  // The host's PF: host hp-pf0 <-> DPU pf0hpf.
  await wire('PF link', PF.hostDev, PF.dpuDev, PF.dpuDevTemp, DPU.netns);
  await step('PF: host address', ['addr', 'add', `${PF.hostAddress}/${PF.prefixLength}`, 'dev', PF.hostDev]);
  await step('PF: host end up', ['link', 'set', PF.hostDev, 'up']);
  await step('PF: representor address', ['-n', DPU.netns, 'addr', 'add', `${PF.dpuAddress}/${PF.prefixLength}`, 'dev', PF.dpuDev]);
  await step('PF: representor up', ['-n', DPU.netns, 'link', 'set', PF.dpuDev, 'up']);

  // Routing. The fabric reaches the node (its pods and its PF) through p0; the
  // DPU hands the pod network to the host's PF; the host reaches the fabric
  // through its PF (a route for the fabric's network only: the machine's own
  // default route is not ours to change).
  await step('fabric: route to the pod network', ['-n', UP.fabricNetns, 'route', 'add', o.podCidr, 'via', UP.address]);
  await step('fabric: route to the host PF', ['-n', UP.fabricNetns, 'route', 'add', PF_NET, 'via', UP.address]);
  await step('DPU: route to the pod network', ['-n', DPU.netns, 'route', 'add', o.podCidr, 'via', PF.hostAddress, 'dev', PF.dpuDev]);
  await step('host: route to the fabric', ['route', 'add', FABRIC_NET, 'via', PF.dpuAddress, 'dev', PF.hostDev]);
  await sysctl('DPU forwards', DPU.netns, 'net.ipv4.ip_forward=1');
  // The host forwards between its pods' bridge and its PF (CNI's bridge turns
  // forwarding on for the bridge; the PF is ours).
  await sysctl('host PF forwards', '', `net.ipv4.conf.${PF.hostDev}.forwarding=1`);

  // The emulated wires carry IPv4 only: no IPv6 autoconfiguration chatter on
  // links whose packet counters say what crossed them.
  for (const [netns, dev] of [['', PF.hostDev], [DPU.netns, PF.dpuDev], [DPU.netns, UP.dev], [UP.fabricNetns, UP.fabricDev], ['', DPU.link], [DPU.netns, DPU.link]]) {
    await sysctl('IPv4 only', netns, `net.ipv6.conf.${dev}.disable_ipv6=1`);
  }

  const threads: ReceiveThread[] = [];
  threads.push(await threadReceive('', DPU.link, 'host', o.hostCpus));
  threads.push(await threadReceive(DPU.netns, DPU.link, 'dpu', o.dpuCpus));
  threads.push(await threadReceive(DPU.netns, UP.dev, 'dpu', o.dpuCpus));
  threads.push(await threadReceive(DPU.netns, PF.dpuDev, 'dpu', o.dpuCpus));
  threads.push(await threadReceive('', PF.hostDev, 'host', o.hostCpus));
  // The fabric's clients are not the node; on this machine they share the
  // host's CPUs, and a benchmark subtracts this thread's time with theirs.
  threads.push(await threadReceive(UP.fabricNetns, UP.fabricDev, 'fabric', o.hostCpus));
  recordReceiveThreads(threads);
}

/** Removes whatever of the network exists; never fails on what is already gone. */
export async function removeNetwork(): Promise<string[]> {
  const removed: string[] = [];
  // Deleting one end of a veth deletes the pair, and its routes with it.
  for (const name of [DPU.link, DPU.linkPeerTemp, PF.hostDev, PF.dpuDevTemp, UP.fabricDevTemp, `${UP.fabricDevTemp}p`]) {
    if ((await ip(['link', 'del', name])).code === 0) removed.push(`link ${name}`);
  }
  for (const [name, file] of [
    [DPU.netns, DPU.netnsFile],
    [UP.fabricNetns, UP.fabricNetnsFile],
  ]) {
    if (!fs.existsSync(file)) continue;
    const r = await run('ip', ['netns', 'del', name], { allowFail: true });
    if (r.code !== 0) throw new Error(`remove netns ${name}: ${r.stderr.trim()}`);
    removed.push(`netns ${name}`);
  }
  return removed;
}

export interface WireEnd {
  /** where the end is: the host, the DPU or the fabric */
  side: 'host' | 'dpu' | 'fabric';
  netns: string;
  dev: string;
  address?: string;
  up: boolean;
  rxPackets: number;
  txPackets: number;
}

export interface Wire {
  name: 'management' | 'uplink' | 'PF';
  ends: [WireEnd, WireEnd];
}

async function wireEnd(side: WireEnd['side'], netns: string, dev: string): Promise<WireEnd> {
  const r = await ip([...(netns ? ['-n', netns] : []), '-s', '-j', 'addr', 'show', 'dev', dev]);
  if (r.code !== 0) return { side, netns, dev, up: false, rxPackets: 0, txPackets: 0 };
  const [d] = JSON.parse(r.stdout) as { operstate: string; flags: string[]; addr_info?: { family: string; local: string; prefixlen: number }[]; stats64?: { rx: { packets: number }; tx: { packets: number } } }[];
  const v4 = d.addr_info?.find((a) => a.family === 'inet');
  return {
    side,
    netns,
    dev,
    address: v4 ? `${v4.local}/${v4.prefixlen}` : undefined,
    up: d.flags.includes('LOWER_UP'),
    rxPackets: d.stats64?.rx.packets ?? 0,
    txPackets: d.stats64?.tx.packets ?? 0,
  };
}

/** The node's three wires as they are now, with each end's packet counters. */
export async function wires(): Promise<Wire[]> {
  return [
    { name: 'uplink', ends: [await wireEnd('fabric', UP.fabricNetns, UP.fabricDev), await wireEnd('dpu', DPU.netns, UP.dev)] },
    { name: 'PF', ends: [await wireEnd('dpu', DPU.netns, PF.dpuDev), await wireEnd('host', '', PF.hostDev)] },
    { name: 'management', ends: [await wireEnd('dpu', DPU.netns, DPU.link), await wireEnd('host', '', DPU.link)] },
  ];
}

/** `dpu status` / `local status` lines for the wires. */
export function formatWires(ws: Wire[]): string[] {
  const end = (e: WireEnd) => `${e.side} ${e.dev}${e.netns ? ` (${e.netns})` : ''} ${e.address ?? '-'}${e.up ? '' : ' DOWN'}`;
  return ws.map((w) => `  ${`${w.name} wire`.padEnd(17)}${end(w.ends[0])} <-> ${end(w.ends[1])}, packets ${w.ends[1].rxPackets} in / ${w.ends[1].txPackets} out at ${w.ends[1].dev}`);
}
