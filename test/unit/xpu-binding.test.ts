// The koffi binding of libxpu: windows, ports, statistics, the listening-socket
// dump (xpu_diag_*) and every refusal of bad input, each with a clear error and
// nothing left behind.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import { execFileSync, spawnSync } from 'node:child_process';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { XpuError, XpuWindow, listWindows, readStats, removeWindow, windowPath } from '../../src/xpu/window';
import { LISTENER_BYTES, native } from '../../src/xpu/native';
import { addNetns, canMakeNetns, delNetns, devices, listNetns } from '../lib/netns';
import { skip } from '../lib/skip';

const tag = `hpx-xu${process.pid}`;
const files: string[] = [];
const namespaces: string[] = [];

function tmpWindow(name: string): string {
  const f = windowPath(`${tag}-${name}`);
  files.push(f);
  return f;
}

function throwsXpu(fn: () => unknown, code: string, message: RegExp): void {
  try {
    fn();
  } catch (err) {
    assert.instance(err, XpuError);
    assert.is((err as XpuError).code, code, (err as Error).message);
    assert.match((err as Error).message, message);
    return;
  }
  assert.unreachable(`expected ${code}`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

test('create, attach, stats of a new window', () => {
  const f = tmpWindow('new');
  const w = XpuWindow.create(f, { ringBytes: 256 * 1024 });
  try {
    assert.is(fs.statSync(f).size, 4096 + 2 * 256 * 1024);
    const a = XpuWindow.attach(f);
    a.close();
    const s = readStats(f);
    assert.is(s.version, 1);
    assert.is(s.ringBytes, 256 * 1024);
    assert.is(s.frameMax, 65792);
    assert.is(s.linkUp, false);
    assert.is(s.host.state, 'free');
    assert.is(s.dpu.state, 'free');
    assert.is(s.hostToDpu.frames, 0);
    assert.ok(listWindows().includes(f));
  } finally {
    w.close();
  }
});

test('create refuses an existing window and bad ring sizes, leaving nothing', () => {
  const f = tmpWindow('exists');
  const w = XpuWindow.create(f);
  w.close();
  throwsXpu(() => XpuWindow.create(f), 'EEXIST', /already exists/);
  const bad = tmpWindow('badring');
  throwsXpu(() => XpuWindow.create(bad, { ringBytes: 300_000 }), 'EINVAL', /power of two/);
  assert.not.ok(fs.existsSync(bad));
});

test('attach and stats refuse a file that is not a window', () => {
  const f = tmpWindow('garbage');
  fs.writeFileSync(f, Buffer.alloc(8192, 0x41));
  throwsXpu(() => XpuWindow.attach(f), 'EBADMSG', /not an XPU window \(wrong magic\)/);
  throwsXpu(() => readStats(f), 'EBADMSG', /wrong magic/);
  fs.writeFileSync(f, '');
  throwsXpu(() => XpuWindow.attach(f), 'EBADMSG', /wrong magic/);
  throwsXpu(() => XpuWindow.attach(tmpWindow('missing')), 'ENOENT', /no such window/);
});

test('attach refuses another layout version and a wrong size', () => {
  const f = tmpWindow('version');
  XpuWindow.create(f, { ringBytes: 256 * 1024 }).close();
  const fd = fs.openSync(f, 'r+');
  fs.writeSync(fd, Buffer.from([99, 0, 0, 0]), 0, 4, 4); // version field
  fs.closeSync(fd);
  throwsXpu(() => XpuWindow.attach(f), 'EPROTONOSUPPORT', /unsupported window layout version/);

  const g = tmpWindow('size');
  XpuWindow.create(g, { ringBytes: 256 * 1024 }).close();
  fs.truncateSync(g, 4096 + 256 * 1024);
  throwsXpu(() => XpuWindow.attach(g), 'EMSGSIZE', /size does not match/);
  throwsXpu(() => readStats(g), 'EMSGSIZE', /size does not match/);
});

test('ports: both ends in one process link up, traffic counters move, close takes the link down', async () => {
  const why = canMakeNetns();
  if (why) return skip('xpu ports', why);
  const a = `${tag}-a`;
  const b = `${tag}-b`;
  namespaces.push(a, b);
  const nsA = addNetns(a);
  const nsB = addNetns(b);
  const f = tmpWindow('ports');
  const w = XpuWindow.create(f);
  try {
    const host = w.openPort('host', nsA, 'xpu0');
    const dpu = w.openPort('dpu', nsB, 'xpu0');
    assert.ok(await host.waitUp(3000), 'host end up');
    assert.ok(await dpu.waitUp(3000), 'dpu end up');
    assert.ok(devices(a).includes('xpu0'));
    execFileSync('ip', ['-n', a, 'addr', 'add', '169.254.77.1/30', 'dev', 'xpu0']);
    execFileSync('ip', ['-n', b, 'addr', 'add', '169.254.77.2/30', 'dev', 'xpu0']);
    // ARP alone makes frames cross both ways; the connection itself is refused.
    spawnSync('ip', ['netns', 'exec', a, 'iperf3', '-c', '169.254.77.2', '-t', '1', '--connect-timeout', '1000'], {
      stdio: 'ignore',
      timeout: 5000,
    });
    await sleep(200);
    const s = readStats(f);
    assert.ok(s.linkUp, 'stats say the link is up');
    assert.is(s.host.state, 'attached');
    assert.is(s.host.pid, process.pid);
    assert.is(s.host.tap, 'xpu0');
    assert.is(s.dpu.netns, nsB);
    assert.ok(s.hostToDpu.frames > 0, 'host->dpu frames');
    assert.ok(s.dpuToHost.frames > 0, 'dpu->host frames');

    // The same side twice is refused, and leaves no device behind.
    throwsXpu(() => w.openPort('host', nsA, 'xpu1'), 'EBUSY', /already attached/);
    assert.not.ok(devices(a).includes('xpu1'));

    dpu.close();
    await sleep(300);
    assert.not.ok(host.linkUp(), 'host sees the link down at once when the peer closes');
    const t = readStats(f);
    assert.not.ok(t.linkUp);
    assert.is(t.dpu.state, 'closed');
    assert.ok(t.host.linkDowns >= 1);
    assert.not.ok(devices(b).includes('xpu0'), 'TAP device removed with its port');
  } finally {
    w.close(); // closes the host port too
  }
  assert.not.ok(devices(a).includes('xpu0'));
});

test('ports: bad namespace paths and a TAP name in use are refused cleanly', () => {
  const why = canMakeNetns();
  if (why) return skip('xpu port errors', why);
  const c = `${tag}-c`;
  namespaces.push(c);
  const nsC = addNetns(c);
  execFileSync('ip', ['-n', c, 'tuntap', 'add', 'dev', 'xpu0', 'mode', 'tap']); // a persistent TAP device
  const f = tmpWindow('errors');
  const w = XpuWindow.create(f);
  try {
    throwsXpu(() => w.openPort('host', `/run/netns/${tag}-none`, 'xpu0'), 'ENOENT', /does not exist/);
    throwsXpu(() => w.openPort('host', '/etc/hostname', 'xpu0'), 'EINVAL', /is not a network namespace/);
    throwsXpu(() => w.openPort('host', '/proc/self/ns/uts', 'xpu0'), 'EINVAL', /is not a network namespace/);
    throwsXpu(() => w.openPort('host', nsC, 'xpu0'), 'EEXIST', /already exists in/);
    throwsXpu(() => w.openPort('host', nsC, 'bad/name'), 'EINVAL', /invalid TAP device name/);
    throwsXpu(() => w.openPort('host', nsC, 'waytoolongtapname0'), 'EINVAL', /invalid TAP device name/);
    // Nothing left: the side is free again and a good open works.
    assert.ok(readStats(f).host.state !== 'attached');
    assert.equal(devices(c).sort(), ['xpu0']);
    const p = w.openPort('host', nsC, 'xpu1');
    p.close();
    assert.equal(devices(c).sort(), ['xpu0']);
  } finally {
    w.close();
  }
});

test('diag: the count of listeners even past the room given; bad fds refused', async () => {
  if (process.getuid?.() !== 0) return skip('xpu diag', 'needs root (setns)');
  const n = native();
  const E = os.constants.errno;
  assert.is(n.diagOpen(-1), -E.EBADF);
  assert.is(n.diagListeners(-1, Buffer.alloc(LISTENER_BYTES), 1), -E.EINVAL);
  const nsFd = fs.openSync('/proc/self/ns/net', 'r');
  const fd = n.diagOpen(nsFd);
  fs.closeSync(nsFd);
  assert.ok(fd >= 0, `xpu_diag_open: ${fd}`);
  const servers = [net.createServer(), net.createServer()];
  try {
    for (const s of servers) await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    const all = n.diagListeners(fd, Buffer.alloc(0), 0);
    assert.ok(all >= 2, `${all} listeners counted with no room`);
    const one = Buffer.alloc(LISTENER_BYTES, 0xee);
    assert.is(n.diagListeners(fd, one, 1), all, 'the same count with room for one');
    assert.ok(one[0] === 4 || one[0] === 6, 'the one record filled');
    assert.is(one[1], 0, 'reserved byte zero');
  } finally {
    for (const s of servers) s.close();
    fs.closeSync(fd);
  }
});

test.after(() => {
  for (const f of files) removeWindow(f);
  for (const n of namespaces) delNetns(n);
  // Leak check: nothing of this test remains.
  assert.equal(listNetns(tag), [], 'namespaces left behind');
  assert.equal(listWindows().filter((f) => f.includes(tag)), [], 'windows left behind');
});

test.run();
