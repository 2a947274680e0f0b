// The spec a DPU container runs with: host namespaces, cgroups, mounts and hooks
// replaced by the DPU's own; the rest kept as the host made it.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { eventContainerId, EventHub } from '../../src/agent/events';
import { OciSpec, specForDpu, SpecError } from '../../src/agent/spec';
import { MessageWriter, encodeAny } from '../../src/proto/wire';

const HOST: OciSpec = {
  process: { args: ['sleep', '1'], env: ['A=1'], user: { uid: 1000, gid: 1000 }, capabilities: { bounding: ['CAP_NET_BIND_SERVICE'] } },
  root: { path: '/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs', readonly: true },
  hooks: { prestart: [{ path: '/usr/bin/host-hook' }] },
  mounts: [
    { destination: '/proc', type: 'proc', source: 'proc' },
    { destination: '/etc/hosts', type: 'bind', source: '/var/lib/cri/sandboxes/s/hosts', options: ['rbind', 'rprivate', 'rw'] },
    { destination: '/dev/shm', type: 'bind', source: '/run/containerd/io.containerd.grpc.v1.cri/sandboxes/s/shm', options: ['rbind', 'rw'] },
  ],
  linux: {
    cgroupsPath: '/k8s.io/abc',
    namespaces: [{ type: 'pid' }, { type: 'ipc', path: '/proc/9/ns/ipc' }, { type: 'uts', path: '/proc/9/ns/uts' }, { type: 'mount' }, { type: 'network', path: '/proc/9/ns/net' }],
    seccomp: { defaultAction: 'SCMP_ACT_ERRNO' },
    resources: { memory: { limit: 1 << 26 } },
  },
};

const PLACE = { containerId: 'abc', netnsPath: '/run/netns/hp-pod-s', cgroupParent: '/heteropod-dpu/hp-s', copies: new Map([['/etc/hosts', '/dpu/files/0']]), hostname: 'web-1' };

test('namespaces, cgroup, root, hostname', () => {
  const s = specForDpu(HOST, PLACE);
  assert.equal(s.linux!.namespaces, [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, { type: 'network', path: '/run/netns/hp-pod-s' }]);
  assert.is(s.linux!.cgroupsPath, '/heteropod-dpu/hp-s/abc');
  assert.equal(s.root, { path: 'rootfs', readonly: true });
  assert.is(s.hostname, 'web-1');
  assert.is(s.hooks, undefined);
});

test('mounts: copies replace binds, /dev/shm becomes the container\'s own', () => {
  const s = specForDpu(HOST, PLACE);
  assert.equal(s.mounts![1], { destination: '/etc/hosts', type: 'bind', source: '/dpu/files/0', options: ['rbind', 'rprivate', 'rw'] });
  assert.is(s.mounts![2].type, 'tmpfs');
  assert.equal(s.mounts![0], HOST.mounts![0]);
  assert.throws(() => specForDpu(HOST, { ...PLACE, copies: new Map() }), (e: Error) => e instanceof SpecError && /\/etc\/hosts/.test(e.message));
});

test('the termination-message file: its copy, mounted writable even if the host said ro; other mounts keep their options', () => {
  const host: OciSpec = {
    ...HOST,
    mounts: [
      ...HOST.mounts!,
      { destination: '/dev/termination-log', type: 'bind', source: '/var/lib/kubelet/pods/u/containers/proxy/0badcafe', options: ['rbind', 'rprivate', 'ro'] },
    ],
  };
  const copies = new Map([...PLACE.copies, ['/dev/termination-log', '/dpu/files/1']]);
  const s = specForDpu(host, { ...PLACE, copies, terminationLog: '/dev/termination-log' });
  assert.equal(s.mounts![3], { destination: '/dev/termination-log', type: 'bind', source: '/dpu/files/1', options: ['rbind', 'rprivate', 'rw'] });
  assert.equal(s.mounts![1].options, ['rbind', 'rprivate', 'rw']);
  assert.equal(specForDpu(host, { ...PLACE, copies }).mounts![3].options, ['rbind', 'rprivate', 'ro'], 'only the file the host named');
});

test('what the user set is kept: process, seccomp, resources; the host spec is not changed', () => {
  const before = JSON.stringify(HOST);
  const s = specForDpu(HOST, PLACE);
  assert.equal(s.process, HOST.process);
  assert.equal(s.linux!.seccomp, HOST.linux!.seccomp);
  assert.equal(s.linux!.resources, HOST.linux!.resources);
  assert.is(JSON.stringify(HOST), before);
});

function forward(topic: string, containerId: string): Buffer {
  const event = encodeAny('containerd.events.TaskExit', new MessageWriter().bytes(1, containerId).varint(4, 3).finish());
  const envelope = new MessageWriter().bytes(2, 'k8s.io').bytes(3, topic).message(4, event).finish();
  return new MessageWriter().message(1, envelope).finish();
}

test('events: filed by pod, replayed after a sequence, growing across restarts', () => {
  assert.is(eventContainerId(forward('/tasks/exit', 'c1')), 'c1');
  const hub = new EventHub(1_000);
  const a = hub.publish('p', forward('/tasks/create', 'c1'));
  const b = hub.publish('p', forward('/tasks/exit', 'c1'));
  hub.publish('q', forward('/tasks/create', 'c2'));
  const seen: string[] = [];
  const stop = hub.subscribe('p', a.sequence, (e) => seen.push(e.topic));
  assert.equal(seen, ['/tasks/exit']);
  hub.publish('p', forward('/tasks/delete', 'c1'));
  stop();
  hub.publish('p', forward('/tasks/create', 'c3'));
  assert.equal(seen, ['/tasks/exit', '/tasks/delete']);
  // A later agent numbers from its own (later) start, above anything an earlier one sent.
  const later = new EventHub(2_000);
  assert.ok(later.publish('p', forward('/tasks/exit', 'c1')).sequence > b.sequence);
});

test.run();
