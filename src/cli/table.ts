// Output for people (aligned columns, like crictl) and for scripts (-o json).
export type OutputFormat = 'table' | 'json';

export function parseOutputFormat(value: string): OutputFormat {
  if (value === 'table' || value === 'json') return value;
  throw new Error(`output format ${JSON.stringify(value)}: expected table or json`);
}

export function renderTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join('   ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n') + '\n';
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, (_k, v) => (Buffer.isBuffer(v) ? v.toString() : v), 2) + '\n');
}

export function shortId(id: string): string {
  return id.slice(0, 13);
}

/** "3 minutes ago" from nanoseconds since the epoch, as crictl prints it. */
export function ago(nanos: number | string): string {
  const ms = Number(nanos) / 1e6;
  if (!ms) return '';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  const [n, unit] = s < 60 ? [s, 'second'] : s < 3600 ? [Math.floor(s / 60), 'minute'] : s < 86400 ? [Math.floor(s / 3600), 'hour'] : [Math.floor(s / 86400), 'day'];
  return n <= 1 && unit === 'second' ? 'Less than a second ago' : `${n} ${unit}${n === 1 ? '' : 's'} ago`;
}
