// The DPU's network namespace and its management link. As on a BlueField, the
// only way in is tmfifo_net0: a veth pair whose host end keeps the name and whose
// other end is made under a temporary name (two links cannot share a name in one
// namespace), moved into the DPU namespace and renamed there.
import * as fs from 'node:fs';
import { run } from '../testbed/proc';
import { DPU } from './paths';

const HOST_CIDR = `${DPU.hostAddress}/${DPU.prefixLength}`;
const DPU_CIDR = `${DPU.dpuAddress}/${DPU.prefixLength}`;

async function ip(args: string[]): Promise<string> {
  return (await run('ip', args)).stdout;
}

/** True when the namespace, both ends of the link, their addresses and lo are as `createNetwork` leaves them. */
export async function networkReady(): Promise<boolean> {
  if (!fs.existsSync(DPU.netnsFile)) return false;
  const host = await run('ip', ['-o', 'addr', 'show', 'dev', DPU.link], { allowFail: true });
  const inside = await run('ip', ['-n', DPU.netns, '-o', 'addr', 'show', 'dev', DPU.link], { allowFail: true });
  const lo = await run('ip', ['-n', DPU.netns, '-o', 'link', 'show', 'dev', 'lo'], { allowFail: true });
  return host.code === 0 && host.stdout.includes(`inet ${HOST_CIDR}`) && inside.code === 0 && inside.stdout.includes(`inet ${DPU_CIDR}`) && /[<,]UP[,>]/.test(lo.stdout);
}

export async function createNetwork(): Promise<void> {
  const step = async (what: string, args: string[]) => {
    try {
      await ip(args);
    } catch (err) {
      throw new Error(`make the DPU network: ${what}: ${(err as Error).message}`);
    }
  };
  await step('create namespace', ['netns', 'add', DPU.netns]);
  await step('create management link', ['link', 'add', DPU.link, 'type', 'veth', 'peer', 'name', DPU.linkPeerTemp]);
  await step('move the DPU end', ['link', 'set', DPU.linkPeerTemp, 'netns', DPU.netns]);
  await step('rename the DPU end', ['-n', DPU.netns, 'link', 'set', DPU.linkPeerTemp, 'name', DPU.link]);
  await step('host address', ['addr', 'add', HOST_CIDR, 'dev', DPU.link]);
  await step('host link up', ['link', 'set', DPU.link, 'up']);
  await step('DPU address', ['-n', DPU.netns, 'addr', 'add', DPU_CIDR, 'dev', DPU.link]);
  await step('DPU link up', ['-n', DPU.netns, 'link', 'set', DPU.link, 'up']);
  await step('DPU loopback up', ['-n', DPU.netns, 'link', 'set', 'lo', 'up']);
  // No default route inside: the DPU reaches only 192.168.100.0/30.
}

/** Removes whatever of the network exists; never fails on what is already gone. */
export async function removeNetwork(): Promise<string[]> {
  const removed: string[] = [];
  for (const name of [DPU.link, DPU.linkPeerTemp]) {
    if ((await run('ip', ['link', 'del', name], { allowFail: true })).code === 0) removed.push(`link ${name}`);
  }
  if (fs.existsSync(DPU.netnsFile)) {
    await ip(['netns', 'del', DPU.netns]);
    removed.push(`netns ${DPU.netns}`);
  }
  return removed;
}
