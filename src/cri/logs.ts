// The CRI container log format (what `crictl logs` reads): one record a line,
//   <RFC3339Nano time> <stdout|stderr> <P|F> <content>
// where P marks a partial line that the next record continues and F a full one.
import * as fs from 'node:fs';

export interface LogRecord {
  time: string;
  stream: 'stdout' | 'stderr';
  /** The complete line, partial records joined, without its newline. */
  line: string;
}

const RECORD = /^(\S+) (stdout|stderr) ([PF])(?: (.*))?$/;

/** Parses a whole log file's text; a malformed record is an error naming its line number. */
export function parseCriLog(text: string, source = 'log'): LogRecord[] {
  const out: LogRecord[] = [];
  const pending: Record<string, { time: string; parts: string[] }> = {};
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  lines.forEach((raw, i) => {
    const m = raw.match(RECORD);
    if (!m) throw new Error(`${source}:${i + 1}: not a CRI log record: ${JSON.stringify(raw.slice(0, 80))}`);
    const [, time, stream, tag, content = ''] = m;
    const part = (pending[stream] ??= { time, parts: [] });
    part.parts.push(content);
    if (tag === 'F') {
      out.push({ time: part.time, stream: stream as LogRecord['stream'], line: part.parts.join('') });
      delete pending[stream];
    }
  });
  return out;
}

export function readCriLog(file: string, tail = -1): LogRecord[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`container log ${file} does not exist`);
    throw err;
  }
  const records = parseCriLog(text, file);
  return tail >= 0 ? records.slice(Math.max(0, records.length - tail)) : records;
}
