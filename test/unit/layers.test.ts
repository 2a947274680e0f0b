// Shipping filesystem layers: rootfs mounts parsed into layer directories, the
// deterministic tar of a directory, the digest index, and the round trip into the
// agent's LayerCache (a LayerStore with no gRPC in between): the unpacked tree
// equals the original, a second ship sends nothing, and corrupt, truncated or
// malicious uploads leave no cache entry.
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import * as tar from 'tar-stream';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { LayerCache } from '../../src/agent/layer-cache';
import { OPAQUE_XATTR } from '../../src/layers/format';
import { getXattr, mknodDevice, setXattr } from '../../src/common/linux-fs';
import { collectLayerEntries, findImage } from '../../src/images';
import { LayerStore, digestOf, layerDigest, layerTar, overlayLowerdirs, shipLayers } from '../../src/shim/layers';
import { skip } from '../lib/skip';

let base: string;
let rich: string;

function t(seconds: number): Date {
  return new Date(seconds * 1000);
}

/** A layer with every kind of entry layerTar handles, odd modes, owners and sub-second mtimes. */
function makeRichLayer(root: string): void {
  const dirs: Array<[string, number, number?]> = [
    ['bin', 0o755],
    ['etc', 0o750, 1000],
    ['opaque', 0o755],
    ['deep/a/b/c', 0o700],
    ['run', 0o1777],
    ['x'.repeat(90) + '/' + 'y'.repeat(90), 0o755],
  ];
  for (const [d, mode, owner] of dirs) {
    fs.mkdirSync(path.join(root, d), { recursive: true });
    fs.chmodSync(path.join(root, d), mode);
    if (owner !== undefined) fs.chownSync(path.join(root, d), owner, owner);
  }
  const files: Array<[string, number, Buffer, number?]> = [
    ['bin/tool', 0o755, Buffer.from('#!/bin/sh\necho tool\n')],
    ['bin/suid', 0o4755, Buffer.from('setuid')],
    ['etc/conf', 0o640, Buffer.from('key=value\n'), 1234],
    ['etc/empty', 0o644, Buffer.alloc(0)],
    ['ünïcode näme.txt', 0o644, Buffer.from('utf-8 name')],
    ['deep/a/b/c/big', 0o600, Buffer.alloc(3 * 1024 * 1024 + 17, 'abcdefghijklmnop')],
    ['opaque/kept', 0o644, Buffer.from('kept')],
    ['x'.repeat(90) + '/' + 'y'.repeat(90) + '/' + 'z'.repeat(99), 0o644, Buffer.from('long name')],
  ];
  for (const [f, mode, content, owner] of files) {
    fs.writeFileSync(path.join(root, f), content);
    if (owner !== undefined) fs.chownSync(path.join(root, f), owner, 5678);
    fs.chmodSync(path.join(root, f), mode);
    fs.utimesSync(path.join(root, f), t(1_600_000_000.75), t(1_600_000_123.5));
  }
  fs.linkSync(path.join(root, 'bin/tool'), path.join(root, 'bin/tool-hardlink'));
  fs.linkSync(path.join(root, 'bin/tool'), path.join(root, 'deep/tool-hardlink'));
  fs.symlinkSync('/bin/busybox', path.join(root, 'bin/sh'));
  fs.symlinkSync('../etc/conf', path.join(root, 'bin/conf-link'));
  fs.symlinkSync('nowhere/at/all', path.join(root, 'dangling'));
  fs.symlinkSync('z'.repeat(150), path.join(root, 'long-target'));
  fs.lutimesSync(path.join(root, 'bin/sh'), t(1_500_000_000), t(1_500_000_000));
  mknodDevice(path.join(root, 'etc/removed'), 'character', 0, 0, 0); // an overlay whiteout
  fs.chmodSync(path.join(root, 'etc/removed'), 0);
  mknodDevice(path.join(root, 'run/fifo'), 'fifo', 0o620);
  fs.chmodSync(path.join(root, 'run/fifo'), 0o620);
  setXattr(path.join(root, 'opaque'), OPAQUE_XATTR, Buffer.from('y'));
  // Directories last, deepest first, so their mtimes stay as set.
  for (const d of ['deep/a/b/c', 'deep/a/b', 'deep/a', 'deep', 'x'.repeat(90), 'bin', 'etc', 'opaque', 'run', '']) {
    fs.utimesSync(path.join(root, d), t(1_400_000_000), t(1_400_000_000 + d.length));
  }
}

interface Node {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  size?: number;
  sha?: string;
  target?: string;
  rdev?: number;
  opaque?: boolean;
  /** For a multiply-linked file: the first path (in sorted order) with its inode. */
  linkGroup?: string;
}

/** Everything about a tree that a layer must carry, keyed by relative path ("" the root). */
function describeTree(root: string): Map<string, Node> {
  const out = new Map<string, Node>();
  const inodes = new Map<number, string>();
  const visit = (rel: string) => {
    const abs = rel ? path.join(root, rel) : root;
    const st = fs.lstatSync(abs);
    const node: Node = {
      type: st.isDirectory() ? 'dir' : st.isFile() ? 'file' : st.isSymbolicLink() ? 'symlink' : st.isCharacterDevice() ? 'char' : st.isFIFO() ? 'fifo' : 'other',
      mode: st.mode & 0o7777,
      uid: st.uid,
      gid: st.gid,
      mtime: Math.floor(st.mtimeMs / 1000),
    };
    if (st.isFile()) {
      node.size = st.size;
      node.sha = createHash('sha256').update(fs.readFileSync(abs)).digest('hex');
      if (st.nlink > 1) {
        if (!inodes.has(st.ino)) inodes.set(st.ino, rel);
        node.linkGroup = inodes.get(st.ino);
      }
    }
    if (st.isSymbolicLink()) {
      node.target = fs.readlinkSync(abs);
      node.mode = 0; // Linux has no symlink permissions
    }
    if (st.isCharacterDevice()) node.rdev = st.rdev;
    if (st.isDirectory()) node.opaque = getXattr(abs, OPAQUE_XATTR)?.toString() === 'y';
    out.set(rel, node);
    if (st.isDirectory()) for (const name of fs.readdirSync(abs).sort()) visit(rel ? `${rel}/${name}` : name);
  };
  visit('');
  return out;
}

function assertSameTree(actual: string, expected: string): void {
  const a = describeTree(actual);
  const e = describeTree(expected);
  assert.equal([...a.keys()], [...e.keys()], 'same names');
  for (const [rel, node] of e) assert.equal(a.get(rel), node, `entry "${rel}"`);
}

function cacheEntries(cache: LayerCache): string[] {
  return fs.readdirSync(cache.dir).filter((n) => n !== 'index.json').sort();
}

/** A tar made by hand, for streams layerTar would never produce. */
async function handTar(entries: Array<{ header: Parameters<tar.Pack['entry']>[0]; content?: Buffer }>): Promise<Buffer> {
  const pack = tar.pack();
  const collected = (async () => {
    const parts: Buffer[] = [];
    for await (const chunk of pack) parts.push(chunk as Buffer);
    return Buffer.concat(parts);
  })();
  for (const e of entries) {
    await new Promise<void>((resolve, reject) => pack.entry(e.header, e.content ?? Buffer.alloc(0), (err) => (err ? reject(err) : resolve())));
  }
  pack.finalize();
  return collected;
}

function sha(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

async function rejects(p: Promise<unknown>, pattern: RegExp): Promise<Error> {
  try {
    await p;
  } catch (err) {
    assert.match((err as Error).message, pattern);
    return err as Error;
  }
  assert.unreachable(`expected a rejection matching ${pattern}`);
  throw new Error('unreachable');
}

test.before(() => {
  base = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-layers-unit-'));
  rich = path.join(base, 'snapshots', '2', 'fs');
  fs.mkdirSync(rich, { recursive: true });
  makeRichLayer(rich);
});

test.after(() => {
  fs.rmSync(base, { recursive: true, force: true });
});

test('overlayLowerdirs reads containerd rootfs mounts, top layer first', () => {
  const s = '/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots';
  assert.equal(
    overlayLowerdirs([{ type: 'overlay', source: 'overlay', options: ['index=off', `workdir=${s}/9/work`, `upperdir=${s}/9/fs`, `lowerdir=${s}/3/fs:${s}/2/fs`] }]),
    [`${s}/3/fs`, `${s}/2/fs`],
  );
  assert.equal(overlayLowerdirs([{ type: 'overlay', source: 'overlay', options: ['lowerdir=/a\\:b:/c', 'ro'] }]), ['/a:b', '/c']);
  assert.equal(overlayLowerdirs([{ type: 'bind', source: `${s}/2/fs`, options: ['rbind', 'ro'] }]), [`${s}/2/fs`]);
  assert.throws(() => overlayLowerdirs([]), /no mounts/);
  assert.throws(() => overlayLowerdirs([{ type: 'bind', source: '/x', options: ['rbind', 'rw'] }]), /bind mount of "\/x".*writable/);
  assert.throws(() => overlayLowerdirs([{ type: 'tmpfs', source: 'tmpfs' }]), /tmpfs mount of "tmpfs".*not supported/);
  assert.throws(() => overlayLowerdirs([{ type: 'overlay', source: 'overlay', options: ['userxattr', 'lowerdir=/a'] }]), /"userxattr" is not supported/);
  assert.throws(() => overlayLowerdirs([{ type: 'overlay', source: 'overlay', options: ['metacopy=on', 'lowerdir=/a'] }]), /metacopy=on/);
  assert.throws(() => overlayLowerdirs([{ type: 'overlay', source: 'overlay', options: ['upperdir=/u'] }]), /no lowerdir/);
  assert.throws(() => overlayLowerdirs([{ type: 'overlay', source: 'overlay', options: ['lowerdir=rel/a'] }]), /"rel\/a" is not an absolute path/);
  assert.throws(
    () => overlayLowerdirs([{ type: 'bind', source: '/a', options: ['ro'] }, { type: 'bind', source: '/b', options: ['ro'] }]),
    /2 mounts/,
  );
});

test('layerTar is deterministic: the same directory, or a copy of it, gives the same bytes', async () => {
  const first = await digestOf(layerTar(rich));
  const second = await digestOf(layerTar(rich));
  assert.equal(second, first);
  const copy = path.join(base, 'copy');
  // cp -a keeps modes, owners, times, hard links, device nodes and (as root) trusted.* attributes.
  execFileSync('cp', ['-a', rich, copy]);
  try {
    assert.equal(await digestOf(layerTar(copy)), first);
    // ... and one changed mode gives another digest.
    fs.chmodSync(path.join(copy, 'etc/conf'), 0o600);
    assert.is.not((await digestOf(layerTar(copy))).digest, first.digest);
  } finally {
    fs.rmSync(copy, { recursive: true, force: true });
  }
});

test('layerTar fails with the directory named, and stops when its reader goes away', async () => {
  await rejects(digestOf(layerTar(path.join(base, 'absent'))), /pack layer .*absent: .*ENOENT/);
  const fds = fs.readdirSync('/proc/self/fd').length;
  // Stop reading at several points, inside small entries and inside the big file.
  for (const chunks of [0, 1, 3, 8, 20]) {
    const stream = layerTar(rich);
    let seen = 0;
    for await (const _chunk of stream) if (++seen > chunks) break; // break destroys the stream
    await new Promise((resolve) => setTimeout(resolve, 30)); // an unhandled error would end the test run here
  }
  assert.is(fs.readdirSync('/proc/self/fd').length, fds, 'no file left open');
});

test('layerDigest is remembered: a second call reads nothing but a stat', async () => {
  const layer = path.join(base, 'indexed');
  const indexDir = path.join(base, 'index-a');
  execFileSync('cp', ['-a', rich, layer]);
  try {
    const first = await layerDigest(layer, indexDir);
    assert.is(first.fromIndex, false);
    assert.equal(first.digest, (await digestOf(layerTar(rich))).digest);
    // Change a deep file in place (the top directory's identity stays): the index
    // still answers, which proves the contents were not read again.
    fs.writeFileSync(path.join(layer, 'deep/a/b/c/big'), Buffer.alloc(3 * 1024 * 1024 + 17, 'X'));
    const second = await layerDigest(layer, indexDir);
    assert.equal(second, { ...first, fromIndex: true });
    // A directory re-made under the same path is a new identity: digested again.
    fs.rmSync(layer, { recursive: true });
    execFileSync('cp', ['-a', rich, layer]);
    fs.writeFileSync(path.join(layer, 'etc/empty'), 'no longer empty');
    const third = await layerDigest(layer, indexDir);
    assert.is(third.fromIndex, false);
    assert.is.not(third.digest, first.digest);
  } finally {
    fs.rmSync(layer, { recursive: true, force: true });
  }
});

test('round trip: ship to a LayerCache, the unpacked tree equals the original, a second ship sends nothing', async () => {
  const cache = new LayerCache(path.join(base, 'cache-roundtrip'));
  const indexDir = path.join(base, 'index-b');
  const { digest, size } = await digestOf(layerTar(rich));
  const first = await shipLayers([rich], cache, indexDir);
  assert.equal(first, { digests: [digest], bytesSent: size, layersSent: 1 });
  assertSameTree(cache.path(digest), rich);
  assert.is(cacheEntries(cache).length, 1);

  const again = await shipLayers([rich], cache, indexDir);
  assert.equal(again, { digests: [digest], bytesSent: 0, layersSent: 0 });
  assert.equal(await cache.missing([digest, digest, sha(Buffer.from('x'))]), [sha(Buffer.from('x'))]);

  const listed = await cache.list();
  assert.is(listed.length, 1);
  assert.is(listed[0].digest, digest);
  assert.is(listed[0].size, size);
  assert.is(await cache.sizeBytes(), size);
  const index = JSON.parse(fs.readFileSync(path.join(cache.dir, 'index.json'), 'utf8'));
  assert.is(index.layers[digest].size, size);
  assert.ok(Date.parse(index.layers[digest].addedAt) > 0);

  // A layer re-packed from the cache is the same layer.
  assert.is((await digestOf(layerTar(cache.path(digest)))).digest, digest);

  assert.is(await cache.remove(digest), true);
  assert.is(await cache.remove(digest), false);
  assert.equal(cacheEntries(cache), []);
  assert.equal(await cache.list(), []);
  assert.throws(() => cache.path(digest), /is not in the layer cache/);
});

test('a corrupt upload leaves no cache entry and says why', async () => {
  const cache = new LayerCache(path.join(base, 'cache-corrupt'));
  const bytes = (await digestOf(layerTar(rich))).size;
  const good = await collect(layerTar(rich));
  assert.is(good.length, bytes);
  const other = sha(Buffer.from('another layer'));
  await rejects(cache.put(other, good.length, Readable.from([good])), /digest mismatch: .* hash to sha256:/);
  await rejects(cache.put(sha(good), good.length + 4096, Readable.from([good])), /truncated: received \d+ of \d+ bytes/);
  await rejects(cache.put(sha(good), good.length - 1, Readable.from([good])), /longer than the announced/);
  const flipped = Buffer.from(good);
  flipped[700] ^= 0xff; // inside the first header: the tar itself is broken too
  await rejects(cache.put(sha(good), good.length, Readable.from([flipped])), /digest mismatch/);
  await rejects(cache.put('sha256:ABC', 10, Readable.from([])), /invalid layer digest "sha256:ABC"/);
  await rejects(cache.put('md5:0123', 10, Readable.from([])), /invalid layer digest/);
  const failing = Readable.from((async function* () {
    yield good.subarray(0, 100_000);
    throw new Error('connection reset');
  })());
  await rejects(cache.put(sha(good), good.length, failing), /upload failed after 100000 of \d+ bytes: connection reset/);
  assert.equal(cacheEntries(cache), []);
  assert.equal(await cache.missing([sha(good)]), [sha(good)]);
  assert.equal(await cache.list(), []);
  // The good upload still goes through afterwards.
  assert.equal(await cache.put(sha(good), good.length, Readable.from([good])), { bytesReceived: good.length, alreadyPresent: false });
});

async function collect(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

test('names that would escape the layer are refused, even with a correct digest', async () => {
  const cache = new LayerCache(path.join(base, 'cache-evil'));
  const outside = path.join(base, 'outside');
  fs.mkdirSync(outside);
  const root = { header: { name: './', type: 'directory' as const, mode: 0o755 } };
  const cases: Array<[string, Parameters<typeof handTar>[0], RegExp]> = [
    ['dot-dot', [root, { header: { name: '../escaped', type: 'file' }, content: Buffer.from('x') }], /"\.\.\/escaped": ".." in a name is refused/],
    ['inner dot-dot', [root, { header: { name: 'a/../../escaped', type: 'file' } }], /path traversal/],
    ['absolute', [root, { header: { name: '/etc/evil', type: 'file' } }], /absolute names are refused/],
    [
      'through a symlink',
      [root, { header: { name: 'link', type: 'symlink', linkname: outside } }, { header: { name: 'link/escaped', type: 'file' }, content: Buffer.from('x') }],
      /"link\/escaped": its parent is not a directory of this layer/,
    ],
    ['hard link out', [root, { header: { name: 'passwd', type: 'link', linkname: '/etc/passwd' } }], /absolute names are refused/],
    ['hard link up', [root, { header: { name: 'h', type: 'link', linkname: '../outside/x' } }], /path traversal/],
    ['hard link to a symlink', [root, { header: { name: 's', type: 'symlink', linkname: '/etc/passwd' } }, { header: { name: 'h', type: 'link', linkname: 's' } }], /not a file of this layer/],
    ['twice', [root, { header: { name: 'a', type: 'file' } }, { header: { name: 'a', type: 'file' } }], /appears twice/],
    ['no root first', [{ header: { name: 'a', type: 'file' } }], /the first entry must be the layer root/],
    ['no entries', [], /holds no entries/],
    ['other xattrs', [root, { header: { name: 'd', type: 'directory', pax: { 'SCHILY.xattr.security.evil': 'x' } } }], /"SCHILY.xattr.security.evil" is not supported/],
  ];
  for (const [label, entries, pattern] of cases) {
    const bytes = await handTar(entries);
    const err = await rejects(cache.put(sha(bytes), bytes.length, Readable.from([bytes])), pattern);
    assert.ok(err.message.includes(sha(bytes)), `${label}: the error names the layer`);
    assert.equal(cacheEntries(cache), [], `${label}: nothing left in the cache`);
  }
  assert.equal(fs.readdirSync(outside), [], 'nothing written outside');
  assert.not.ok(fs.existsSync(path.join(base, 'escaped')));
  // Absolute symlink targets are legitimate (resolved in the container's root) and kept.
  const ok = await handTar([root, { header: { name: 'sh', type: 'symlink', linkname: '/bin/busybox' } }]);
  await cache.put(sha(ok), ok.length, Readable.from([ok]));
  assert.is(fs.readlinkSync(path.join(cache.path(sha(ok)), 'sh')), '/bin/busybox');
});

test('concurrent uploads of one digest: one stores, the others find it present', async () => {
  const dir = path.join(base, 'cache-concurrent');
  const { digest, size } = await digestOf(layerTar(rich));
  // One cache: puts of a digest are serialized.
  const cache = new LayerCache(dir);
  const results = await Promise.all([1, 2, 3].map(() => cache.put(digest, size, layerTar(rich))));
  assert.equal(results.map((r) => r.alreadyPresent).sort(), [false, true, true]);
  assertSameTree(cache.path(digest), rich);
  await cache.remove(digest);
  // Two caches on one directory (as two agents would be): the rename race decides.
  const [a, b] = [new LayerCache(dir), new LayerCache(dir)];
  const raced = await Promise.all([a.put(digest, size, layerTar(rich)), b.put(digest, size, layerTar(rich))]);
  assert.equal(raced.map((r) => r.alreadyPresent).sort(), [false, true]);
  assert.equal(cacheEntries(a), [digest.slice('sha256:'.length)], 'no temporary left');
  assertSameTree(a.path(digest), rich);
  // Concurrent ships to one store join one upload.
  const fresh = new LayerCache(path.join(base, 'cache-joined'));
  let puts = 0;
  const store: LayerStore = {
    missing: (d) => fresh.missing(d),
    put: (d, s, data) => {
      puts++;
      return fresh.put(d, s, data);
    },
  };
  const ships = await Promise.all([1, 2].map(() => shipLayers([rich], store, path.join(base, 'index-c'))));
  assert.is(puts, 1);
  assert.is(ships[0].bytesSent + ships[1].bytesSent, size);
});

test('a new LayerCache sweeps what a dead agent left', async () => {
  const dir = path.join(base, 'cache-swept');
  const cache = new LayerCache(dir);
  const bytes = await handTar([{ header: { name: './', type: 'directory', mode: 0o755 } }]);
  await cache.put(sha(bytes), bytes.length, Readable.from([bytes]));
  let deadPid = 4_000_000;
  while (fs.existsSync(`/proc/${deadPid}`)) deadPid++;
  fs.mkdirSync(path.join(dir, `.tmp-0123456789ab-${deadPid}-abc`));
  fs.mkdirSync(path.join(dir, `.tmp-0123456789ab-${process.pid}-live`)); // a live owner's: kept
  const index = JSON.parse(fs.readFileSync(path.join(dir, 'index.json'), 'utf8'));
  index.layers[sha(Buffer.from('gone'))] = { size: 1, addedAt: new Date().toISOString(), receiveMs: 0 };
  fs.writeFileSync(path.join(dir, 'index.json'), JSON.stringify(index));
  const reopened = new LayerCache(dir);
  assert.equal((await reopened.list()).map((l) => l.digest), [sha(bytes)]);
  assert.equal(cacheEntries(reopened), [`.tmp-0123456789ab-${process.pid}-live`, sha(bytes).slice('sha256:'.length)]);
  assert.equal(Object.keys(JSON.parse(fs.readFileSync(path.join(dir, 'index.json'), 'utf8')).layers), [sha(bytes)]);
  assert.is(fs.statSync(dir).mode & 0o777, 0o700);
});

test('a real image rootfs (the project busybox image) survives the round trip', async () => {
  const def = findImage('busybox');
  let entries;
  try {
    entries = await collectLayerEntries(def);
  } catch (err) {
    skip('real image rootfs', `cannot collect the busybox image here: ${(err as Error).message}`);
    return;
  }
  const rootfs = path.join(base, 'snapshots', '3', 'fs');
  fs.mkdirSync(rootfs, { recursive: true });
  for (const e of entries) {
    const abs = path.join(rootfs, e.path);
    if (e.type === 'directory') fs.mkdirSync(abs, { recursive: true, mode: e.mode });
    else if (e.type === 'symlink') fs.symlinkSync(e.target, abs);
    else {
      if (e.source !== undefined) fs.copyFileSync(e.source, abs);
      else fs.writeFileSync(abs, e.content ?? Buffer.alloc(0));
      fs.chmodSync(abs, e.mode);
    }
  }
  const cache = new LayerCache(path.join(base, 'cache-real'));
  const mounts = [{ type: 'overlay', source: 'overlay', options: ['index=off', `lowerdir=${rootfs}:${rich}`] }];
  const dirs = overlayLowerdirs(mounts);
  const shipped = await shipLayers(dirs, cache, path.join(base, 'index-d'));
  assert.is(shipped.layersSent, 2);
  assertSameTree(cache.path(shipped.digests[0]), rootfs);
  assertSameTree(cache.path(shipped.digests[1]), rich);
  assert.equal(await shipLayers(dirs, cache, path.join(base, 'index-d')), { ...shipped, bytesSent: 0, layersSent: 0 });
});

test.run();
