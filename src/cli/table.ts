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

/** A container's CPU time (s) and memory working set (bytes) from a CRI ContainerStats; undefined where it reports none. */
export function containerUsage(stats: Record<string, unknown>): { cpuSeconds?: number; memoryBytes?: number } {
  const value = (part: unknown, name: string) => ((part as Record<string, { value?: unknown } | null> | null)?.[name] ?? undefined)?.value;
  const cpu = value(stats.cpu, 'usage_core_nano_seconds');
  const mem = value(stats.memory, 'working_set_bytes');
  return { cpuSeconds: cpu === undefined ? undefined : Number(cpu) / 1e9, memoryBytes: mem === undefined ? undefined : Number(mem) };
}

/** CPU seconds as the stats tables print them ("1.25s"), "-" when unknown. */
export function cpuTime(seconds: number | undefined): string {
  return seconds === undefined ? '-' : `${seconds.toFixed(2)}s`;
}

/** Bytes as the stats tables print them ("3.0MiB"), "-" when unknown. */
export function mebibytes(bytes: number | undefined): string {
  return bytes === undefined ? '-' : `${(bytes / 1048576).toFixed(1)}MiB`;
}

/** "3 minutes ago" from nanoseconds since the epoch, as crictl prints it. */
export function ago(nanos: number | string): string {
  const ms = Number(nanos) / 1e6;
  if (!ms) return '';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  const [n, unit] = s < 60 ? [s, 'second'] : s < 3600 ? [Math.floor(s / 60), 'minute'] : s < 86400 ? [Math.floor(s / 3600), 'hour'] : [Math.floor(s / 86400), 'day'];
  return n <= 1 && unit === 'second' ? 'Less than a second ago' : `${n} ${unit}${n === 1 ? '' : 's'} ago`;
}
