// The shim's configuration: the file named by the runtime options' ConfigPath
// (containerd's `options.ConfigPath`), else defaults. A missing file is not an
// error: a pod that offloads nothing needs no configuration.
import * as fs from 'node:fs';

export interface ShimConfig {
  // Debug tracing in the shim log (also HETEROPOD_DEBUG=1 or the -debug flag).
  debug: boolean;
  // Where per-pod state (the runc shim's working directory) and sockets live.
  stateDir: string;
  // The shim that host containers are delegated to.
  runcShim: string;
  // containerd.runc.v1.Options for it ([runc] table): runc's state root (empty:
  // runc's shim chooses), the runc binary, and the systemd cgroup driver.
  runc: { root: string; binaryName: string; systemdCgroup: boolean };
  // The DPU agent offloaded containers go to ([dpu] table): host:port, and the
  // mutual-TLS files (CA that signed the agent, the shim's certificate and key).
  // No address: no DPU; offload falls back (prefer) or fails (require).
  dpu: { address: string; ca: string; cert: string; key: string; timeoutMs: number };
  // The XPU link of an offloading pod ([xpu] table): how the pump threads of its
  // host end wait for frames. "sleep" (the default) never spins, so the link
  // costs the host CPU only for the frames it moves; "elastic" spins briefly
  // before sleeping (lower latency per burst, paid in host CPU); "poll" spins.
  xpu: { hostMode: HostMode };
}

// Modes of src/xpu/native's MODES, the default first; named here, not imported,
// so that reading the config does not load libxpu's binding (koffi) in every shim.
export const HOST_MODES = ['sleep', 'elastic', 'poll'] as const;
export type HostMode = (typeof HOST_MODES)[number];

export const DEFAULT_CONFIG_PATH = '/etc/heteropod/shim.toml';

export function defaultConfig(): ShimConfig {
  return { debug: false, stateDir: '/run/heteropod-shim', runcShim: 'containerd-shim-runc-v2', runc: { root: '', binaryName: '', systemdCgroup: false }, dpu: { address: '', ca: '', cert: '', key: '', timeoutMs: 5000 }, xpu: { hostMode: 'sleep' } };
}

// A small TOML subset: comments, [section] headers and `key = value` with strings,
// booleans and numbers. Keys are returned as "section.key".
export function parseToml(text: string): Map<string, string | boolean | number> {
  const out = new Map<string, string | boolean | number>();
  let section = '';
  text.split('\n').forEach((raw, index) => {
    const line = raw.replace(/^\s+|\s+$/g, '');
    if (line === '' || line.startsWith('#')) return;
    const header = /^\[([A-Za-z0-9_.\-"]+)\]$/.exec(line);
    if (header) {
      section = header[1].replace(/"/g, '');
      return;
    }
    const kv = /^([A-Za-z0-9_\-]+)\s*=\s*(.+?)\s*(#.*)?$/.exec(line);
    if (!kv) throw new Error(`line ${index + 1}: cannot parse ${JSON.stringify(raw)}`);
    const key = section ? `${section}.${kv[1]}` : kv[1];
    const v = kv[2];
    if (/^"(?:[^"\\]|\\.)*"$/.test(v)) out.set(key, JSON.parse(v) as string);
    else if (/^'[^']*'$/.test(v)) out.set(key, v.slice(1, -1));
    else if (v === 'true' || v === 'false') out.set(key, v === 'true');
    else if (/^-?\d+(\.\d+)?$/.test(v)) out.set(key, Number(v));
    else throw new Error(`line ${index + 1}: unsupported value ${JSON.stringify(v)}`);
  });
  return out;
}

export function loadConfig(path: string | undefined): ShimConfig {
  const config = defaultConfig();
  const file = path || DEFAULT_CONFIG_PATH;
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return withEnv(config);
    throw new Error(`read shim config ${file}: ${(err as Error).message}`);
  }
  let values: Map<string, string | boolean | number>;
  try {
    values = parseToml(text);
  } catch (err) {
    throw new Error(`shim config ${file}: ${(err as Error).message}`);
  }
  const str = (k: string): string | undefined => {
    const v = values.get(k);
    if (v === undefined) return undefined;
    if (typeof v !== 'string') throw new Error(`shim config ${file}: ${k} must be a string`);
    return v;
  };
  const debug = values.get('debug');
  if (debug !== undefined && typeof debug !== 'boolean') throw new Error(`shim config ${file}: debug must be true or false`);
  config.debug = debug ?? false;
  config.stateDir = str('state_dir') ?? config.stateDir;
  config.runcShim = str('runc_shim') ?? config.runcShim;
  config.runc.root = str('runc.root') ?? config.runc.root;
  config.runc.binaryName = str('runc.binary_name') ?? config.runc.binaryName;
  const systemd = values.get('runc.systemd_cgroup');
  if (systemd !== undefined && typeof systemd !== 'boolean') throw new Error(`shim config ${file}: runc.systemd_cgroup must be true or false`);
  config.runc.systemdCgroup = systemd ?? false;
  config.dpu.address = str('dpu.address') ?? config.dpu.address;
  config.dpu.ca = str('dpu.ca') ?? config.dpu.ca;
  config.dpu.cert = str('dpu.cert') ?? config.dpu.cert;
  config.dpu.key = str('dpu.key') ?? config.dpu.key;
  const timeout = values.get('dpu.timeout_ms');
  if (timeout !== undefined && (typeof timeout !== 'number' || timeout <= 0)) throw new Error(`shim config ${file}: dpu.timeout_ms must be a positive number`);
  config.dpu.timeoutMs = timeout ?? config.dpu.timeoutMs;
  if (config.dpu.address && !(config.dpu.ca && config.dpu.cert && config.dpu.key)) throw new Error(`shim config ${file}: [dpu] needs ca, cert and key with address`);
  const hostMode = str('xpu.host_mode');
  if (hostMode !== undefined && !(HOST_MODES as readonly string[]).includes(hostMode)) {
    throw new Error(`shim config ${file}: xpu.host_mode must be one of ${HOST_MODES.join(', ')}, not ${JSON.stringify(hostMode)}`);
  }
  config.xpu.hostMode = (hostMode as HostMode | undefined) ?? config.xpu.hostMode;
  return withEnv(config);
}

function withEnv(config: ShimConfig): ShimConfig {
  const env = process.env.HETEROPOD_DEBUG;
  if (env && env !== '0' && env !== 'false') config.debug = true;
  return config;
}
