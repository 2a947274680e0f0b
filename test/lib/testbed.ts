// End-to-end tests share one test bed on the machine: each test file brings it up,
// runs, takes it down and checks that nothing was left (leaksSince).
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CriClient } from '../../src/cri/client';
import type { CriObject } from '../../src/cri/config';
import { leaksSince, snapshotHost, HostSnapshot } from '../../src/testbed/leaks';
import { REPO_ROOT, TESTBED } from '../../src/testbed/paths';
import { waitFor } from '../../src/testbed/proc';
import { down, up } from '../../src/testbed/testbed';

export interface Bed {
  cri: CriClient;
  before: HostSnapshot;
  logDir: string;
}

export async function startBed(): Promise<Bed> {
  const before = await snapshotHost();
  await up();
  const logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-e2e-logs-'));
  return { cri: CriClient.connect(TESTBED.endpoint, 60_000), before, logDir };
}

/** Takes the test bed down and returns what it left behind (empty when clean). */
export async function stopBed(bed: Bed): Promise<string[]> {
  bed.cri.close();
  await down();
  fs.rmSync(bed.logDir, { recursive: true, force: true });
  return leaksSince(bed.before, await snapshotHost());
}

/**
 * Removes every pod the test bed still has, ignoring errors: run after each test
 * so that one test failing half-way (its pods left running) does not fail the
 * next tests' leak checks too.
 */
export async function removeAllPods(cri: CriClient): Promise<void> {
  for (const pod of await cri.listPodSandbox().catch(() => [] as CriObject[])) {
    const id = pod.id as string;
    await cri.stopPodSandbox(id).catch(() => undefined);
    await cri.removePodSandbox(id).catch(() => undefined);
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
