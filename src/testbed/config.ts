// The test bed's containerd and CNI configuration. Every path and name is the
// test bed's own (paths.ts), so a containerd the machine already runs, its
// sockets, state and CNI bridge are never touched.
import { agentAddress, DPU } from '../dpu/paths';
import { TESTBED } from './paths';

const CRI = 'plugins."io.containerd.grpc.v1.cri"';

export function containerdConfig(t = TESTBED): string {
  return `# Written by heteropod local up; removed by heteropod local down.
version = 2
root = "${t.containerdRoot}"
state = "${t.containerdState}"

[grpc]
  address = "${t.socket}"

[ttrpc]
  address = "${t.socket}.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "${t.optDir}"

[${CRI}]
  sandbox_image = "${t.sandboxImage}"
  # CRI's default sandbox oom_score_adj (-998) needs CAP_SYS_RESOURCE, which some
  # machines lack: runc then fails with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  # A port of the kernel's choosing, so a system containerd's 10010 stays free.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false

[${CRI}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[${CRI}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[${CRI}.containerd.runtimes.runc.options]
  Root = "${t.runcRoot}"
  SystemdCgroup = false

[${CRI}.containerd.runtimes.heteropod]
  runtime_type = "io.containerd.heteropod.v2"
  runtime_path = "${t.shimBinary}"
  pod_annotations = ["heteropod.io/*"]

[${CRI}.containerd.runtimes.heteropod.options]
  ConfigPath = "${t.shimConfig}"

[${CRI}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "${t.cniConfDir}"
  max_conf_num = 1
`;
}

function fabricNetwork(): string {
  const { fabricAddress, prefixLength } = DPU.uplink;
  return `${fabricAddress.replace(/\.\d+$/, '.0')}/${prefixLength}`;
}

export function cniConfig(t = TESTBED): string {
  const conf = {
    cniVersion: '0.4.0',
    name: t.cniNetwork,
    plugins: [
      {
        type: 'bridge',
        bridge: t.cniBridge,
        isGateway: true,
        // No masquerade: pods talk to each other and the host only, and the test
        // bed adds no netfilter rules that would outlive it.
        ipMasq: false,
        hairpinMode: true,
        ipam: {
          type: 'host-local',
          ranges: [[{ subnet: t.podSubnet }]],
          // The fabric (the network outside the node, behind the DPU's uplink) through
          // the bridge. Only the fabric: the node's other networks, the DPU's
          // management link among them, stay unrouted from pods.
          routes: [{ dst: fabricNetwork() }],
          dataDir: t.cniIpamDir,
        },
      },
    ],
  };
  return JSON.stringify(conf, null, 2) + '\n';
}

// The HeteroPod shim's configuration in the test bed (options.ConfigPath above):
// its state under the test bed's run directory, and runc's state root the same as
// handler runc's, so both handlers' containers are found and cleaned up alike.
export function shimConfig(t = TESTBED): string {
  return `# Written by heteropod local up; removed by heteropod local down.
state_dir = "${t.runDir}/shim"

[runc]
  root = "${t.runcRoot}"

# The emulated DPU (heteropod dpu up) and the shim's client certificate.
[dpu]
  address = "${agentAddress()}"
  ca = "${DPU.pki.caCert}"
  cert = "${DPU.pki.shimCert}"
  key = "${DPU.pki.shimKey}"
`;
}
