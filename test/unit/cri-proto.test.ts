import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as path from 'node:path';
import * as protobuf from 'protobufjs';
import * as protoLoader from '@grpc/proto-loader';
import * as grpc from '@grpc/grpc-js';

// Compiled to dist/test/unit/, so the repo root is three levels up.
const PROTO = path.resolve(__dirname, '../../../cri-proto/runtime/v1/api.proto');

const root = new protobuf.Root().loadSync(PROTO, { keepCase: true });
root.resolveAll();

function type(name: string): protobuf.Type {
  return root.lookupType(`runtime.v1.${name}`);
}

function encode(name: string, obj: Record<string, unknown>): string {
  const t = type(name);
  // fromObject maps enum names to numbers; verify catches misspelled fields/types.
  const msg = t.fromObject(obj);
  const err = t.verify(msg);
  assert.is(err, null, `${name} verify: ${err}`);
  assert.equal(Object.keys(obj).filter((k) => !(k in t.fields)), [], `${name}: unknown field`);
  return Buffer.from(t.encode(msg).finish()).toString('hex');
}

// Hex helper so the expectations below can be written byte by byte.
function hex(...bytes: number[]): string {
  return Buffer.from(bytes).toString('hex');
}

test('proto-loader + grpc-js load both CRI services', () => {
  const def = protoLoader.loadSync(PROTO, {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(def) as any;
  const rs = pkg.runtime.v1.RuntimeService;
  const is = pkg.runtime.v1.ImageService;
  assert.type(rs, 'function');
  assert.type(is, 'function');

  const runtimeRpcs = [
    'Version', 'RunPodSandbox', 'StopPodSandbox', 'RemovePodSandbox', 'PodSandboxStatus',
    'ListPodSandbox', 'CreateContainer', 'StartContainer', 'StopContainer', 'RemoveContainer',
    'ListContainers', 'ContainerStatus', 'UpdateContainerResources', 'ReopenContainerLog',
    'ExecSync', 'Exec', 'Attach', 'PortForward', 'ContainerStats', 'ListContainerStats',
    'PodSandboxStats', 'ListPodSandboxStats', 'UpdateRuntimeConfig', 'Status',
  ];
  for (const rpc of runtimeRpcs) {
    assert.ok(rs.service[rpc], `RuntimeService.${rpc} missing`);
    assert.is(rs.service[rpc].path, `/runtime.v1.RuntimeService/${rpc}`);
  }
  for (const rpc of ['ListImages', 'ImageStatus', 'PullImage', 'RemoveImage', 'ImageFsInfo']) {
    assert.ok(is.service[rpc], `ImageService.${rpc} missing`);
    assert.is(is.service[rpc].path, `/runtime.v1.ImageService/${rpc}`);
  }
});

test('RunPodSandboxRequest{config.metadata.name, runtime_handler}', () => {
  // PodSandboxMetadata.name=1 -> 0a 01 'a'
  // PodSandboxConfig.metadata=1 -> 0a 03 ...
  // RunPodSandboxRequest.config=1 -> 0a 05 ..., runtime_handler=2 -> 12 04 'runc'
  const got = encode('RunPodSandboxRequest', {
    config: { metadata: { name: 'a' } },
    runtime_handler: 'runc',
  });
  assert.is(got, hex(0x0a, 0x05, 0x0a, 0x03, 0x0a, 0x01, 0x61, 0x12, 0x04, 0x72, 0x75, 0x6e, 0x63));
});

test('CreateContainerRequest{pod_sandbox_id=1, config=2}', () => {
  // ContainerMetadata{name=1 "c", attempt=2 1} -> 0a 01 63 10 01
  // ContainerConfig.metadata=1 -> 0a 05 ...
  const got = encode('CreateContainerRequest', {
    pod_sandbox_id: 'sb',
    config: { metadata: { name: 'c', attempt: 1 } },
  });
  assert.is(got, hex(0x0a, 0x02, 0x73, 0x62, 0x12, 0x07, 0x0a, 0x05, 0x0a, 0x01, 0x63, 0x10, 0x01));
});

test('ExecSyncRequest{container_id=1, cmd=2, timeout=3}', () => {
  const got = encode('ExecSyncRequest', { container_id: 'c1', cmd: ['ls', '-l'], timeout: 5 });
  assert.is(
    got,
    hex(0x0a, 0x02, 0x63, 0x31, 0x12, 0x02, 0x6c, 0x73, 0x12, 0x02, 0x2d, 0x6c, 0x18, 0x05),
  );
});

test('ContainerStats{attributes=1, cpu=2, memory=3, writable_layer=4}', () => {
  const got = encode('ContainerStats', {
    attributes: { id: 'x' },
    cpu: { timestamp: 1, usage_core_nano_seconds: { value: 300 } },
    memory: { working_set_bytes: { value: 2 } },
    writable_layer: { fs_id: { mountpoint: '/' } },
  });
  assert.is(
    got,
    hex(
      // attributes: ContainerAttributes{id=1 "x"}
      0x0a, 0x03, 0x0a, 0x01, 0x78,
      // cpu: CpuUsage{timestamp=1 1, usage_core_nano_seconds=2 {value=1 300}}
      0x12, 0x07, 0x08, 0x01, 0x12, 0x03, 0x08, 0xac, 0x02,
      // memory: MemoryUsage{working_set_bytes=2 {value=1 2}}
      0x1a, 0x04, 0x12, 0x02, 0x08, 0x02,
      // writable_layer: FilesystemUsage{fs_id=2 {mountpoint=1 "/"}}
      0x22, 0x05, 0x12, 0x03, 0x0a, 0x01, 0x2f,
    ),
  );
});

test('ContainerStatus.resources is field 16 (two-byte tag)', () => {
  // tag (16<<3)|2 = 130 -> varint 82 01; ContainerResources.linux=1;
  // LinuxContainerResources.cpu_shares=3 -> 18 02
  const got = encode('ContainerStatus', {
    id: 'i',
    resources: { linux: { cpu_shares: 2 } },
  });
  assert.is(got, hex(0x0a, 0x01, 0x69, 0x82, 0x01, 0x04, 0x0a, 0x02, 0x18, 0x02));
});

test('non-sequential security context numbers (run_as_group)', () => {
  // LinuxContainerSecurityContext.run_as_group=12 -> tag 0x62; Int64Value{1000} -> 08 e8 07
  assert.is(
    encode('LinuxContainerSecurityContext', { run_as_group: { value: 1000 } }),
    hex(0x62, 0x03, 0x08, 0xe8, 0x07),
  );
  // LinuxSandboxSecurityContext.run_as_group=8 -> tag 0x42
  assert.is(
    encode('LinuxSandboxSecurityContext', { run_as_group: { value: 1000 } }),
    hex(0x42, 0x03, 0x08, 0xe8, 0x07),
  );
});

test('enum values: PodSandboxState, ContainerState, NamespaceMode', () => {
  assert.is(encode('PodSandboxStatus', { state: 'SANDBOX_NOTREADY' }), hex(0x18, 0x01));
  assert.is(encode('Container', { state: 'CONTAINER_EXITED' }), hex(0x30, 0x02));
  assert.is(encode('NamespaceOption', { pid: 'TARGET' }), hex(0x10, 0x03));
});

test('decodes containerd-style ExecSyncResponse bytes', () => {
  // stdout=1 "hi", exit_code=3 7
  const buf = Buffer.from([0x0a, 0x02, 0x68, 0x69, 0x18, 0x07]);
  const t = type('ExecSyncResponse');
  const obj = t.toObject(t.decode(buf), { defaults: true }) as {
    stdout: Uint8Array;
    stderr: Uint8Array;
    exit_code: number;
  };
  assert.is(Buffer.from(obj.stdout).toString(), 'hi');
  assert.is(obj.stderr.length, 0);
  assert.is(obj.exit_code, 7);
});

test.run();
