// heteropod-netns-cleanup: the OCI hook (poststop, on the pod sandbox) that
// removes a pod's split-network leftovers when the shim could not: netfilter
// chains in the pod's namespace and the XPU window. The shim injects it into
// the sandbox spec; runc runs it with the container's state (JSON) on stdin.
//
//   heteropod-netns-cleanup                          # OCI hook: state on stdin
//   heteropod-netns-cleanup --pod ID [--netns PATH]  # by hand
//
// From the state: the pod id is the CRI sandbox id annotation (or the
// container id: the sandbox container's id is the pod's), and the namespace is
// the network namespace path in the bundle's config.json. Exit status 0 when
// everything it found was removed (also when there was nothing), 1 otherwise.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cleanupPod, CleanupTarget } from './cleanup';

/** The hook program, in this checkout (dist/src/netns → hooks/). */
export const CLEANUP_HOOK = path.resolve(__dirname, '../../../hooks/heteropod-netns-cleanup');

export interface OciHook {
  path: string;
  args?: string[];
  env?: string[];
  timeout?: number;
}

/**
 * The poststop hook the shim puts in an offloading pod's sandbox spec. runc runs
 * it with an environment of the hook's own: PATH must find node (the program's
 * interpreter, found by /usr/bin/env) and the node's ip, nsenter and iptables.
 */
export function cleanupHook(nodeBinary = process.execPath): OciHook {
  const dirs = [path.dirname(nodeBinary), '/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];
  return { path: CLEANUP_HOOK, args: [path.basename(CLEANUP_HOOK)], env: [`PATH=${[...new Set(dirs)].join(':')}`], timeout: 30 };
}

/** The spec with the clean-up hook added to its poststop hooks (once: a spec that has it is returned as is). */
export function withCleanupHook<S extends { hooks?: { poststop?: OciHook[] } }>(spec: S, hook: OciHook = cleanupHook()): S {
  const poststop = spec.hooks?.poststop ?? [];
  if (poststop.some((h) => h.path === hook.path)) return spec;
  return { ...spec, hooks: { ...spec.hooks, poststop: [...poststop, hook] } };
}

const USAGE = 'usage: heteropod-netns-cleanup [--pod ID [--netns PATH]]  (no arguments: OCI state on stdin)';

interface OciState {
  id?: string;
  bundle?: string;
  annotations?: Record<string, string>;
}

interface OciSpec {
  linux?: { namespaces?: Array<{ type?: string; path?: string }> };
}

/** The pod and its namespace from the OCI state runc gives a hook. */
export function targetFromState(stateJson: string, readFile = (p: string) => fs.readFileSync(p, 'utf8')): CleanupTarget {
  let state: OciState;
  try {
    state = JSON.parse(stateJson) as OciState;
  } catch (err) {
    throw new Error(`OCI state on stdin is not JSON: ${(err as Error).message}`);
  }
  const podId = state.annotations?.['io.kubernetes.cri.sandbox-id'] ?? state.id;
  if (!podId) throw new Error('OCI state on stdin has no id');
  let netnsPath: string | undefined;
  if (state.bundle) {
    const configPath = path.join(state.bundle, 'config.json');
    try {
      const spec = JSON.parse(readFile(configPath)) as OciSpec;
      netnsPath = spec.linux?.namespaces?.find((n) => n.type === 'network')?.path || undefined;
    } catch {
      // no spec to read: the window is still removed
    }
  }
  return { podId, netnsPath };
}

export function parseArgs(argv: string[]): CleanupTarget | null {
  if (argv.length === 0) return null;
  const t: Partial<CleanupTarget> = {};
  for (let i = 0; i < argv.length; i++) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if ((flag === '--pod' || flag === '--netns') && value !== undefined) {
      if (flag === '--pod') t.podId = value;
      else t.netnsPath = value;
      i++;
    } else {
      throw new Error(`unexpected argument "${flag}"\n${USAGE}`);
    }
  }
  if (!t.podId) throw new Error(`--pod is required\n${USAGE}`);
  return t as CleanupTarget;
}

export async function main(argv: string[]): Promise<number> {
  try {
    const target = parseArgs(argv) ?? targetFromState(fs.readFileSync(0, 'utf8'));
    for (const line of await cleanupPod(target)) process.stderr.write(`heteropod-netns-cleanup: ${line}\n`);
    return 0;
  } catch (err) {
    process.stderr.write(`heteropod-netns-cleanup: ${(err as Error).message}\n`);
    return 1;
  }
}

if (require.main === module) {
  void main(process.argv.slice(2)).then((code) => process.exit(code));
}
