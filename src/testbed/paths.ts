// Where the single-node test bed lives. Everything it makes is under these
// names, apart from what containerd and CNI put in the system's shared places
// (pod network namespaces in /run/netns, shim sockets in /run/containerd/s),
// which `local down` removes by their owners' records.
import * as path from 'node:path';
import { LOCAL_CONFIG_PATH } from '../shim/config';

export const REPO_ROOT = path.resolve(__dirname, '../../..');
const RUN = '/run/heteropod';
const STATE = '/var/lib/heteropod/local';

export const TESTBED = {
  runDir: RUN,
  stateDir: STATE,
  socket: `${RUN}/containerd.sock`,
  endpoint: `unix://${RUN}/containerd.sock`,
  pidFile: `${RUN}/containerd.pid`,
  logFile: `${RUN}/containerd.log`,
  configFile: `${STATE}/containerd.toml`,
  containerdRoot: `${STATE}/containerd`,
  containerdState: `${RUN}/containerd`,
  optDir: `${STATE}/opt`,
  cniConfDir: `${STATE}/cni/net.d`,
  cniIpamDir: `${STATE}/cni/ipam`,
  cniNetwork: 'heteropod-testbed',
  cniBridge: 'hp-cni0',
  podSubnet: '10.233.77.0/24',
  /** runc state of the test bed's containers, apart from any other containerd's. */
  runcRoot: `${RUN}/runc`,
  shimConfig: LOCAL_CONFIG_PATH,
  /** The node daemon (heteropod node): its pid file, log and socket (in the shim's state_dir). */
  nodePidFile: `${RUN}/node.pid`,
  nodeLogFile: `${RUN}/node.log`,
  nodeSocket: `${RUN}/shim/node.sock`,
  shimBinary: path.join(REPO_ROOT, 'bin', 'containerd-shim-heteropod-v2'),
  namespace: 'k8s.io',
  sandboxImage: 'heteropod.local/pause:1',
} as const;
