// Traffic for end-to-end tests, run inside a network namespace:
//   ip netns exec NS node dist/test/lib/traffic.js MODE ARGS...
// Every mode prints one JSON line and is bounded in time. Addresses are those of
// the test's own namespaces.
import { createHash, randomBytes } from 'node:crypto';
import * as dgram from 'node:dgram';
import * as net from 'node:net';

const sha = (b: Buffer) => createHash('sha256').update(b).digest();
const print = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');

/** Accept one TCP connection, hash everything it sends, answer with the hash. */
function tcpSink(addr: string, port: number): void {
  const server = net.createServer((sock) => {
    const h = createHash('sha256');
    let bytes = 0;
    sock.on('data', (d) => {
      h.update(d);
      bytes += d.length;
    });
    sock.on('end', () => {
      sock.end(h.digest('hex') + '\n');
      server.close();
      print({ bytes });
    });
  });
  server.listen(port, addr, () => print({ listening: true }));
  setTimeout(() => process.exit(3), 30_000).unref();
}

function tcpSend(addr: string, port: number, bytes: number): void {
  const data = randomBytes(bytes);
  const want = sha(data).toString('hex');
  const t0 = Date.now();
  const sock = net.connect({ host: addr, port, timeout: 5000 });
  let reply = '';
  sock.on('connect', () => sock.end(data));
  sock.on('data', (d) => (reply += d.toString()));
  sock.on('timeout', () => {
    print({ ok: false, error: 'timeout' });
    process.exit(1);
  });
  sock.on('error', (e) => {
    print({ ok: false, error: e.message });
    process.exit(1);
  });
  sock.on('close', () => print({ ok: reply.trim() === want, bytes, ms: Date.now() - t0 }));
}

/** Try to connect; report whether it worked and how long it took to find out. */
function tcpProbe(addr: string, port: number, timeoutMs: number): void {
  const t0 = Date.now();
  const sock = net.connect({ host: addr, port, timeout: timeoutMs });
  const done = (connected: boolean, error?: string) => {
    print({ connected, error, ms: Date.now() - t0 });
    sock.destroy();
    process.exit(0);
  };
  sock.on('connect', () => done(true));
  sock.on('timeout', () => done(false, 'timeout'));
  sock.on('error', (e) => done(false, e.message));
}

/** Datagrams carry the hash of their payload in front; count the good ones. */
function udpSink(addr: string, port: number, count: number): void {
  const s = dgram.createSocket('udp4');
  let good = 0;
  let bad = 0;
  let idle: NodeJS.Timeout | undefined;
  const finish = () => {
    print({ received: good + bad, good, bad });
    s.close();
  };
  s.on('message', (m) => {
    if (m.length >= 32 && sha(m.subarray(32)).equals(m.subarray(0, 32))) good++;
    else bad++;
    if (idle) clearTimeout(idle);
    if (good + bad >= count) finish();
    else idle = setTimeout(finish, 2000);
  });
  s.bind(port, addr, () => print({ listening: true }));
  setTimeout(finish, 20_000).unref();
}

async function udpSend(addr: string, port: number, count: number): Promise<void> {
  const s = dgram.createSocket('udp4');
  const sizes = [1, 100, 1400, 1472, 1473, 4000, 9000, 30000, 60000];
  for (let i = 0; i < count; i++) {
    const body = randomBytes(sizes[i % sizes.length]);
    await new Promise<void>((r, j) => s.send(Buffer.concat([sha(body), body]), port, addr, (e) => (e ? j(e) : r())));
    // Paced so that the receiving socket's buffer, not the link, is never the limit.
    if (body.length >= 9000 || i % 10 === 9) await new Promise((r) => setTimeout(r, 1));
  }
  s.close();
  print({ sent: count });
}

const [mode, addr, port, arg] = process.argv.slice(2);
switch (mode) {
  case 'tcp-sink': tcpSink(addr, Number(port)); break;
  case 'tcp-send': tcpSend(addr, Number(port), Number(arg)); break;
  case 'tcp-probe': tcpProbe(addr, Number(port), Number(arg)); break;
  case 'udp-sink': udpSink(addr, Number(port), Number(arg)); break;
  case 'udp-send': void udpSend(addr, Number(port), Number(arg)); break;
  default:
    process.stderr.write('usage: traffic.js tcp-sink|tcp-send|tcp-probe|udp-sink|udp-send ADDR PORT [ARG]\n');
    process.exit(2);
}
