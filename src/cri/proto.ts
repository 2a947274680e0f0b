// Loads the project's CRI runtime.v1 definitions (cri-proto/runtime/v1/api.proto)
// once, for both the gRPC client and the validation of user-written configs.
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import * as protobuf from 'protobufjs';

export const CRI_PROTO = path.resolve(__dirname, '../../../cri-proto/runtime/v1/api.proto');

// keepCase: messages use the .proto's snake_case names, as crictl's JSON does.
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

let services: { RuntimeService: grpc.ServiceClientConstructor; ImageService: grpc.ServiceClientConstructor } | undefined;
let root: protobuf.Root | undefined;

export function criServices(): NonNullable<typeof services> {
  if (!services) {
    const definition = protoLoader.loadSync(CRI_PROTO, LOADER_OPTIONS);
    const pkg = grpc.loadPackageDefinition(definition) as unknown as {
      runtime: { v1: NonNullable<typeof services> };
    };
    services = pkg.runtime.v1;
  }
  return services;
}

export function criRoot(): protobuf.Root {
  if (!root) root = new protobuf.Root().loadSync(CRI_PROTO, { keepCase: true });
  return root;
}

export function criType(name: string): protobuf.Type {
  return criRoot().lookupType(`runtime.v1.${name}`);
}
