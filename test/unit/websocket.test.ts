// The WebSocket frames the CRI streaming client sends and reads (src/cri/websocket.ts):
// the three length forms, masking, frames split across reads and several in one.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { encodeFrame, FrameReader } from '../../src/cri/websocket';

const MASK = Buffer.from([0x11, 0x22, 0x33, 0x44]);

test('a client frame: FIN, opcode, the mask bit and key, the payload masked', () => {
  const f = encodeFrame(0x2, Buffer.from('abc'), MASK);
  assert.equal([...f.subarray(0, 6)], [0x82, 0x80 | 3, 0x11, 0x22, 0x33, 0x44]);
  assert.equal([...f.subarray(6)], [0x61 ^ 0x11, 0x62 ^ 0x22, 0x63 ^ 0x33]);
});

test('lengths: 125 inline, 126..65535 in 16 bits, above in 64 bits; each read back whole', () => {
  for (const [n, headLength] of [[0, 6], [125, 6], [126, 8], [65535, 8], [65536, 14], [300_000, 14]]) {
    const payload = Buffer.alloc(n, 7);
    const f = encodeFrame(0x2, payload, MASK);
    assert.is(f.length, headLength + n, `frame of ${n}`);
    const frames = new FrameReader().push(f);
    assert.is(frames.length, 1);
    assert.is(frames[0].opcode, 0x2);
    assert.ok(frames[0].fin);
    assert.ok(frames[0].payload.equals(payload), `payload of ${n} unmasked`);
  }
});

test('frames split at every byte and packed together come out the same', () => {
  const server = (op: number, text: string) => {
    const p = Buffer.from(text);
    return Buffer.concat([Buffer.from([0x80 | op, p.length]), p]); // a server's frame: not masked
  };
  const bytes = Buffer.concat([server(0x2, '\x00\x50\x00'), server(0x9, 'ping'), encodeFrame(0x1, Buffer.from('hello'), MASK)]);
  for (let cut = 0; cut <= bytes.length; cut++) {
    const reader = new FrameReader();
    const frames = [...reader.push(bytes.subarray(0, cut)), ...reader.push(bytes.subarray(cut))];
    assert.equal(
      frames.map((f) => [f.opcode, f.payload.toString('latin1')]),
      [[0x2, '\x00\x50\x00'], [0x9, 'ping'], [0x1, 'hello']],
      `cut at ${cut}`,
    );
  }
});

test('a frame claiming more than a GiB is refused', () => {
  const head = Buffer.from([0x82, 127, 0, 0, 0, 1, 0, 0, 0, 0]);
  assert.throws(() => new FrameReader().push(head), /frame of 4294967296 bytes/);
});

test.run();
