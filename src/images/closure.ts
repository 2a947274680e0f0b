// The shared-library closure of a binary: every file the dynamic loader opens to
// start it, including the loader itself. `ldd` already resolves the transitive
// closure; the parser below is pure so it can be tested on captured output.
import { execFile } from 'node:child_process';

export interface LddLine {
  /** Name the binary asked for (`libc.so.6`), or the loader's path when it has no `=>`. */
  soname: string;
  /** Resolved path on this machine; undefined for the vDSO, which has no file. */
  path?: string;
  /** True when ldd printed `=> not found`. */
  missing: boolean;
}

/**
 * Parses `ldd` output. Lines look like
 *   libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)
 *   /lib64/ld-linux-x86-64.so.2 (0x...)
 *   linux-vdso.so.1 (0x...)
 *   libfoo.so.1 => not found
 */
export function parseLddOutput(text: string): LddLine[] {
  const lines: LddLine[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line === 'statically linked' || line === 'not a dynamic executable') continue;
    const arrow = line.indexOf(' => ');
    if (arrow >= 0) {
      const soname = line.slice(0, arrow).trim();
      const rest = line.slice(arrow + 4).trim();
      if (rest.startsWith('not found')) {
        lines.push({ soname, missing: true });
        continue;
      }
      const resolved = rest.replace(/\s*\(0x[0-9a-f]+\)$/i, '').trim();
      lines.push({ soname, path: resolved.startsWith('/') ? resolved : undefined, missing: false });
      continue;
    }
    const name = line.replace(/\s*\(0x[0-9a-f]+\)$/i, '').trim();
    lines.push({ soname: name, path: name.startsWith('/') ? name : undefined, missing: false });
  }
  return lines;
}

function runLdd(binary: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile('ldd', [binary], { maxBuffer: 4 << 20 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') {
        reject(new Error(`run ldd on ${binary}: ${err.message}`));
        return;
      }
      resolve({ code: err ? Number(err.code) : 0, stdout, stderr });
    });
  });
}

/**
 * Absolute paths (as the loader names them, symlinks not resolved) of every shared
 * library `binary` needs, the dynamic loader included; [] for a static binary.
 * Sorted, so callers get the same order every time.
 */
export async function sharedLibraryClosure(binary: string): Promise<string[]> {
  const { code, stdout, stderr } = await runLdd(binary);
  const output = `${stdout}\n${stderr}`;
  if (code !== 0) {
    if (/not a dynamic executable|statically linked/.test(output)) return [];
    throw new Error(`ldd ${binary} failed (exit ${code}): ${stderr.trim() || stdout.trim()}`);
  }
  const lines = parseLddOutput(stdout);
  const missing = lines.filter((l) => l.missing).map((l) => l.soname);
  if (missing.length > 0) {
    throw new Error(`${binary} needs shared libraries this machine lacks: ${missing.join(', ')}`);
  }
  const paths = new Set<string>();
  for (const l of lines) if (l.path) paths.add(l.path);
  return [...paths].sort();
}
