// A warm spare (src/shim/spare.ts) becomes a pod's shim when a launcher hands it
// the pod: it stops listening as a spare and serves the pod's Task service.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { TtrpcClient } from '../../src/ttrpc';
import { decode, encode } from '../../src/proto';
import { waitFor } from '../../src/testbed/proc';

const main = path.resolve(__dirname, '../../src/shim/main.js');

test('a spare takes a pod, answers on the pod socket, exits after Shutdown', async () => {
  const dir = fs.mkdtempSync('/tmp/hp-spare-');
  const keep = net.createServer(); // stands in for containerd's socket and another pod's shim
  const other = net.createServer();
  try {
    const address = path.join(dir, 'containerd.sock');
    await new Promise<void>((r) => keep.listen(address, r));
    fs.mkdirSync(path.join(dir, 'state', 's'), { recursive: true });
    await new Promise<void>((r) => other.listen(path.join(dir, 'state', 's', 'otherpod'), r));
    const config = path.join(dir, 'shim.toml');
    fs.writeFileSync(config, `state_dir = "${dir}/state"\nrunc_shim = "/bin/false"\n`);
    const bundle = path.join(dir, 'bundle');
    fs.mkdirSync(bundle);
    fs.writeFileSync(path.join(bundle, 'config.json'), '{}');
    const spareSocket = path.join(dir, 'state', 's', 'spare-test');
    const spare = spawn(process.execPath, [main, '-namespace', 'ns', '-address', address, '-config', config, '-socket', spareSocket, 'spare'], { stdio: 'ignore' });
    const exited = new Promise<number | null>((r) => spare.once('exit', r));
    await waitFor('the spare socket', 10_000, () => fs.existsSync(spareSocket));

    const podSocket = path.join(dir, 'state', 's', 'pod1');
    const reply = await new Promise<string>((resolve, reject) => {
      const c = net.connect(spareSocket, () => c.write(`id=pod1\nsocket=${podSocket}\nbundle=${bundle}\n\n`));
      let text = '';
      c.on('data', (d) => (text += d));
      c.on('end', () => resolve(text));
      c.on('error', reject);
    });
    assert.is(reply, 'ok\n');
    assert.not.ok(fs.existsSync(spareSocket), 'no longer a spare');

    const client = await TtrpcClient.connect(podSocket, { namespace: 'ns' });
    const connect = decode<{ shim_pid: number }>('containerd.task.v2.ConnectResponse', await client.call('containerd.task.v2.Task', 'Connect', encode('containerd.task.v2.ConnectRequest', { id: 'pod1' })));
    assert.is(connect.shim_pid, spare.pid);
    await client.call('containerd.task.v2.Task', 'Shutdown', encode('containerd.task.v2.ShutdownRequest', { id: 'pod1' })).catch(() => null);
    client.close();
    assert.is(await exited, 0);
    assert.not.ok(fs.existsSync(podSocket), 'the pod socket is removed at exit');
  } finally {
    keep.close();
    other.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('an idle spare leaves when no pod shim is left', async () => {
  const dir = fs.mkdtempSync('/tmp/hp-spare-');
  const keep = net.createServer();
  try {
    const address = path.join(dir, 'containerd.sock');
    await new Promise<void>((r) => keep.listen(address, r));
    fs.mkdirSync(path.join(dir, 's'));
    const spareSocket = path.join(dir, 's', 'spare-idle');
    const spare = spawn(process.execPath, [main, '-namespace', 'ns', '-address', address, '-socket', spareSocket, 'spare'], { stdio: 'ignore' });
    const code = await new Promise<number | null>((r) => spare.once('exit', r));
    assert.is(code, 0);
    assert.not.ok(fs.existsSync(spareSocket));
  } finally {
    keep.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
