import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import * as tar from 'tar-stream';
import {
  IMAGES,
  ImageDefinition,
  MEDIA_TYPE_CONFIG,
  MEDIA_TYPE_LAYER,
  MEDIA_TYPE_MANIFEST,
  REQUIRED_APPLETS,
  buildImageArchive,
  compareImagePaths,
  ensureImageArchives,
  findImage,
  imageNames,
  parseLddOutput,
  sharedLibraryClosure,
} from '../../src/images';
import { formatImageTable } from '../../src/cli/images';

interface TarMember {
  header: tar.Header;
  data: Buffer;
}

/** Every member of a tar, in order (the archives under test are a few MiB). */
async function readTar(bytes: Buffer): Promise<TarMember[]> {
  const extract = tar.extract();
  Readable.from([bytes]).pipe(extract);
  const members: TarMember[] = [];
  for await (const entry of extract) {
    const chunks: Buffer[] = [];
    for await (const chunk of entry) chunks.push(chunk as Buffer);
    members.push({ header: entry.header, data: Buffer.concat(chunks) });
  }
  return members;
}

function sha256(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

function blob(members: TarMember[], digest: string): Buffer {
  const m = members.find((x) => x.header.name === `blobs/sha256/${digest.replace(/^sha256:/, '')}`);
  assert.ok(m, `blob ${digest} is in the archive`);
  return m!.data;
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-images-unit-'));
const pause = findImage('pause');
const busybox = findImage('heteropod.local/busybox:1');

test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));

test('the four images have fixed names', () => {
  assert.equal(imageNames(), [
    'heteropod.local/pause:1',
    'heteropod.local/busybox:1',
    'heteropod.local/haproxy:1',
    'heteropod.local/node-exporter:1',
  ]);
  assert.is(findImage('node-exporter').name, 'heteropod.local/node-exporter:1');
});

test('an unknown image name lists the known ones', () => {
  assert.throws(() => findImage('nginx'), (err: Error) => /unknown image "nginx"/.test(err.message) && /busybox/.test(err.message) && /heteropod\.local\/haproxy:1/.test(err.message));
});

test('ldd output parses into paths, loader included, vDSO skipped', () => {
  const lines = parseLddOutput(
    '\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f00)\n' +
      '\t/lib64/ld-linux-x86-64.so.2 (0x00007f01)\n\tlibgone.so.1 => not found\n',
  );
  assert.equal(lines, [
    { soname: 'linux-vdso.so.1', path: undefined, missing: false },
    { soname: 'libc.so.6', path: '/lib/x86_64-linux-gnu/libc.so.6', missing: false },
    { soname: '/lib64/ld-linux-x86-64.so.2', path: '/lib64/ld-linux-x86-64.so.2', missing: false },
    { soname: 'libgone.so.1', missing: true },
  ]);
});

test('the closure of haproxy holds its loader and libc; a static binary has none', async () => {
  const closure = await sharedLibraryClosure('/usr/sbin/haproxy');
  assert.ok(closure.some((p) => /\/ld-linux[^/]*\.so\.\d+$/.test(p)), `loader in ${closure.join(' ')}`);
  assert.ok(closure.some((p) => p.endsWith('/libc.so.6')), 'libc in the closure');
  assert.equal(await sharedLibraryClosure('/bin/busybox'), []);
});

test('directories sort before their contents', () => {
  const sorted = ['/bin/sh', '/bin', '/etc/passwd', '/bin-x', '/etc'].sort(compareImagePaths);
  assert.equal(sorted, ['/bin', '/bin/sh', '/bin-x', '/etc', '/etc/passwd']);
});

test('the busybox archive is a valid OCI layout whose blobs match their names', async () => {
  const built = await buildImageArchive(busybox, tmp);
  assert.is(built.ref, 'heteropod.local/busybox:1');
  const members = await readTar(fs.readFileSync(built.archive));
  const names = members.map((m) => m.header.name);
  assert.ok(names.includes('oci-layout') && names.includes('index.json'));

  assert.equal(JSON.parse(members.find((m) => m.header.name === 'oci-layout')!.data.toString()), { imageLayoutVersion: '1.0.0' });
  const index = JSON.parse(members.find((m) => m.header.name === 'index.json')!.data.toString());
  assert.is(index.schemaVersion, 2);
  assert.is(index.manifests.length, 1);
  const desc = index.manifests[0];
  assert.is(desc.mediaType, MEDIA_TYPE_MANIFEST);
  assert.is(desc.digest, built.manifestDigest);
  assert.equal(desc.platform, { architecture: process.arch === 'x64' ? 'amd64' : process.arch, os: 'linux' });
  assert.is(desc.annotations['io.containerd.image.name'], 'heteropod.local/busybox:1');
  assert.is(desc.annotations['org.opencontainers.image.ref.name'], '1');

  for (const m of members.filter((x) => x.header.name.startsWith('blobs/sha256/') && x.header.type === 'file')) {
    assert.is(sha256(m.data), `sha256:${path.basename(m.header.name)}`, `${m.header.name} hashes to its name`);
  }

  const manifestBytes = blob(members, desc.digest);
  assert.is(manifestBytes.length, desc.size);
  const manifest = JSON.parse(manifestBytes.toString());
  assert.is(manifest.schemaVersion, 2);
  assert.is(manifest.config.mediaType, MEDIA_TYPE_CONFIG);
  assert.is(blob(members, manifest.config.digest).length, manifest.config.size);
  assert.is(manifest.layers.length, 1);
  assert.is(manifest.layers[0].mediaType, MEDIA_TYPE_LAYER);
  assert.is(manifest.layers[0].digest, built.layerDigest);
  const layerBytes = blob(members, manifest.layers[0].digest);
  assert.is(layerBytes.length, manifest.layers[0].size);

  const config = JSON.parse(blob(members, manifest.config.digest).toString());
  assert.equal(config.rootfs, { type: 'layers', diff_ids: [built.layerDigest] });
  assert.is(config.os, 'linux');
  assert.equal(config.config.Cmd, ['sh']);
  assert.equal(config.config.Env, ['PATH=/bin:/usr/bin:/sbin:/usr/sbin']);
  assert.ok(Array.isArray(config.history) && config.history.length === 1);

  const layer = await readTar(layerBytes);
  const byName = new Map(layer.map((m) => [m.header.name.replace(/\/$/, ''), m.header]));
  const bb = byName.get('bin/busybox');
  assert.ok(bb && bb.type === 'file', 'bin/busybox is a file');
  assert.is(bb!.mode & 0o7777, 0o755);
  assert.is(bb!.size, fs.statSync('/bin/busybox').size);
  const sh = byName.get('bin/sh');
  assert.ok(sh && sh.type === 'symlink' && sh.linkname === 'busybox', 'bin/sh → busybox');
  for (const applet of REQUIRED_APPLETS) assert.ok(byName.has(`bin/${applet}`), `applet ${applet}`);
  assert.is(byName.get('tmp')!.mode & 0o7777, 0o1777);
  for (const p of ['proc', 'sys', 'dev']) assert.is(byName.get(p)!.type, 'directory');
  for (const p of ['etc/hosts', 'etc/resolv.conf']) assert.is(byName.get(p)!.size, 0);
  const passwd = layer.find((m) => m.header.name === 'etc/passwd')!.data.toString();
  assert.match(passwd, /^root:x:0:0:/m);
  assert.match(passwd, /^nobody:x:65534:65534:/m);

  // Every directory precedes its contents; every entry is owned by root with a fixed mtime.
  const seen = new Set<string>();
  for (const m of layer) {
    const name = m.header.name.replace(/\/$/, '');
    const parent = path.posix.dirname(name);
    if (parent !== '.') assert.ok(seen.has(parent), `${parent} before ${name}`);
    seen.add(name);
    assert.is(m.header.uid, 0);
    assert.is(m.header.gid, 0);
    assert.is(m.header.mtime.getTime(), 0);
  }
});

test('the pause archive holds /pause as its entrypoint and no shell', async () => {
  const built = await buildImageArchive(pause, tmp);
  const members = await readTar(fs.readFileSync(built.archive));
  const manifest = JSON.parse(blob(members, built.manifestDigest).toString());
  const config = JSON.parse(blob(members, manifest.config.digest).toString());
  assert.equal(config.config.Entrypoint, ['/pause']);
  const layer = await readTar(blob(members, built.layerDigest));
  const p = layer.find((m) => m.header.name === 'pause');
  assert.ok(p && p.header.type === 'file' && (p.header.mode & 0o777) === 0o755);
  assert.not.ok(layer.some((m) => m.header.name === 'bin/sh'));
});

test('building twice gives identical digests', async () => {
  const other = fs.mkdtempSync(path.join(tmp, 'again-'));
  const first = await buildImageArchive(busybox, tmp);
  const second = await buildImageArchive(busybox, other);
  assert.is(second.layerDigest, first.layerDigest);
  assert.is(second.configDigest, first.configDigest);
  assert.is(second.manifestDigest, first.manifestDigest);
  assert.equal(fs.readFileSync(second.archive), fs.readFileSync(first.archive));
});

test('ensureImageArchives reuses an up-to-date archive and rebuilds a damaged one', async () => {
  const dir = fs.mkdtempSync(path.join(tmp, 'cache-'));
  const [a] = await ensureImageArchives(dir, ['pause']);
  assert.is(a.cached, false);
  const [b] = await ensureImageArchives(dir, ['pause']);
  assert.is(b.cached, true);
  assert.is(b.manifestDigest, a.manifestDigest);
  fs.truncateSync(a.archive, 100);
  const [c] = await ensureImageArchives(dir, ['pause']);
  assert.is(c.cached, false);
  assert.is(c.manifestDigest, a.manifestDigest);
  assert.match(formatImageTable([c]), /heteropod\.local\/pause:1/);
  assert.not.ok(fs.readdirSync(dir).some((f) => f.endsWith('.tmp')), 'no temporary files left');
});

test('a missing binary names itself, its Debian package and make deps', async () => {
  const haproxy = IMAGES.find((d) => d.shortName === 'haproxy')!;
  const broken: ImageDefinition = {
    ...haproxy,
    files: haproxy.files.map((f) =>
      f.kind === 'binary' && f.path === '/usr/sbin/haproxy'
        ? { ...f, source: { path: path.join(tmp, 'no-such-haproxy'), debianPackage: 'haproxy' } }
        : f,
    ),
  };
  try {
    await buildImageArchive(broken, tmp);
    assert.unreachable('the build should fail');
  } catch (err) {
    const message = (err as Error).message;
    assert.match(message, 'no-such-haproxy');
    assert.match(message, 'Debian package haproxy');
    assert.match(message, 'make deps');
  }
  assert.not.ok(fs.readdirSync(tmp).some((f) => f.endsWith('.tmp')), 'no temporary files left');
});

test.run();
