// Loads the agent API (cri-proto/heteropod/agent/v1/agent.proto) at run time, for
// both the agent and its client; no generated code. The TypeScript shapes below
// mirror the .proto and are the one place to change when it grows. The calls go
// over ttrpc (src/ttrpc) on a mutually authenticated TLS connection: each method's
// messages are encoded here, the envelope and frames there.
import * as path from 'node:path';
import * as protobuf from 'protobufjs';

export const AGENT_PROTO = path.resolve(__dirname, '../../../cri-proto/heteropod/agent/v1/agent.proto');
export const AGENT_SERVICE = 'heteropod.agent.v1.DpuAgent';

// Fields keep the .proto's snake_case names in code; longs are Numbers (exact for
// memory sizes below 2^53 bytes); enums are their names; unset fields read as
// their defaults.
const TO_OBJECT: protobuf.IConversionOptions = { longs: Number, enums: String, defaults: true, oneofs: true };

/** One method of the agent: its kind and its messages' codecs. */
export interface AgentMethod {
  name: string;
  /** unary, server-streaming (Output, Events, WatchPorts), client-streaming (PutLayer, Input) */
  kind: 'unary' | 'server' | 'client';
  encodeRequest(message: object): Uint8Array;
  decodeRequest(bytes: Uint8Array): any;
  encodeResponse(message: object): Uint8Array;
  decodeResponse(bytes: Uint8Array): any;
}

function codec(type: protobuf.Type): { encode(m: object): Uint8Array; decode(b: Uint8Array): unknown } {
  return {
    encode: (m) => type.encode(type.fromObject(m)).finish(),
    decode: (b) => type.toObject(type.decode(b), TO_OBJECT),
  };
}

let methods: Map<string, AgentMethod> | undefined;

/** The agent's methods by name, read from the .proto once. */
export function agentMethods(): Map<string, AgentMethod> {
  if (!methods) {
    const root = new protobuf.Root();
    root.loadSync(AGENT_PROTO, { keepCase: true });
    root.resolveAll();
    const service = root.lookupService(AGENT_SERVICE);
    methods = new Map();
    for (const m of service.methodsArray) {
      if (m.requestStream && m.responseStream) throw new Error(`${AGENT_SERVICE}.${m.name}: a stream both ways is not supported`);
      const req = codec(m.resolvedRequestType!);
      const res = codec(m.resolvedResponseType!);
      methods.set(m.name, {
        name: m.name,
        kind: m.requestStream ? 'client' : m.responseStream ? 'server' : 'unary',
        encodeRequest: req.encode,
        decodeRequest: req.decode,
        encodeResponse: res.encode,
        decodeResponse: res.decode,
      });
    }
  }
  return methods;
}

/** One method of the agent, or an error naming it. */
export function agentMethod(name: string): AgentMethod {
  const m = agentMethods().get(name);
  if (!m) throw new Error(`${AGENT_SERVICE} has no method ${name}`);
  return m;
}

export interface HealthResponse {
  ok: boolean;
  version: string;
  uptime_seconds: number;
  problem: string;
  listen_address: string;
}

export interface CapacityResponse {
  cpus: number;
  cpuset: string;
  memory_total_bytes: number;
  memory_free_bytes: number;
  running_containers: number;
}

export interface CreatePodRequest {
  pod_id: string;
  namespace: string;
  pod_name: string;
  pod_namespace: string;
}

export interface PodInfo {
  pod_id: string;
  netns_path: string;
  netns_inode: number;
  cgroup_parent: string;
  containers: string[];
}

export interface MountedFile {
  destination: string;
  content: Buffer;
  directory: boolean;
  mode: number;
  termination_log: boolean;
}

export interface UpdateFilesRequest {
  pod_id: string;
  container_id: string;
  files: MountedFile[];
}

export interface CreateRequest {
  pod_id: string;
  request: Buffer;
  spec: Buffer;
  layers: string[];
  files: MountedFile[];
  container_name: string;
}

export interface TaskCall {
  pod_id: string;
  request: Buffer;
}

export interface TaskReply {
  response: Buffer;
  // Wait of an init process only (empty otherwise)
  termination_message?: Buffer;
}

/** Create's answer: the runc shim's, or only the layers the cache lacks (nothing created). */
export interface CreateReply {
  response: Buffer;
  missing_layers: string[];
}

export interface ProcessRef {
  pod_id: string;
  container_id: string;
  exec_id: string;
}

export interface OutputChunkMessage {
  stream: 'STDOUT' | 'STDERR';
  data: Buffer;
  eof: boolean;
  seq: number;
  generation: number;
}

export interface InputChunk extends ProcessRef {
  data: Buffer;
}

export interface LayerChunk {
  digest: string;
  size: number;
  data: Buffer;
}

export interface PutLayerResponse {
  digest: string;
  bytes_received: number;
  already_present: boolean;
}

export interface TaskEventMessage {
  sequence: number;
  topic: string;
  forward: Buffer;
  // the /tasks/exit of an init process only (empty otherwise)
  termination_message?: Buffer;
}

export interface OpenLinkRequest {
  pod_id: string;
  pod_ip: string;
  declared_dpu_ports: number[];
  pod_prefix_length: number;
}

export interface LinkInfo {
  pod_id: string;
  window: string;
  netns_path: string;
  link_up: boolean;
  listening_ports: number[];
  on_uplink: boolean;
}

export interface ListeningPorts {
  ports: number[];
}

export interface SetPeerPortsRequest {
  pod_id: string;
  ports: number[];
}

/** The task calls that carry a containerd.task.v2 request as is (Create and Exec are the agent's own). */
export const RELAYED_TASK_CALLS = ['Start', 'Wait', 'Kill', 'Delete', 'State', 'Pids', 'Stats', 'ResizePty', 'CloseIO', 'Update', 'Pause', 'Resume'] as const;
