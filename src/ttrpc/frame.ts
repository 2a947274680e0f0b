// ttrpc framing, as a pure decoder: bytes in, frames out, no I/O.
//
// A frame is a 10-byte big-endian header — uint32 data length, uint32 stream id,
// uint8 type, uint8 flags — followed by the data. ttrpc 1.1 (what containerd 1.6
// speaks) uses type 1 for a request and 2 for a response, flags 0; ttrpc 1.2 adds
// type 3, data on a stream, and the flags below. Data longer than
// MAX_DATA is refused: the decoder skips it and reports the frame as oversized so
// the connection can answer that stream with RESOURCE_EXHAUSTED and go on.

export const HEADER_LENGTH = 10;
export const MAX_DATA = 4 << 20;

export const enum FrameType {
  Request = 1,
  Response = 2,
  Data = 3,
}

/**
 * ttrpc 1.2's flags: a sender's side of a stream closed, still open, and a data
 * frame that carries no message (only with RemoteClosed, to close; a data frame
 * of no bytes without it is a message, an empty protobuf one).
 */
export const enum FrameFlags {
  RemoteClosed = 0x1,
  RemoteOpen = 0x2,
  NoData = 0x4,
}

export interface Frame {
  streamId: number;
  type: number;
  flags: number;
  data: Buffer;
}

export type Decoded =
  | { kind: 'frame'; frame: Frame }
  | { kind: 'oversized'; streamId: number; type: number; length: number };

export function encodeFrame(streamId: number, type: number, data: Uint8Array, flags = 0): Buffer {
  if (data.length > MAX_DATA) throw new RangeError(`ttrpc frame of ${data.length} bytes exceeds ${MAX_DATA}`);
  const out = Buffer.allocUnsafe(HEADER_LENGTH + data.length);
  out.writeUInt32BE(data.length, 0);
  out.writeUInt32BE(streamId >>> 0, 4);
  out.writeUInt8(type, 8);
  out.writeUInt8(flags, 9);
  out.set(data, HEADER_LENGTH);
  return out;
}

// Incremental decoder. Invariant: `chunks` holds exactly `buffered` bytes not yet
// consumed; `header` is set while the data of that frame is being collected (or,
// for an oversized frame, skipped: `skip` bytes remain to be dropped).
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private header: { length: number; streamId: number; type: number; flags: number } | null = null;
  private skip = 0;

  push(bytes: Buffer): Decoded[] {
    const out: Decoded[] = [];
    if (bytes.length > 0) {
      this.chunks.push(bytes);
      this.buffered += bytes.length;
    }
    for (;;) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, this.buffered);
        this.take(n);
        this.skip -= n;
        if (this.skip > 0) return out;
      }
      if (this.header === null) {
        if (this.buffered < HEADER_LENGTH) return out;
        const h = this.take(HEADER_LENGTH);
        const header = { length: h.readUInt32BE(0), streamId: h.readUInt32BE(4), type: h.readUInt8(8), flags: h.readUInt8(9) };
        if (header.length > MAX_DATA) {
          out.push({ kind: 'oversized', streamId: header.streamId, type: header.type, length: header.length });
          this.skip = header.length;
          continue;
        }
        this.header = header;
      }
      if (this.buffered < this.header.length) return out;
      const data = this.take(this.header.length);
      const { streamId, type, flags } = this.header;
      this.header = null;
      out.push({ kind: 'frame', frame: { streamId, type, flags, data } });
    }
  }

  // Bytes held back: a partial header or frame. Zero at a frame boundary.
  get pending(): number {
    return this.buffered + (this.header ? HEADER_LENGTH : 0);
  }

  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    let joined: Buffer;
    if (this.chunks[0].length >= n) {
      joined = this.chunks[0];
    } else {
      joined = Buffer.concat(this.chunks);
      this.chunks = [joined];
    }
    const result = joined.subarray(0, n);
    const rest = joined.subarray(n);
    if (rest.length > 0) this.chunks[0] = rest;
    else this.chunks.shift();
    this.buffered -= n;
    // Copy so a frame never pins a large socket read in memory.
    return Buffer.from(result);
  }
}
