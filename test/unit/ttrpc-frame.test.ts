import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { FrameDecoder, encodeFrame, HEADER_LENGTH, MAX_DATA, Decoded } from '../../src/ttrpc/frame';

const frames = [
  encodeFrame(1, 1, Buffer.from('hello')),
  encodeFrame(3, 1, Buffer.alloc(0)),
  encodeFrame(0xfffffffd, 2, Buffer.from('a longer payload that spans more bytes'), 0),
];
const stream = Buffer.concat(frames);

function summary(out: Decoded[]): string[] {
  return out.map((d) => (d.kind === 'frame' ? `${d.frame.streamId}/${d.frame.type}/${d.frame.flags}/${d.frame.data.toString()}` : `oversized ${d.streamId} ${d.length}`));
}

const expected = ['1/1/0/hello', '3/1/0/', '4294967293/2/0/a longer payload that spans more bytes'];

test('header is 10 bytes, big-endian', () => {
  const f = encodeFrame(0x01020304, 2, Buffer.from([9, 9]), 7);
  assert.equal([...f.subarray(0, HEADER_LENGTH)], [0, 0, 0, 2, 1, 2, 3, 4, 2, 7]);
});

test('whole stream decodes at once', () => {
  assert.equal(summary(new FrameDecoder().push(stream)), expected);
});

test('split at every byte boundary (one and two cuts)', () => {
  for (let i = 0; i <= stream.length; i++) {
    const d = new FrameDecoder();
    const out = [...d.push(stream.subarray(0, i)), ...d.push(stream.subarray(i))];
    assert.equal(summary(out), expected, `cut at ${i}`);
    assert.is(d.pending, 0);
    for (let j = i; j <= stream.length; j += 7) {
      const d2 = new FrameDecoder();
      const out2 = [...d2.push(stream.subarray(0, i)), ...d2.push(stream.subarray(i, j)), ...d2.push(stream.subarray(j))];
      assert.equal(summary(out2), expected, `cuts at ${i}, ${j}`);
    }
  }
});

test('byte by byte', () => {
  const d = new FrameDecoder();
  const out: Decoded[] = [];
  for (const b of stream) out.push(...d.push(Buffer.from([b])));
  assert.equal(summary(out), expected);
});

test('oversized frame is reported once and skipped, stream stays in sync', () => {
  const header = Buffer.alloc(HEADER_LENGTH);
  header.writeUInt32BE(MAX_DATA + 1, 0);
  header.writeUInt32BE(5, 4);
  header.writeUInt8(1, 8);
  const big = Buffer.concat([header, Buffer.alloc(MAX_DATA + 1, 0x41), encodeFrame(7, 1, Buffer.from('next'))]);
  const d = new FrameDecoder();
  const out: Decoded[] = [];
  for (let off = 0; off < big.length; off += 65536) out.push(...d.push(big.subarray(off, off + 65536)));
  assert.equal(summary(out), [`oversized 5 ${MAX_DATA + 1}`, '7/1/0/next']);
});

test('encoder refuses data over the limit', () => {
  assert.throws(() => encodeFrame(1, 1, Buffer.alloc(MAX_DATA + 1)), /exceeds/);
});

test.run();
