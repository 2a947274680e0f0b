// Events reach containerd in the order published, through failures and retries.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { TtrpcServer, RpcError, Code } from '../../src/ttrpc';
import { EventForwarder } from '../../src/shim/events';
import { Logger } from '../../src/common/log';
import { forwardedEvent } from '../../src/taskapi/messages';
import { encode } from '../../src/proto';

function forwardRequest(topic: string): Buffer {
  return encode('containerd.services.events.ttrpc.v1.ForwardRequest', {
    envelope: { timestamp: { seconds: 1, nanos: 0 }, namespace: 'k8s.io', topic, event: { type_url: 'containerd.events.TaskStart', value: Buffer.alloc(0) } },
  });
}

test('in order, each retried until accepted; metadata passed on', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-events-'));
  const sock = path.join(dir, 'containerd.sock.ttrpc');
  const received: string[] = [];
  const namespaces: (string | undefined)[] = [];
  let failures = 2;
  const server = new TtrpcServer();
  server.register('containerd.services.events.ttrpc.v1.Events', 'Forward', async (payload, call) => {
    const { topic } = forwardedEvent(payload);
    if (topic === '/tasks/start' && failures-- > 0) throw new RpcError(Code.UNAVAILABLE, 'busy');
    received.push(topic);
    namespaces.push(call.namespace);
    return Buffer.alloc(0);
  });
  await server.listen(sock);
  const lines: string[] = [];
  const events = new EventForwarder(sock, new Logger({ write: (l) => lines.push(l) }, true));
  try {
    const md = [{ key: 'containerd-namespace-ttrpc', value: 'k8s.io' }];
    for (const topic of ['/tasks/create', '/tasks/start', '/tasks/exit', '/tasks/delete']) events.enqueue(forwardRequest(topic), md, topic);
    await events.flush(10_000);
    assert.equal(received, ['/tasks/create', '/tasks/start', '/tasks/exit', '/tasks/delete']);
    assert.equal(namespaces, ['k8s.io', 'k8s.io', 'k8s.io', 'k8s.io']);
  } finally {
    events.close();
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('containerd away for a moment: events wait for it, then arrive in order', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-events-'));
  const sock = path.join(dir, 'containerd.sock.ttrpc');
  const received: string[] = [];
  const events = new EventForwarder(sock, new Logger({ write: () => undefined }, false));
  const server = new TtrpcServer();
  server.register('containerd.services.events.ttrpc.v1.Events', 'Forward', async (payload) => {
    received.push(forwardedEvent(payload).topic);
    return Buffer.alloc(0);
  });
  try {
    events.enqueue(forwardRequest('/tasks/exit'), [], '/tasks/exit');
    events.enqueue(forwardRequest('/tasks/delete'), [], '/tasks/delete');
    await new Promise((r) => setTimeout(r, 400));
    await server.listen(sock); // containerd is back
    await events.flush(10_000);
    assert.equal(received, ['/tasks/exit', '/tasks/delete']);
  } finally {
    events.close();
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
