// Placement: the offload annotations (what is accepted, what is refused and how
// the error reads) and where each container goes under prefer and require.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { AnnotationError, mentionsOffload, parsePodOffload } from '../../src/placement/annotations';
import { placeContainer, PlacementError, unshippableMounts } from '../../src/placement/placement';

const DPU_OK = { unavailable: '', memoryFreeBytes: 512 << 20 };
const notDir = () => false;

test('annotations: list, policy, defaults', () => {
  assert.equal(parsePodOffload({}), { containers: [], policy: 'prefer' });
  assert.equal(parsePodOffload({ 'heteropod.io/offload': 'istio-proxy,log-agent' }), { containers: ['istio-proxy', 'log-agent'], policy: 'prefer' });
  assert.equal(parsePodOffload({ 'heteropod.io/offload': 'a', 'heteropod.io/offload-policy': 'require' }).policy, 'require');
  assert.equal(parsePodOffload({ 'heteropod.io/offload': '' }).containers, []);
  assert.ok(mentionsOffload({ 'heteropod.io/offload': '' }));
  assert.not.ok(mentionsOffload({ other: 'x' }));
});

test('annotations: bad values name the annotation and the value', () => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ 'heteropod.io/offload': 'Proxy' }, /heteropod\.io\/offload="Proxy": "Proxy" is not a container name/],
    [{ 'heteropod.io/offload': 'a,,b' }, /heteropod\.io\/offload="a,,b"/],
    [{ 'heteropod.io/offload': 'a,a' }, /container a is named twice/],
    [{ 'heteropod.io/offload': 'x'.repeat(64) }, /is not a container name/],
    [{ 'heteropod.io/offload': 'a', 'heteropod.io/offload-policy': 'Require' }, /heteropod\.io\/offload-policy="Require": must be "prefer" or "require"/],
    // One rule: values are read exactly as written; whitespace anywhere is refused.
    [{ 'heteropod.io/offload': ' istio-proxy,log-agent' }, /offload=" istio-proxy,log-agent": whitespace at character 1: values are read exactly as written/],
    [{ 'heteropod.io/offload': 'istio-proxy, log-agent' }, /whitespace at character 13/],
    [{ 'heteropod.io/offload': ' ' }, /whitespace at character 1/],
    [{ 'heteropod.io/offload': 'a', 'heteropod.io/offload-policy': 'require ' }, /offload-policy="require ": must be "prefer" or "require", exactly/],
    [{ 'heteropod.io/offload': 'a', 'heteropod.io/offload-policy': 'require\n' }, /must be "prefer" or "require"/],
  ];
  for (const [annotations, message] of cases) {
    try {
      parsePodOffload(annotations);
      assert.unreachable(`accepted ${JSON.stringify(annotations)}`);
    } catch (err) {
      assert.instance(err, AnnotationError);
      assert.match((err as Error).message, message);
    }
  }
});

test('annotations: an error quotes at most a short prefix of a long value', () => {
  const long = `a${'b'.repeat(9998)}c`;
  const cases: Record<string, string>[] = [{ 'heteropod.io/offload': long }, { 'heteropod.io/offload': 'a', 'heteropod.io/offload-policy': long }];
  for (const annotations of cases) {
    try {
      parsePodOffload(annotations);
      assert.unreachable('a 10,000-character value was accepted');
    } catch (err) {
      const message = (err as Error).message;
      assert.ok(message.length < 400, `${message.length} characters: ${message.slice(0, 500)}`);
      assert.match(message, /"abbb+"\.\.\. \(10000 characters\)/);
      assert.not.match(message, /c"/, 'the end of the value is not quoted');
    }
  }
});

test('placement: named containers go to the DPU; others stay', () => {
  const pod = { containers: ['proxy'], policy: 'prefer' as const };
  assert.equal(placeContainer(pod, 'proxy', {}, DPU_OK, notDir), { where: 'dpu', reason: '' });
  assert.equal(placeContainer(pod, 'app', {}, DPU_OK, notDir), { where: 'host', reason: '' });
  // Not named: the DPU's state does not matter.
  assert.equal(placeContainer(pod, 'app', {}, { unavailable: 'down', memoryFreeBytes: 0 }, notDir).where, 'host');
});

test('placement: prefer falls back with the reason, require refuses with it', () => {
  const prefer = { containers: ['proxy'], policy: 'prefer' as const };
  const require = { containers: ['proxy'], policy: 'require' as const };
  const hurdles: [string, object, { unavailable: string; memoryFreeBytes: number }, RegExp][] = [
    ['unreachable', {}, { unavailable: 'DPU agent at x unreachable', memoryFreeBytes: 0 }, /unreachable/],
    ['too big', { linux: { resources: { memory: { limit: 1 << 30 } } } }, DPU_OK, /memory free, the container's limit is 1073741824/],
    ['shared pid namespace', { linux: { namespaces: [{ type: 'pid', path: '/proc/1/ns/pid' }] } }, DPU_OK, /process namespace/],
    ['writable volume', { mounts: [{ destination: '/data', type: 'bind', source: '/var/lib/kubelet/x', options: ['rbind', 'rw'] }] }, DPU_OK, /writable volume cannot span host and DPU: \/data/],
  ];
  for (const [what, spec, dpu, why] of hurdles) {
    const isDir = (p: string) => p === '/var/lib/kubelet/x';
    const p = placeContainer(prefer, 'proxy', spec, dpu, isDir);
    assert.is(p.where, 'host', what);
    assert.match(p.reason, why, what);
    try {
      placeContainer(require, 'proxy', spec, dpu, isDir);
      assert.unreachable(`require accepted: ${what}`);
    } catch (err) {
      assert.instance(err, PlacementError);
      assert.match((err as Error).message, /container proxy must run on the DPU \(heteropod\.io\/offload-policy=require\), but/);
      assert.match((err as Error).message, why);
    }
  }
});

test('placement: files, read-only directories and the sandbox /dev/shm can be shipped', () => {
  const spec = {
    mounts: [
      { destination: '/etc/hosts', type: 'bind', source: '/run/x/hosts', options: ['rbind', 'rw'] },
      { destination: '/config', type: 'bind', source: '/cfg', options: ['rbind', 'ro'] },
      { destination: '/dev/shm', type: 'bind', source: '/run/containerd/io.containerd.grpc.v1.cri/sandboxes/abc/shm', options: ['rbind', 'rw'] },
      { destination: '/proc', type: 'proc', source: 'proc' },
    ],
  };
  assert.equal(unshippableMounts(spec, (p) => p === '/cfg' || p.endsWith('/shm')), []);
});

test.run();
