// Go-style flags, as containerd passes them to a shim:
//   <shim> -namespace N -address A -publish-binary P -id ID [-bundle B] [-debug] start|delete
// Both `-flag value` and `-flag=value` are legal; `--flag` is accepted too.

export interface ShimFlags {
  namespace: string;
  address: string;
  publishBinary: string;
  id: string;
  bundle: string;
  debug: boolean;
  // Daemon-only flags, set by `start` when it spawns the long-lived process.
  socket: string;
  configPath: string;
  action: string;
}

const VALUED: Record<string, keyof ShimFlags> = {
  namespace: 'namespace',
  address: 'address',
  'publish-binary': 'publishBinary',
  id: 'id',
  bundle: 'bundle',
  socket: 'socket',
  config: 'configPath',
};

export function parseFlags(argv: string[]): ShimFlags {
  const flags: ShimFlags = { namespace: '', address: '', publishBinary: '', id: '', bundle: '', debug: false, socket: '', configPath: '', action: '' };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('-')) {
      if (flags.action) throw new Error(`unexpected argument ${JSON.stringify(arg)}`);
      flags.action = arg;
      continue;
    }
    const body = arg.replace(/^--?/, '');
    const eq = body.indexOf('=');
    const name = eq >= 0 ? body.slice(0, eq) : body;
    if (name === 'debug' || name === 'v') {
      if (name === 'debug') flags.debug = eq < 0 || body.slice(eq + 1) !== 'false';
      continue;
    }
    const key = VALUED[name];
    if (!key) throw new Error(`unknown flag -${name}`);
    let value: string;
    if (eq >= 0) value = body.slice(eq + 1);
    else {
      if (i + 1 >= argv.length) throw new Error(`flag -${name} needs a value`);
      value = argv[++i];
    }
    (flags as unknown as Record<string, string>)[key] = value;
  }
  return flags;
}

// The flags the long-lived daemon (or runc's shim) is started with.
export function formatFlags(f: Partial<ShimFlags>): string[] {
  const out: string[] = [];
  for (const [name, key] of Object.entries(VALUED)) {
    const v = f[key];
    if (typeof v === 'string' && v !== '') out.push(`-${name}`, v);
  }
  if (f.debug) out.push('-debug');
  return out;
}
