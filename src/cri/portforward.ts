// CRI PortForward, the client side: what `crictl port-forward` and
// `kubectl port-forward` do. PortForward answers with a one-use URL on the
// runtime's streaming server; the connection to it is a WebSocket speaking
// "v4.channel.k8s.io": every message starts with a channel byte, and port i of
// the request has channel 2i for data and 2i+1 for errors. The first two bytes
// the server sends on each channel are the port, little-endian. The runtime dials
// localhost:PORT inside the pod's network namespace.
//
// One request, one port, one TCP connection: `dialPortForward` gives it as a
// Duplex stream; `forwardLocalPort` listens on 127.0.0.1 and makes one per client.
import * as net from 'node:net';
import { Duplex } from 'node:stream';
import type { CriClient } from './client';
import { CHANNEL_PROTOCOL, connectWebSocket, WebSocketClient } from './websocket';

const DATA = 0;
const ERROR = 1;

export class PortForwardStream extends Duplex {
  private readonly prefix = [2, 2]; // port bytes still to strip, per channel
  private errorText = '';

  constructor(private readonly ws: WebSocketClient, readonly port: number) {
    super({ allowHalfOpen: false });
    ws.on('message', (m: Buffer) => this.receive(m));
    ws.on('close', () => {
      if (this.errorText) this.destroy(this.failure());
      else this.push(null);
    });
    ws.on('error', (err: Error) => this.destroy(err));
  }

  private failure(): Error {
    return new Error(`port-forward to port ${this.port}: ${this.errorText.trim()}`);
  }

  private receive(m: Buffer): void {
    const channel = m[0];
    if (channel !== DATA && channel !== ERROR) return;
    let data = m.subarray(1);
    const strip = Math.min(this.prefix[channel], data.length);
    this.prefix[channel] -= strip;
    data = data.subarray(strip);
    if (data.length === 0) return;
    if (channel === ERROR) {
      this.errorText += data.toString();
      return;
    }
    if (!this.push(Buffer.from(data))) this.ws.pause();
  }

  override _read(): void {
    this.ws.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    if (this.ws.sendOn(DATA, chunk)) done();
    else this.ws.onDrain(() => done());
  }

  override _destroy(err: Error | null, done: (err: Error | null) => void): void {
    this.ws.close();
    done(err);
  }
}

/** One TCP connection to `port` in the pod's network namespace, through the runtime. */
export async function dialPortForward(cri: CriClient, podSandboxId: string, port: number): Promise<PortForwardStream> {
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`port-forward: port ${port} is not a TCP port (1-65535)`);
  const url = await cri.portForward(podSandboxId, [port]);
  const ws = await connectWebSocket(url, CHANNEL_PROTOCOL);
  return new PortForwardStream(ws, port);
}

export interface LocalForward {
  /** The local port (chosen by the kernel when 0 was asked for). */
  port: number;
  close(): Promise<void>;
}

/**
 * Listens on 127.0.0.1:`localPort` and joins every client to `remotePort` in the
 * pod. `onError` hears about a client whose forward failed (the client is closed).
 */
export function forwardLocalPort(cri: CriClient, podSandboxId: string, localPort: number, remotePort: number, onError: (err: Error) => void): Promise<LocalForward> {
  const clients = new Set<net.Socket>();
  const server = net.createServer((client) => {
    clients.add(client);
    client.on('close', () => clients.delete(client));
    client.pause();
    dialPortForward(cri, podSandboxId, remotePort).then(
      (remote) => {
        client.pipe(remote).pipe(client);
        const fail = (err: Error) => {
          onError(err);
          client.destroy();
        };
        remote.on('error', fail);
        client.on('error', () => remote.destroy());
        client.resume();
      },
      (err: Error) => {
        onError(err);
        client.destroy();
      },
    );
  });
  return new Promise((resolve, reject) => {
    server.once('error', (err) => reject(new Error(`listen on 127.0.0.1:${localPort}: ${err.message}`)));
    server.listen(localPort, '127.0.0.1', () => {
      resolve({
        port: (server.address() as net.AddressInfo).port,
        close: () =>
          new Promise((done) => {
            for (const c of clients) c.destroy();
            server.close(() => done());
          }),
      });
    });
  });
}
