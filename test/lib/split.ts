// Pods with a split network on the test bed: containers that serve a page saying
// where they run, and fetches from inside a container.
import type { CriClient } from '../../src/cri/client';
import type { CriObject } from '../../src/cri/config';
import { containerConfig, waitForContainerState } from './testbed';

export const OWN_PID_NAMESPACE = { security_context: { namespace_options: { pid: 'CONTAINER' } } };

/** busybox httpd in the foreground, serving one page (`page`) on `port`. */
export const httpd = (page: string, port: number) => ['sh', '-c', `mkdir -p /www && echo ${page} > /www/index.html && exec httpd -f -p ${port} -h /www`];

/** Creates and starts a container of the pod; its id once it runs. */
export async function runContainer(cri: CriClient, podId: string, pod: CriObject, name: string, command: string[]): Promise<string> {
  const id = await cri.createContainer(podId, containerConfig(name, command, { linux: OWN_PID_NAMESPACE }), pod);
  await cri.startContainer(id);
  await waitForContainerState(cri, id, 'CONTAINER_RUNNING');
  return id;
}

/** wget in the container, retried (50 ms apart) for up to `seconds`; the page or the last failure. */
export async function fetchIn(cri: CriClient, id: string, url: string, seconds = 5): Promise<{ ok: boolean; out: string }> {
  const tries = seconds * 20;
  const script = `i=0; while [ $i -lt ${tries} ]; do timeout 2 wget -q -O - ${url} 2>/tmp/wget.err && exit 0; i=$((i+1)); usleep 50000; done; cat /tmp/wget.err; exit 1`;
  const r = await cri.execSync(id, ['sh', '-c', script], seconds + 10);
  return { ok: r.exitCode === 0, out: (r.stdout.toString() + r.stderr.toString()).trim() };
}
