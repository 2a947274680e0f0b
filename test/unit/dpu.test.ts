// The emulated DPU's pure parts: sizes from `dpu up` options, the cgroup values
// written for them, its names and paths, and the launch scripts' order of steps.
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { formatCpuList, parseCpuList } from '../../src/common/cpulist';
import { cgroupValues, dpuSize, formatBytes, parseMemory } from '../../src/dpu/config';
import { agentCommand, insideScript, outsideScript } from '../../src/dpu/launch';
import { agentAddress, cgroupDir, DPU } from '../../src/dpu/paths';
import { REPO_ROOT } from '../../src/testbed/paths';

const GiB = 1024 ** 3;

test('CPU lists parse and format the kernel way', () => {
  assert.equal(parseCpuList('0-3,6,8-9\n'), [0, 1, 2, 3, 6, 8, 9]);
  assert.equal(parseCpuList(''), []);
  assert.equal(parseCpuList('1,1,0'), [0, 1]);
  assert.throws(() => parseCpuList('3-1'), /runs backwards/);
  assert.throws(() => parseCpuList('a'), /bad CPU list "a"/);
  assert.is(formatCpuList([5, 0, 1, 2, 9, 8]), '0-2,5,8-9');
  assert.is(formatCpuList([1]), '1');
});

test('memory sizes', () => {
  assert.is(parseMemory('1G'), GiB);
  assert.is(parseMemory('1GiB'), GiB);
  assert.is(parseMemory('512m'), 512 * 1024 ** 2);
  assert.is(parseMemory('1.5G'), 1.5 * GiB);
  assert.is(parseMemory(String(2 * GiB)), 2 * GiB);
  assert.throws(() => parseMemory('lots'), /bad memory size "lots"/);
  assert.throws(() => parseMemory('1M'), /below the DPU's minimum/);
  assert.is(formatBytes(GiB), '1 GiB');
  assert.is(formatBytes(1.5 * GiB), '1.5 GiB');
  assert.is(formatBytes(100), '100 B');
});

test('default size: the last CPU and 1 GiB', () => {
  assert.equal(dpuSize({}, [0, 1]), { cpus: [1], memoryBytes: GiB });
  assert.equal(dpuSize({}, [0, 1, 2, 3, 4, 5, 6, 7]), { cpus: [7], memoryBytes: GiB });
  assert.equal(dpuSize({}, [0]), { cpus: [0], memoryBytes: GiB });
});

test('--cpus takes from the end, --cpuset names CPUs, both are checked', () => {
  assert.equal(dpuSize({ cpus: '2', memory: '2G' }, [0, 1, 2, 3]), { cpus: [2, 3], memoryBytes: 2 * GiB });
  assert.equal(dpuSize({ cpuset: '0,2' }, [0, 1, 2, 3]).cpus, [0, 2]);
  assert.throws(() => dpuSize({ cpus: '3' }, [0, 1]), /the host has only 2/);
  assert.throws(() => dpuSize({ cpus: '0' }, [0, 1]), /whole number of CPUs/);
  assert.throws(() => dpuSize({ cpus: '1.5' }, [0, 1]), /whole number/);
  assert.throws(() => dpuSize({ cpuset: '4' }, [0, 1]), /CPU 4 not on this host \(it has 0-1\)/);
  assert.throws(() => dpuSize({ cpus: '1', cpuset: '1' }, [0, 1]), /not both/);
  assert.throws(() => dpuSize({}, []), /no CPUs/);
});

test('cgroup values per controller', () => {
  assert.equal(cgroupValues({ cpus: [2, 3], memoryBytes: GiB }), {
    cpuset: { 'cpuset.cpus': '2-3', 'cpuset.mems': '0' },
    memory: { 'memory.limit_in_bytes': String(GiB) },
    pids: { 'pids.max': String(DPU.defaultPidsMax) },
    cpu: {},
  });
  // every controller the DPU joins has an entry, and nothing else
  assert.equal(Object.keys(cgroupValues({ cpus: [0], memoryBytes: GiB })).sort(), [...DPU.cgroupControllers].sort());
});

test('names and paths', () => {
  assert.is(cgroupDir('cpuset'), '/sys/fs/cgroup/cpuset/heteropod-dpu');
  assert.is(agentAddress(), '192.168.100.2:7443');
  assert.is(DPU.netnsFile, `/run/netns/${DPU.netns}`);
  for (const p of Object.values(DPU.pki).filter((v) => v !== DPU.pki.dir)) assert.ok(p.startsWith(`${DPU.pki.dir}/`), p);
  // the DPU's own state dir is a sibling of the PKI, so the keys it must not see stay outside it
  assert.not.ok(DPU.pki.dir.startsWith(DPU.dpuRootOnHost));
  assert.ok(DPU.tlsDirInside.startsWith(`${DPU.stateDir}/`));
});

test('launch: cgroups first, then the pinned mount ns and the netns; the setup only hides', () => {
  const outside = outsideScript();
  const joins = DPU.cgroupControllers.map((c) => outside.indexOf(`${cgroupDir(c)}/cgroup.procs`));
  assert.ok(joins.every((i) => i >= 0 && i < outside.indexOf('exec nsenter')));
  assert.match(outside, `nsenter --mount=${DPU.mountNsFile} --net=${DPU.netnsFile}`);
  const inside = insideScript().split('\n');
  const at = (needle: string) => inside.findIndex((l) => l.includes(needle));
  assert.ok(at('--bind /var/lib/heteropod/dpu/root') < at('hp-dpu-state /var/lib/heteropod'), 'bind the state dir before covering its parent');
  assert.ok(at('mount --move') > at('hp-dpu-state /var/lib/heteropod'));
  assert.not.ok(inside.some((l) => l.startsWith('exec')), 'the setup only mounts; the agent is started apart');
  assert.ok(agentCommand().includes('192.168.100.2:7443'));
});

test('dpu certs: keys for a real DPU, the agent\'s address in its certificate, signed by the CA; never over existing files', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-certs-'));
  const hp = path.join(REPO_ROOT, 'bin', 'heteropod');
  try {
    const out = path.join(dir, 'pki');
    const made = spawnSync(hp, ['dpu', 'certs', out, '--agent-ip', '10.0.0.7'], { encoding: 'utf8' });
    assert.is(made.status, 0, made.stderr);
    assert.equal(fs.readdirSync(out).sort(), ['agent.crt', 'agent.key', 'ca.crt', 'ca.key', 'shim.crt', 'shim.key']);
    const san = execFileSync('openssl', ['x509', '-in', path.join(out, 'agent.crt'), '-noout', '-ext', 'subjectAltName'], { encoding: 'utf8' });
    assert.match(san, 'IP Address:10.0.0.7');
    for (const leaf of ['agent.crt', 'shim.crt']) {
      const verify = spawnSync('openssl', ['verify', '-CAfile', path.join(out, 'ca.crt'), path.join(out, leaf)], { encoding: 'utf8' });
      assert.is(verify.status, 0, `${leaf}: ${verify.stdout}${verify.stderr}`);
    }
    const before = fs.readFileSync(path.join(out, 'ca.crt'));
    const again = spawnSync(hp, ['dpu', 'certs', out], { encoding: 'utf8' });
    assert.is.not(again.status, 0);
    assert.match(again.stderr, 'is not empty');
    assert.ok(fs.readFileSync(path.join(out, 'ca.crt')).equals(before), 'the CA is untouched');
    const badIp = spawnSync(hp, ['dpu', 'certs', path.join(dir, 'other'), '--agent-ip', 'dpu.local'], { encoding: 'utf8' });
    assert.is.not(badIp.status, 0);
    assert.match(badIp.stderr, '--agent-ip "dpu.local": expected an IPv4 address');
    assert.not.ok(fs.existsSync(path.join(dir, 'other')));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
