// `heteropod install`: makes this checkout's shim the runtime of containerd
// handler `heteropod` on this node: the shim on PATH, a containerd config drop-in,
// a default shim config, the node daemon's systemd unit, and the Kubernetes
// RuntimeClass that selects it; and heteropod-agent-call, which asks the DPU
// agent with this node's shim config.
// Everything lands under `root` (default /) so a package build or a test can
// install into a staging directory.
import * as fs from 'node:fs';
import * as path from 'node:path';

export const HANDLER = 'heteropod';
export const RUNTIME_TYPE = 'io.containerd.heteropod.v2';
export const SHIM_BINARY = 'containerd-shim-heteropod-v2';
export const AGENT_CALL_BINARY = 'heteropod-agent-call';

export interface InstallOptions {
  root: string;
  binDir: string; // on containerd's PATH
  dropInDir: string; // a directory containerd's config `imports`
  configPath: string; // the shim's config (options.ConfigPath)
  systemdDir: string; // where the node daemon's unit goes
  containerdConfig: string; // containerd's main config, checked for the import
  repoRoot: string;
  nodePath: string;
}

export interface InstallResult {
  written: string[];
  notes: string[];
}

export function dropIn(configPath: string): string {
  const cri = 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes.heteropod';
  return `# Written by heteropod install: the HeteroPod runtime handler.
version = 2

[${cri}]
  runtime_type = "${RUNTIME_TYPE}"
  # Pod annotations the shim reads (heteropod.io/offload and friends).
  pod_annotations = ["heteropod.io/*"]

[${cri}.options]
  ConfigPath = "${configPath}"
`;
}

export function defaultShimConfig(): string {
  return `# HeteroPod shim configuration (read at every shim start; absent means defaults).
# debug = false                        # or HETEROPOD_DEBUG=1 in containerd's environment
# state_dir = "/run/heteropod-shim"     # per-pod sockets and state
# runc_shim = "containerd-shim-runc-v2" # host containers are delegated to it

# [runc]                               # containerd.runc.v1.Options for host containers
# root = "/run/containerd/runc"
# systemd_cgroup = false
`;
}

export function runtimeClassManifest(): string {
  return `apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: ${HANDLER}
handler: ${HANDLER}
`;
}

export const NODE_UNIT = 'heteropod-node.service';

/** The node daemon (in C, src/noded) in a built checkout. */
export const NODE_DAEMON_BINARY = 'heteropod-noded';
export const nodeDaemonBinary = (repoRoot: string): string => path.join(repoRoot, 'build', NODE_DAEMON_BINARY);

/**
 * Node.js flags of the node daemon written in TypeScript (src/shim/node-main.ts),
 * which the test bed still runs when told (HETEROPOD_NODE_DAEMON=node): a young
 * generation of 1 MiB semi-spaces and V8's lite mode, to keep its memory down.
 */
export const NODE_DAEMON_FLAGS = ['--max-semi-space-size=1', '--lite-mode'];

/** The TypeScript node daemon's entry point in a built checkout. */
export const nodeDaemonMain = (repoRoot: string): string => path.join(repoRoot, 'dist', 'src', 'shim', 'node-main.js');

function shimLauncher(repoRoot: string): string {
  const launcher = path.join(repoRoot, 'build', SHIM_BINARY);
  return `#!/bin/sh
# Installed by heteropod install from ${repoRoot}.
exec ${launcher} "$@"
`;
}

// heteropod-agent-call with the shim's config unless told another.
function agentCallLauncher(repoRoot: string, configPath: string): string {
  return `#!/bin/sh
# Installed by heteropod install from ${repoRoot}: the DPU agent asked with this node's shim config.
exec ${path.join(repoRoot, 'build', AGENT_CALL_BINARY)} --config ${configPath} "$@"
`;
}

/**
 * The node daemon's unit. Restart=always: a crash costs the pods nothing but the
 * outage (their proxies hold containerd's connections). KillMode=process: a stop
 * or restart ends the daemon alone. Its PATH finds node first: the programs it
 * runs for rare work (heteropod layers, the sandbox's clean-up hook) are Node.js.
 */
export function nodeUnit(nodePath: string, repoRoot: string, configPath: string): string {
  const dirs = [path.dirname(nodePath), '/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];
  return `# Written by heteropod install: the HeteroPod node daemon.
[Unit]
Description=HeteroPod node daemon (the DPU side of offloading pods)
After=containerd.service

[Service]
Environment=PATH=${[...new Set(dirs)].join(':')}
ExecStart=${nodeDaemonBinary(repoRoot)} --config ${configPath}
Restart=always
RestartSec=1
KillMode=process

[Install]
WantedBy=multi-user.target
`;
}

// Writes a file atomically (rename over), creating its directory.
function put(file: string, text: string, mode: number): void {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o755 });
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, text, { mode });
  fs.renameSync(tmp, file);
}

export function install(o: InstallOptions): InstallResult {
  const at = (p: string): string => path.join(o.root, p);
  for (const built of [path.join(o.repoRoot, 'dist', 'src', 'shim', 'main.js'), path.join(o.repoRoot, 'build', SHIM_BINARY), path.join(o.repoRoot, 'build', AGENT_CALL_BINARY), nodeDaemonBinary(o.repoRoot)]) {
    if (!fs.existsSync(built)) throw new Error(`install: ${built} is missing; build first (make build)`);
  }
  const written: string[] = [];
  const notes: string[] = [];
  const done: string[] = [];
  try {
    const shim = at(path.join(o.binDir, SHIM_BINARY));
    put(shim, shimLauncher(o.repoRoot), 0o755);
    done.push(shim);
    const drop = at(path.join(o.dropInDir, 'heteropod.toml'));
    put(drop, dropIn(o.configPath), 0o644);
    done.push(drop);
    const unit = at(path.join(o.systemdDir, NODE_UNIT));
    put(unit, nodeUnit(o.nodePath, o.repoRoot, o.configPath), 0o644);
    done.push(unit);
    const agentCall = at(path.join(o.binDir, AGENT_CALL_BINARY));
    put(agentCall, agentCallLauncher(o.repoRoot, o.configPath), 0o755);
    done.push(agentCall);
    written.push(shim, drop, unit, agentCall);
    const config = at(o.configPath);
    if (!fs.existsSync(config)) {
      put(config, defaultShimConfig(), 0o644);
      written.push(config);
    } else {
      notes.push(`kept the existing shim config ${config}`);
    }
  } catch (err) {
    // Roll back what this run wrote, so a failed install leaves no half handler.
    for (const f of done) fs.rmSync(f, { force: true });
    throw new Error(`install: ${(err as Error).message}`);
  }
  const main = at(o.containerdConfig);
  const imported = fs.existsSync(main) && new RegExp(`imports\\s*=\\s*\\[[^\\]]*${o.dropInDir.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}`).test(fs.readFileSync(main, 'utf8'));
  if (!imported) {
    notes.push(`${o.containerdConfig} does not import ${o.dropInDir}: add this line at its top, then restart containerd:\n    imports = ["${path.join(o.dropInDir, '*.toml')}"]`);
  } else {
    notes.push('restart containerd to load the handler: systemctl restart containerd');
  }
  notes.push(`start the node daemon, which offloading pods need: systemctl daemon-reload && systemctl enable --now ${NODE_UNIT}`);
  return { written, notes };
}
