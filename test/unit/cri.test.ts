import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { CriClient, endpointSocketPath } from '../../src/cri/client';
import { containerConfig, parseConfigText, podSandboxConfig } from '../../src/cri/config';
import { parseCriLog } from '../../src/cri/logs';
import { renderTable } from '../../src/cli/table';

test('CRI log records: partial lines join, streams stay apart', () => {
  const text = [
    '2026-11-21T07:00:00.000000001Z stdout P hel',
    '2026-11-21T07:00:00.000000002Z stderr F oops',
    '2026-11-21T07:00:00.000000003Z stdout F lo',
    '2026-11-21T07:00:00.000000004Z stdout F ',
    '',
  ].join('\n');
  assert.equal(
    parseCriLog(text).map((r) => [r.stream, r.line]),
    [['stderr', 'oops'], ['stdout', 'hello'], ['stdout', '']],
  );
  assert.is(parseCriLog(text)[1].time, '2026-11-21T07:00:00.000000001Z', 'a joined line keeps its first time');
  assert.throws(() => parseCriLog('garbage\n', 'x.log'), /x\.log:1: not a CRI log record/);
});

test('configs: YAML or JSON, camelCase or snake_case, map keys kept', () => {
  const pod = podSandboxConfig(parseConfigText('metadata: {name: web}\nlogDirectory: /l\nlabels: {appName: x}\nlinux: {securityContext: {namespaceOptions: {pid: CONTAINER}}}\n', 'pod'));
  assert.is(pod.log_directory, '/l');
  assert.equal(pod.labels, { appName: 'x' });
  assert.is((pod.metadata as Record<string, unknown>).namespace, 'default');
  const opts = ((pod.linux as any).security_context as any).namespace_options;
  assert.is(opts.pid, 'CONTAINER');
  const ctr = containerConfig(parseConfigText('{"metadata":{"name":"c"},"image":{"image":"i"},"envs":[{"key":"A","value":1}]}', 'ctr'));
  assert.equal(ctr.envs, [{ key: 'A', value: '1' }]);
});

test('configs: each mistake is named with its path', () => {
  assert.throws(() => parseConfigText('a: [', 'pod config p.yaml'), /pod config p\.yaml does not parse/);
  assert.throws(() => parseConfigText('- 1\n', 'pod config p.yaml'), /expected an object at the top level/);
  assert.throws(() => podSandboxConfig({ metadata: { name: 'x', nmae: 'y' } }), /pod config\.metadata\.nmae: unknown field of PodSandboxMetadata/);
  assert.throws(() => podSandboxConfig({ linux: {} }), /metadata\.name is required/);
  assert.throws(() => podSandboxConfig({ metadata: { name: 'x' }, linux: { security_context: { namespace_options: { pid: 'SHARED' } } } }), /"SHARED" is not one of POD, CONTAINER, NODE, TARGET/);
  assert.throws(() => containerConfig({ metadata: { name: 'c' } }), /image\.image is required/);
  assert.throws(() => containerConfig({ metadata: { name: 'c' }, image: { image: 'i' }, tty: 'yes' }), /container config\.tty: expected bool/);
});

test('endpoints: unix sockets only, and a missing one is said plainly', () => {
  assert.is(endpointSocketPath('unix:///run/x.sock'), '/run/x.sock');
  assert.is(endpointSocketPath('/run/x.sock'), '/run/x.sock');
  assert.throws(() => endpointSocketPath('tcp://1.2.3.4:1'), /only unix sockets are supported/);
  assert.throws(() => CriClient.connect('unix:///nonexistent/cri.sock'), /socket \/nonexistent\/cri\.sock does not exist/);
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'hp-cri-')), 'plain');
  fs.writeFileSync(file, '');
  assert.throws(() => CriClient.connect(file), /is not a socket/);
  fs.rmSync(path.dirname(file), { recursive: true });
});

test('a runtime that does not answer CRI gives an error naming the call', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-cri-'));
  const sock = path.join(dir, 'silent.sock');
  const server = net.createServer((c) => c.destroy());
  await new Promise<void>((r) => server.listen(sock, r));
  const cri = CriClient.connect(sock, 2000);
  try {
    await cri.version();
    assert.unreachable('Version should fail');
  } catch (err) {
    assert.match((err as Error).message, /^CRI Version: /);
  } finally {
    cri.close();
    server.close();
    fs.rmSync(dir, { recursive: true });
  }
});

test('tables align their columns', () => {
  assert.is(renderTable(['A', 'BB'], [['xxx', 'y'], ['z', '']]), 'A     BB\nxxx   y\nz\n');
});

test.run();
