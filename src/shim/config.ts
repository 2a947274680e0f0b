// The shim's configuration: the file named by the runtime options' ConfigPath
// (containerd's `options.ConfigPath`), else defaults. A missing file is not an
// error: a pod that offloads nothing needs no configuration. Anything else wrong
// with it is: an unknown key, a bad value, a line that does not parse.
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

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
  // The XPU link of an offloading pod ([xpu] table): who moves the frames of its
  // host end. "served" (the default): the DPU end serves the host's TAP device,
  // as a DPU serves a device it emulates for the host, so the host runs no pump
  // and its CPU does only its network stack's work for each frame. Otherwise
  // the node daemon's pump threads do, and the mode says how they wait:
  // "sleep" never spins (the host pays a wake-up per burst); "elastic" spins
  // briefly before sleeping (lower latency, paid in host CPU); "poll" spins.
  xpu: { hostMode: HostMode };
}

// Modes of src/xpu/native's MODES, the default first; named here, not imported,
// so that reading the config does not load libxpu's binding (koffi) in every shim.
export const HOST_MODES = ['served', 'sleep', 'elastic', 'poll'] as const;
export type HostMode = (typeof HOST_MODES)[number];

export const DEFAULT_CONFIG_PATH = '/etc/heteropod/shim.toml';
/** The config of a single-node setup made by `heteropod local up` (the test bed writes it there). */
export const LOCAL_CONFIG_PATH = '/run/heteropod/shim.toml';

export function defaultConfig(): ShimConfig {
  return { debug: false, stateDir: '/run/heteropod-shim', runcShim: 'containerd-shim-runc-v2', runc: { root: '', binaryName: '', systemdCgroup: false }, dpu: { address: '', ca: '', cert: '', key: '', timeoutMs: 5000 }, xpu: { hostMode: 'served' } };
}

// The one reader of the file is C (src/shim/shim-config.c), the launcher's; this
// runs it as `containerd-shim-heteropod-v2 config`, so the Node shim and the CLI
// accept and refuse exactly what `start` does. A config error is its one line,
// "<file>:<line>: <key>: <what is wrong>", unchanged.
export function configReader(): string {
  return path.resolve(__dirname, '..', '..', '..', 'build', 'containerd-shim-heteropod-v2');
}

export function loadConfig(file: string | undefined): ShimConfig {
  const reader = configReader();
  const args = ['config', '-config', file || DEFAULT_CONFIG_PATH];
  const r = spawnSync(reader, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 10_000 });
  if (r.status === 0) return withEnv(JSON.parse(r.stdout) as ShimConfig);
  if (r.status === 1 && r.stderr) throw new Error(r.stderr.replace(/\n$/, ''));
  const missing = (r.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
  const why = missing ? 'not built (make build)' : (r.error?.message ?? (r.signal ? `killed by ${r.signal}` : `exit ${r.status}`));
  throw new Error(`read shim config ${args[2]}: ${reader} config: ${why}${r.stderr ? `: ${r.stderr.trim()}` : ''}`);
}

function withEnv(config: ShimConfig): ShimConfig {
  const env = process.env.HETEROPOD_DEBUG;
  if (env && env !== '0' && env !== 'false') config.debug = true;
  return config;
}
