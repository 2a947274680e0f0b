// The node daemon's rootfs layers in C (src/noded/layers.c) against the TS they
// port (src/shim/layers.ts): the C tests (test/unit/noded-layers.c), plain and
// under AddressSanitizer and UBSan; then, through each build's modes, the same
// layer directories and the same messages as overlayLowerdirs for every case of
// layers.test.ts and more, a directory's identity as Node's bigint stat gives
// it, and the index layerDigest writes read back by the C lookup, a hit until
// the directory's ctime changes.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { RootfsMount, layerDigest, overlayLowerdirs } from '../../src/shim/layers';

const build = path.resolve(__dirname, '..', '..', '..', 'build');
const BUILDS = ['noded-test-layers', 'noded-test-layers-asan'];

let base: string;

test.before(() => {
  base = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-noded-layers-'));
});

test.after(() => {
  fs.rmSync(base, { recursive: true, force: true });
});

function run(binary: string, args: string[], cwd?: string): { status: number | null; stdout: string; output: string } {
  const file = path.join(build, binary);
  assert.ok(fs.existsSync(file), `${file} is missing: build it (src/noded/layers.mk)`);
  const r = spawnSync(file, args, { encoding: 'utf8', timeout: 120_000, cwd });
  return { status: r.status, stdout: r.stdout ?? '', output: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? r.error.message : ''}` };
}

const S = '/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots';
const CASES: RootfsMount[][] = [
  [{ type: 'overlay', source: 'overlay', options: ['index=off', `workdir=${S}/9/work`, `upperdir=${S}/9/fs`, `lowerdir=${S}/3/fs:${S}/2/fs`] }],
  [{ type: 'overlay', source: 'overlay', options: ['lowerdir=/a\\:b:/c', 'ro'] }],
  [{ type: 'bind', source: `${S}/2/fs`, options: ['rbind', 'ro'] }],
  [],
  [{ type: 'bind', source: '/x', options: ['rbind', 'rw'] }],
  [{ type: 'tmpfs', source: 'tmpfs' }],
  [{ type: 'overlay', source: 'overlay', options: ['userxattr', 'lowerdir=/a'] }],
  [{ type: 'overlay', source: 'overlay', options: ['metacopy=on', 'lowerdir=/a'] }],
  [{ type: 'overlay', source: 'overlay', options: ['upperdir=/u'] }],
  [{ type: 'overlay', source: 'overlay', options: ['lowerdir=rel/a'] }],
  [{ type: 'bind', source: '/a', options: ['ro'] }, { type: 'bind', source: '/b', options: ['ro'] }],
  // Beyond layers.test.ts: what the C must quote, split and refuse alike.
  [{ type: 'overlay', source: 'overlay', options: ['redirect_dir=off', 'metacopy=off', 'volatile', 'lowerdir=/l1:/l2:/l3'] }],
  [{ type: 'overlay', source: 'overlay', options: ['lowerdir=/a', 'lowerdir=/b'] }],
  [{ type: 'overlay', source: 'overlay', options: ['lowerdir=/a', 'metacopy'] }],
  [{ type: 'overlay', source: 'overlay', options: ['lowerdir+=/a'] }],
  [{ type: 'overlay', source: 'overlay', options: ['lowerdir=/a\\\\:/b\\c:/d\\'] }],
  [{ type: 'overlay', source: 'overlay', options: ['lowerdir=/a::/b'] }],
  [{ type: 'overlay', source: 'overlay', options: ['lowerdir=/snapshots/ünï/fs:/snapshots/2/fs'] }],
  [{ type: 'rbind', source: 'snap/fs', options: ['ro'] }],
  [{ type: 'bind', source: '/s' }],
  [{ type: 'bind', source: '/a"b\\c\nd\u0001\u001f\t\r\b\f\u007f/é ✓', options: ['rw', 'x"y'] }],
];

for (const binary of BUILDS) {
  test(`${binary}: the C tests pass`, () => {
    const r = run(binary, []);
    if (r.status !== 0) assert.unreachable(`${binary} failed (exit ${r.status}):\n${r.output}`);
    assert.match(r.output, /all noded layers tests passed/);
  });

  test(`${binary}: the layer directories and messages of overlayLowerdirs`, () => {
    for (const mounts of CASES) {
      let want: { dirs: string[] } | { error: string };
      try {
        want = { dirs: overlayLowerdirs(mounts) };
      } catch (err) {
        want = { error: (err as Error).message };
      }
      const r = run(binary, ['lowerdirs', JSON.stringify(mounts)]);
      assert.is(r.status, 0, r.output);
      assert.equal(JSON.parse(r.stdout), want, JSON.stringify(mounts));
    }
  });

  test(`${binary}: the index layerDigest writes, read by the C lookup until the directory's ctime changes`, async () => {
    const dir = path.join(base, `layer-${binary}`);
    const index = path.join(base, `index-${binary}`);
    fs.mkdirSync(path.join(dir, 'etc'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'etc', 'hostname'), 'pod\n');

    // The identity, field for field, as Node's bigint stat gives it.
    const st = fs.statSync(dir, { bigint: true });
    const id = run(binary, ['identity', dir]);
    assert.is(id.status, 0, id.output);
    assert.is(id.stdout, `${st.dev} ${st.ino} ${st.ctimeNs}\n`);

    const miss = run(binary, ['lookup', dir, index]);
    assert.is(miss.status, 1);
    assert.match(miss.stdout, /^ENOENT: layer .* no digest in the index/);

    const first = await layerDigest(dir, index);
    assert.is(first.fromIndex, false);
    const hit = run(binary, ['lookup', dir, index]);
    assert.is(hit.status, 0, hit.output);
    assert.is(hit.stdout, `${first.digest} ${first.size}\n`);
    // The same record for a relative name, resolved as path.resolve does.
    const relative = run(binary, ['lookup', `./${path.basename(dir)}/../${path.basename(dir)}/`, index], base);
    assert.is(relative.stdout, `${first.digest} ${first.size}\n`, relative.output);

    // A new ctime, the content unchanged (chmod to the same mode, a clock tick
    // later: the kernel stamps ctime with a coarse clock): the C lookup refuses
    // the record, as layerDigest does, which then records the same digest again.
    await new Promise((r) => setTimeout(r, 20));
    fs.chmodSync(dir, Number(st.mode) & 0o7777);
    assert.is.not(fs.statSync(dir, { bigint: true }).ctimeNs, st.ctimeNs);
    const stale = run(binary, ['lookup', dir, index]);
    assert.is(stale.status, 1);
    assert.match(stale.stdout, /^ENOENT: layer .* is stale/);
    const again = await layerDigest(dir, index);
    assert.is(again.fromIndex, false);
    assert.is(again.digest, first.digest);
    assert.is(run(binary, ['lookup', dir, index]).stdout, `${first.digest} ${first.size}\n`);

    // Not a directory: the TS's message.
    const file = path.join(dir, 'etc', 'hostname');
    const notDir = run(binary, ['lookup', file, index]);
    assert.is(notDir.status, 1);
    assert.is(notDir.stdout, `ENOTDIR: layer ${file} is not a directory\n`);
    await layerDigest(file, index).then(
      () => assert.unreachable('layerDigest of a file'),
      (err: Error) => assert.is(err.message, `layer ${file} is not a directory`),
    );
  });
}

test.run();
