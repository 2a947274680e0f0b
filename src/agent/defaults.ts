// Where the agent listens and keeps its state unless told otherwise: a
// BlueField's conventions, which the emulated DPU follows too (the management
// link tmfifo_net0, whose DPU end is 192.168.100.2).
export const AGENT_DEFAULTS = {
  address: '192.168.100.2',
  port: 7443,
  stateDir: '/var/lib/heteropod/dpu',
  /** ca.crt, agent.crt and agent.key */
  tlsDir: '/var/lib/heteropod/dpu/tls',
  runDir: '/run/heteropod/agent',
  uplink: 'p0',
} as const;
