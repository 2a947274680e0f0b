// The WebSocket client side (RFC 6455) that CRI streaming needs: the runtime's
// streaming server answers PortForward (and Exec/Attach) URLs with WebSocket
// when asked for one of the "channel.k8s.io" subprotocols. Only what a client of
// that server uses: one subprotocol, binary messages, ping/pong and close.
//
// Frame: byte 0 = FIN (0x80) | opcode; byte 1 = MASK (0x80) | length (7 bits,
// 126 → 16-bit length follows, 127 → 64-bit); then the 4-byte mask key when
// masked; then the payload. A client masks every frame it sends; a server never
// masks.
import { createHash, randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import * as http from 'node:http';
import type { Socket } from 'node:net';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/** The streaming server's subprotocol for Exec and PortForward: binary messages, the first byte the channel. */
export const CHANNEL_PROTOCOL = 'v4.channel.k8s.io';

const enum Op {
  Continuation = 0x0,
  Text = 0x1,
  Binary = 0x2,
  Close = 0x8,
  Ping = 0x9,
  Pong = 0xa,
}

/** A frame to send, masked as a client must. */
export function encodeFrame(opcode: number, payload: Buffer, mask: Buffer = randomBytes(4)): Buffer {
  const n = payload.length;
  const lengthBytes = n < 126 ? 0 : n < 0x10000 ? 2 : 8;
  const head = Buffer.alloc(2 + lengthBytes + 4);
  head[0] = 0x80 | opcode;
  if (lengthBytes === 0) head[1] = 0x80 | n;
  else if (lengthBytes === 2) {
    head[1] = 0x80 | 126;
    head.writeUInt16BE(n, 2);
  } else {
    head[1] = 0x80 | 127;
    head.writeBigUInt64BE(BigInt(n), 2);
  }
  mask.copy(head, 2 + lengthBytes);
  const body = Buffer.alloc(n);
  for (let i = 0; i < n; i++) body[i] = payload[i] ^ mask[i & 3];
  return Buffer.concat([head, body]);
}

export interface Frame {
  fin: boolean;
  opcode: number;
  payload: Buffer;
}

/** Splits a byte stream into frames; what is left over waits for more bytes. */
export class FrameReader {
  private buffered: Buffer = Buffer.alloc(0);

  push(data: Buffer): Frame[] {
    this.buffered = this.buffered.length ? Buffer.concat([this.buffered, data]) : data;
    const frames: Frame[] = [];
    for (;;) {
      const b = this.buffered;
      if (b.length < 2) break;
      const masked = (b[1] & 0x80) !== 0;
      let length = b[1] & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (b.length < 4) break;
        length = b.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (b.length < 10) break;
        const big = b.readBigUInt64BE(2);
        if (big > BigInt(1 << 30)) throw new Error(`websocket frame of ${big} bytes`);
        length = Number(big);
        offset = 10;
      }
      const maskAt = offset;
      if (masked) offset += 4;
      if (b.length < offset + length) break;
      const payload = Buffer.from(b.subarray(offset, offset + length));
      if (masked) for (let i = 0; i < length; i++) payload[i] ^= b[maskAt + (i & 3)];
      frames.push({ fin: (b[0] & 0x80) !== 0, opcode: b[0] & 0x0f, payload });
      this.buffered = b.subarray(offset + length);
    }
    return frames;
  }
}

/**
 * An open WebSocket. Events: 'message' (Buffer, whole messages, text or binary),
 * 'close' (once, when the connection is gone for any reason), 'error'.
 */
export class WebSocketClient extends EventEmitter {
  private readonly reader = new FrameReader();
  private fragments: Buffer[] = [];
  private closed = false;

  constructor(private readonly socket: Socket, readonly protocol: string, head: Buffer) {
    super();
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => this.receive(d));
    socket.on('close', () => this.finish());
    socket.on('error', (err) => this.emit('error', err));
    if (head.length) setImmediate(() => this.receive(head));
  }

  /** Sends one binary message; false when the socket's buffer is full (wait for 'drain' on it). */
  send(data: Buffer): boolean {
    if (this.closed) return false;
    return this.socket.write(encodeFrame(Op.Binary, data));
  }

  /** Sends `data` on a channel of the channel protocol; as `send`. */
  sendOn(channel: number, data: Buffer): boolean {
    return this.send(Buffer.concat([Buffer.from([channel]), data]));
  }

  onDrain(fn: () => void): void {
    this.socket.once('drain', fn);
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  /** A close frame, then the socket ends. */
  close(): void {
    if (this.closed) return;
    this.socket.end(encodeFrame(Op.Close, Buffer.from([0x03, 0xe8]))); // 1000: normal closure
    this.finish();
  }

  private receive(data: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.reader.push(data);
    } catch (err) {
      this.emit('error', err);
      this.socket.destroy();
      return;
    }
    for (const f of frames) {
      if (f.opcode === Op.Ping) this.socket.write(encodeFrame(Op.Pong, f.payload));
      else if (f.opcode === Op.Close) {
        this.close();
        return;
      } else if (f.opcode === Op.Text || f.opcode === Op.Binary || f.opcode === Op.Continuation) {
        this.fragments.push(f.payload);
        if (f.fin) {
          const message = Buffer.concat(this.fragments);
          this.fragments = [];
          this.emit('message', message);
        }
      }
    }
  }

  private finish(): void {
    if (this.closed) return;
    this.closed = true;
    this.emit('close');
  }
}

/** Opens a WebSocket to an http:// URL, asking for `protocol`; rejects with the server's answer when refused. */
export function connectWebSocket(url: string, protocol: string, timeoutMs = 10_000): Promise<WebSocketClient> {
  const key = randomBytes(16).toString('base64');
  const accept = createHash('sha1').update(key + GUID).digest('base64');
  return new Promise((resolve, reject) => {
    const req = http.request(url, {
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Key': key,
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Protocol': protocol,
      },
      timeout: timeoutMs,
    });
    req.on('timeout', () => req.destroy(new Error(`${url}: no answer within ${timeoutMs} ms`)));
    req.on('error', (err) => reject(new Error(`websocket ${url}: ${err.message}`)));
    req.on('response', (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => reject(new Error(`websocket ${url}: the server answered ${res.statusCode} ${res.statusMessage}: ${body.trim()}`)));
    });
    req.on('upgrade', (res, socket, head) => {
      if (res.headers['sec-websocket-accept'] !== accept) {
        socket.destroy();
        return reject(new Error(`websocket ${url}: wrong Sec-WebSocket-Accept`));
      }
      const chosen = String(res.headers['sec-websocket-protocol'] ?? '');
      if (chosen !== protocol) {
        socket.destroy();
        return reject(new Error(`websocket ${url}: the server chose subprotocol ${JSON.stringify(chosen)}, not ${protocol}`));
      }
      socket.setTimeout(0);
      resolve(new WebSocketClient(socket, chosen, head));
    });
    req.end();
  });
}
