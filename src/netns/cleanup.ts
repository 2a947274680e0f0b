// Removal of what a pod's host half leaves when its shim dies without closing
// it: the netfilter chains in the pod's namespace (if the namespace still
// exists) and the pod's XPU window. The TAP device needs nothing: it is not
// persistent and went with the shim's file descriptor; it is deleted here only
// in case something else still holds it. Idempotent: a second run, or a run
// after a clean close, finds nothing and succeeds.
import * as fs from 'node:fs';
import { removeWindow } from '../xpu/window';
import { inNetns, isNetns } from './exec';
import { podWindowPath } from './half';
import { LINK_TAP, removeRules } from './rules';

export interface CleanupTarget {
  podId: string;
  /** The pod's (host half's) network namespace, when known and still there. */
  netnsPath?: string;
}

/** Removes the pod's leftovers; returns one line per thing removed. */
export async function cleanupPod(t: CleanupTarget): Promise<string[]> {
  const done: string[] = [];
  const file = podWindowPath(t.podId);
  const failed: string[] = [];
  let rulesLeft = false;
  if (t.netnsPath && isNetns(t.netnsPath)) {
    try {
      const chains = await removeRules(t.netnsPath, t.podId);
      if (chains > 0) done.push(`removed ${chains} netfilter chains of pod ${t.podId} in ${t.netnsPath}`);
    } catch (err) {
      rulesLeft = true;
      failed.push((err as Error).message);
    }
    const links = await inNetns(t.netnsPath, ['ip', '-o', 'link', 'show', 'dev', LINK_TAP]).catch(() => '');
    if (links.includes(`${LINK_TAP}:`)) {
      try {
        await inNetns(t.netnsPath, ['ip', 'link', 'del', 'dev', LINK_TAP]);
        done.push(`removed device ${LINK_TAP} in ${t.netnsPath}`);
      } catch (err) {
        failed.push((err as Error).message);
      }
    }
  }
  // The window outlives the rules: the pod's next open looks for rules only when it finds one.
  if (!rulesLeft && fs.existsSync(file)) {
    removeWindow(file);
    done.push(`removed XPU window ${file}`);
  }
  if (failed.length) throw new Error(`clean up the network of pod ${t.podId}: ${failed.join('; ')}`);
  return done;
}
