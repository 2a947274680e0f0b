// End-to-end tests share one test bed on the machine. A test file starts with
// startBed() and ends with stopBed(), in one of two ways:
// - the test bed is down (a fresh machine, or CI): it is brought up, the tests run,
//   it is taken down, and the leak check (leaksSince) finds nothing left;
// - the test bed is already up (a user's, e.g. after `make demo`): it is used as
//   it is and left up, with the user's pods untouched. The tests remove only the
//   pods they made (any pod absent at the start), and the leak check still holds:
//   the snapshot is taken before the tests, so the user's test bed and pods are in
//   it, and whatever the tests made must be gone.
import { execFile } from 'node:child_process';
import type { Test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CriClient } from '../../src/cri/client';
import type { CriObject } from '../../src/cri/config';
import * as dpu from '../../src/dpu/dpu';
import { leaksSince, snapshotHost, HostSnapshot } from '../../src/testbed/leaks';
import { REPO_ROOT, TESTBED } from '../../src/testbed/paths';
import { pidAlive, waitFor } from '../../src/testbed/proc';
import { down, nodeDaemonPids, status, up } from '../../src/testbed/testbed';
import { dpuLeaks, settleDpuLeaks } from './dpu';
import { settleAndCheckLeaks, shimLeaks } from './shim';

export interface Bed {
  cri: CriClient;
  before: HostSnapshot;
  logDir: string;
  /** The test bed was up before the tests (a user's): it is left up, and the pods in userPods are never touched. */
  wasUp: boolean;
  /** Pods that existed when the tests started: the user's. */
  userPods: Set<string>;
  /**
   * What the user's pods hold, as the leak checks of shims (test/lib/shim.ts) and
   * of the DPU (test/lib/dpu.ts) list it: passed to those checks as theirs.
   */
  preexisting: { shims: string[]; dpu: string[] };
  /** The emulated DPU was running before the tests (only asked when the test bed was up). */
  dpuWasUp: boolean;
  /** Set by the first stopBed(): a second call returns its result. */
  stopped?: Promise<string[]>;
}

/**
 * A test file's hooks on the shared test bed: up before its tests (`ready` gets
 * it), the tests' pods removed after each test, and after all the bed left as it
 * was found, with nothing of the tests left on it.
 */
export function useTestBed(suite: Test, ready: (bed: Bed) => void): void {
  let bed: Bed;
  suite.before(async () => {
    bed = await startBed();
    ready(bed);
  });
  suite.after.each(() => removeOwnPods(bed));
  suite.after(async () => {
    const leaks = await stopBed(bed);
    assert.equal(leaks, [], `the test bed left:\n${leaks.join('\n')}`);
  });
}

/** Fails when the tests' pods left anything on the host or the DPU (podLeaks). */
export async function assertNoPodLeaks(bed: Bed, when: string): Promise<void> {
  const left = await podLeaks(bed);
  assert.equal(left, [], `${when} left behind:\n${left.join('\n')}`);
}

/** Whether the test bed answers, and if so its pods: the state the tests found. */
export async function bedState(): Promise<{ up: boolean; pods: CriObject[] }> {
  if (!(await status().catch(() => ({ running: false }))).running) return { up: false, pods: [] };
  const cri = CriClient.connect(TESTBED.endpoint, 10_000);
  try {
    return { up: true, pods: await cri.listPodSandbox() };
  } finally {
    cri.close();
  }
}

export async function startBed(): Promise<Bed> {
  const before = await snapshotHost();
  const found = await bedState();
  const dpuWasUp = found.up && dpu.agentPid() !== undefined;
  if (found.up) {
    console.log(`test bed already up with ${found.pods.length} pod(s) of yours: using it, leaving it and them running`);
  }
  await up();
  const logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-e2e-logs-'));
  const preexisting = found.up ? { shims: await shimLeaks(), dpu: await dpuLeaks() } : { shims: [], dpu: [] };
  return {
    cri: CriClient.connect(TESTBED.endpoint, 60_000),
    before,
    logDir,
    wasUp: found.up,
    userPods: new Set(found.pods.map((p) => p.id as string)),
    preexisting,
    dpuWasUp,
  };
}

/**
 * Ends a test file's use of the test bed and returns what the tests left behind
 * (empty when clean). A test bed that was down is taken down; one that was up
 * (a user's) stays up, with the user's pods, and loses only the tests' pods.
 */
export function stopBed(bed: Bed): Promise<string[]> {
  bed.stopped ??= bed.wasUp ? leaveBed(bed) : takeDown(bed);
  return bed.stopped;
}

/**
 * Things other tests make carry an hpx-<test> tag (network namespaces, XPU
 * windows: netns-split, xpu-link, the benchmarks, which other checkouts run on the
 * same machine without the test bed's lock); those are theirs to check.
 */
export const othersTests = (leak: string): boolean => /hpx-/.test(leak);

async function takeDown(bed: Bed): Promise<string[]> {
  bed.cri.close();
  await down();
  fs.rmSync(bed.logDir, { recursive: true, force: true });
  return leaksSince(bed.before, await snapshotHost()).filter((l) => !othersTests(l));
}

async function leaveBed(bed: Bed): Promise<string[]> {
  await removeOwnPods(bed);
  const left = [...(await settleAndCheckLeaks(bed.preexisting.shims)), ...(await settleDpuLeaks(bed.preexisting.dpu))];
  bed.cri.close();
  if (!bed.dpuWasUp) await dpu.down();
  fs.rmSync(bed.logDir, { recursive: true, force: true });
  // The test bed's own daemons are the user's even when a test restarted one
  // (containerd, the DPU agent, the node daemon): a new pid of theirs is not a
  // leak. Nor is the pod network's bridge, which CNI makes at the bed's first pod.
  const daemons = [readPid(TESTBED.pidFile), dpu.agentPid(), ...nodeDaemonPids()].filter((pid) => pid !== undefined);
  const theirs = (l: string) => daemons.some((pid) => l.startsWith(`processes: ${pid} `)) || l === `links: ${TESTBED.cniBridge}` || othersTests(l);
  // Pods go away through CRI, asynchronously for some of what they hold (network
  // namespaces, mounts): wait a little for the host to settle.
  const hostLeaks = async () => leaksSince(bed.before, await snapshotHost()).filter((l) => !theirs(l));
  await waitFor('the host to be as before the tests', 10_000, async () => (await hostLeaks()).length === 0).catch(() => undefined);
  return [...left, ...(await hostLeaks())];
}

function readPid(file: string): number | undefined {
  try {
    const pid = Number(fs.readFileSync(file, 'utf8').trim());
    return pid > 0 && pidAlive(pid) ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * What the tests' pods left on the host (shims, their sockets and state) and on
 * the DPU, once both have settled; the user's pods' are not counted.
 */
export async function podLeaks(bed: Bed): Promise<string[]> {
  return [...(await settleAndCheckLeaks(bed.preexisting.shims)), ...(await settleDpuLeaks(bed.preexisting.dpu))];
}

/** The pods the tests made: every pod of the test bed but the user's. */
export async function ownPods(bed: Bed): Promise<CriObject[]> {
  return (await bed.cri.listPodSandbox()).filter((p) => !bed.userPods.has(p.id as string));
}

/**
 * Removes every pod the tests made, ignoring errors: run after each test so that
 * one test failing half-way (its pods left running) does not fail the next tests'
 * leak checks too. The user's pods (those present before the tests) stay.
 */
export async function removeOwnPods(bed: Bed): Promise<void> {
  for (const pod of await ownPods(bed).catch(() => [] as CriObject[])) {
    const id = pod.id as string;
    await bed.cri.stopPodSandbox(id).catch(() => undefined);
    await bed.cri.removePodSandbox(id).catch(() => undefined);
  }
}

let podCounter = 0;

export function podConfig(bed: Bed, name: string, extra: CriObject = {}): CriObject {
  podCounter++;
  return {
    metadata: { name, namespace: 'e2e', uid: `${name}-${process.pid}-${podCounter}`, attempt: 0 },
    log_directory: path.join(bed.logDir, `${name}-${podCounter}`),
    linux: {},
    ...extra,
  };
}

export function containerConfig(name: string, command: string[], extra: CriObject = {}): CriObject {
  return {
    metadata: { name, attempt: 0 },
    image: { image: 'heteropod.local/busybox:1' },
    command,
    log_path: `${name}.log`,
    linux: {},
    ...extra,
  };
}

export async function waitForContainerState(cri: CriClient, id: string, state: string, timeoutMs = 30_000): Promise<CriObject> {
  return waitFor(`container ${id.slice(0, 13)} to be ${state}`, timeoutMs, async () => {
    const s = (await cri.containerStatus(id)).status as CriObject;
    return s.state === state ? s : undefined;
  });
}

/** Runs the `heteropod` command as a user would, pointed at the test bed. */
export function heteropod(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const env = { ...process.env, CONTAINER_RUNTIME_ENDPOINT: TESTBED.endpoint };
    execFile(path.join(REPO_ROOT, 'bin', 'heteropod'), args, { env }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as NodeJS.ErrnoException).code ?? 1) : 0, stdout, stderr });
    });
  });
}
