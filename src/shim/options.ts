// Runtime options as containerd's CRI plugin sends them: a google.protobuf.Any
// holding runtimeoptions.v1.Options { type_url = 1; config_path = 2; }. Decoded by
// hand so `start` need not load protobufjs; only the two fields we read.

function* fields(buf: Uint8Array): Generator<{ field: number; bytes: Uint8Array }> {
  let i = 0;
  const varint = (): number => {
    let result = 0;
    let shift = 0;
    for (;;) {
      if (i >= buf.length) throw new Error('truncated varint');
      const b = buf[i++];
      result += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) return result;
      shift += 7;
      if (shift > 63) throw new Error('varint too long');
    }
  };
  while (i < buf.length) {
    const tag = varint();
    const field = Math.floor(tag / 8);
    switch (tag & 7) {
      case 0:
        varint();
        break;
      case 1:
        i += 8;
        break;
      case 5:
        i += 4;
        break;
      case 2: {
        const len = varint();
        if (i + len > buf.length) throw new Error('truncated field');
        yield { field, bytes: buf.subarray(i, i + len) };
        i += len;
        break;
      }
      default:
        throw new Error(`unsupported wire type ${tag & 7}`);
    }
    if (i > buf.length) throw new Error('truncated field');
  }
}

export interface RuntimeOptions {
  typeUrl: string;
  configPath: string;
}

// Empty input (no options table) gives empty strings.
export function decodeRuntimeOptions(any: Uint8Array): RuntimeOptions {
  const opts: RuntimeOptions = { typeUrl: '', configPath: '' };
  let anyType = '';
  let value: Uint8Array | null = null;
  for (const f of fields(any)) {
    if (f.field === 1) anyType = Buffer.from(f.bytes).toString('utf8');
    if (f.field === 2) value = f.bytes;
  }
  if (!value || !/runtimeoptions\.v1\.Options$/.test(anyType)) return opts;
  for (const f of fields(value)) {
    if (f.field === 1) opts.typeUrl = Buffer.from(f.bytes).toString('utf8');
    if (f.field === 2) opts.configPath = Buffer.from(f.bytes).toString('utf8');
  }
  return opts;
}
