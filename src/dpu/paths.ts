// Names and places of the emulated DPU. Everything `dpu up` makes is under these
// names, so `dpu down` (and the leak check) can find all of it without records.
//
// Host view of the state directory:
//   /var/lib/heteropod/dpu/pki/        CA, agent and shim keys (host only)
//   /var/lib/heteropod/dpu/agent.pid   agent.log   dpu.json
//   /var/lib/heteropod/dpu/root/       the DPU's own state dir; inside the DPU's
//                                      mount namespace it appears as
//                                      /var/lib/heteropod/dpu, so the DPU never
//                                      sees the CA key or the shim's key.
import * as path from 'node:path';
import { AGENT_DEFAULTS } from '../agent/defaults';

export const DPU_STATE_DIR = AGENT_DEFAULTS.stateDir;
const PKI = `${DPU_STATE_DIR}/pki`;

export const DPU = {
  netns: 'hp-dpu',
  netnsFile: '/run/netns/hp-dpu',
  /** The management link: BlueField calls both ends tmfifo_net0. */
  link: 'tmfifo_net0',
  /** Name of the DPU end while it is still in the host namespace, before it is moved and renamed. */
  linkPeerTemp: 'hp-dpu-tmfifo',
  hostAddress: '192.168.100.1',
  dpuAddress: AGENT_DEFAULTS.address,
  prefixLength: 30,
  agentPort: AGENT_DEFAULTS.port,
  /**
   * The node's uplink, as on a BlueField in DPU mode: the DPU owns the port to
   * the network (`p0`), and the host's PF reaches it only through the DPU, whose
   * end of the PF is the representor `pf0hpf`. The fabric is a namespace that
   * stands for the network outside the node (other nodes, clients).
   */
  uplink: {
    dev: 'p0',
    address: '10.233.100.2',
    /** the fabric's end of the wire, in its namespace */
    fabricDev: 'node0',
    fabricAddress: '10.233.100.1',
    prefixLength: 24,
    fabricNetns: 'hp-fabric',
    fabricNetnsFile: '/run/netns/hp-fabric',
    /** Name of the fabric end while it is still in the host namespace. */
    fabricDevTemp: 'hp-fab-node0',
  },
  pf: {
    /** the host's end of its PF link (the node's NIC as the host sees it) */
    hostDev: 'hp-pf0',
    hostAddress: '10.233.101.1',
    /** the PF's representor on the DPU */
    dpuDev: 'pf0hpf',
    dpuDevTemp: 'hp-pf0hpf',
    dpuAddress: '10.233.101.2',
    prefixLength: 30,
  },
  /** The pod network the fabric routes to this node through the DPU, unless `dpu up` is told another. */
  defaultPodCidr: '10.233.77.0/24',
  cgroupName: 'heteropod-dpu',
  cgroupControllers: ['cpuset', 'memory', 'cpu', 'pids'] as const,
  cgroupRoot: '/sys/fs/cgroup',
  stateDir: DPU_STATE_DIR,
  pidFile: `${DPU_STATE_DIR}/agent.pid`,
  logFile: `${DPU_STATE_DIR}/agent.log`,
  recordFile: `${DPU_STATE_DIR}/dpu.json`,
  /** Host side of the DPU's state dir (bind-mounted over DPU_STATE_DIR inside the DPU). */
  dpuRootOnHost: `${DPU_STATE_DIR}/root`,
  pki: {
    dir: PKI,
    caKey: `${PKI}/ca.key`,
    caCert: `${PKI}/ca.crt`,
    agentKey: `${PKI}/agent.key`,
    agentCert: `${PKI}/agent.crt`,
    shimKey: `${PKI}/shim.key`,
    shimCert: `${PKI}/shim.crt`,
  },
  /**
   * Host paths that hold the host's containerd and test-bed state; inside the
   * DPU they are empty tmpfs. /run is covered as a whole (so /run/heteropod and
   * /run/containerd exist, empty, whether or not the host has them), and so is
   * /var/lib/heteropod (hiding /var/lib/heteropod/local).
   */
  hiddenRun: '/run',
  hiddenState: '/var/lib/heteropod',
  emptyInside: ['/run/heteropod', '/run/containerd', '/var/lib/heteropod/local'],
  /**
   * The DPU's mount namespace outlives its agent: pinned by a bind mount of its
   * nsfs file here (a private mount, as the kernel requires), so a restarted agent
   * finds its pods' runc shims, netns and rootfs mounts where it left them.
   */
  mountNsDir: '/run/heteropod-dpu',
  mountNsFile: '/run/heteropod-dpu/mnt',
  /** Where the agent finds its TLS files inside the DPU (a subdir of its state dir). */
  tlsDirInside: AGENT_DEFAULTS.tlsDir,
  defaultMemoryBytes: 1024 * 1024 * 1024,
  defaultPidsMax: 4096,
} as const;

export type CgroupController = (typeof DPU.cgroupControllers)[number];

export function cgroupDir(controller: CgroupController | string): string {
  return path.join(DPU.cgroupRoot, controller, DPU.cgroupName);
}

export function agentAddress(): string {
  return `${DPU.dpuAddress}:${DPU.agentPort}`;
}
