// What the benchmark scripts share: their command-line values and summary statistics.

/** `--name VALUE` from the command line, else `fallback`. */
export function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}

export interface Stats {
  median: number;
  p90: number;
  mean: number;
}

/** Median and p90 by nearest rank, and the mean. */
export function stats(values: number[]): Stats {
  const s = [...values].sort((a, b) => a - b);
  const at = (q: number): number => s[Math.min(s.length - 1, Math.floor(q * s.length))];
  return { median: at(0.5), p90: at(0.9), mean: values.reduce((a, b) => a + b, 0) / values.length };
}
