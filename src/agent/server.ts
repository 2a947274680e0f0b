// The agent's gRPC server: mutual TLS (the client must present a certificate
// signed by the DPU CA), the DpuAgent service, and an orderly stop.
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { unary } from './errors';
import { dpuAgentService } from '../agentapi/proto';
import type { DpuAgentApi } from './service';

export interface TlsFiles {
  caFile: string;
  certFile: string;
  keyFile: string;
}

export interface RunningServer {
  port: number;
  stop(): Promise<void>;
}

function readTls(tls: TlsFiles): { ca: Buffer; cert: Buffer; key: Buffer } {
  const read = (what: string, file: string) => {
    try {
      return fs.readFileSync(file);
    } catch (err) {
      throw new Error(`read ${what} ${file}: ${(err as Error).message}`);
    }
  };
  return { ca: read('CA certificate', tls.caFile), cert: read('agent certificate', tls.certFile), key: read('agent key', tls.keyFile) };
}

export function serverCredentials(tls: TlsFiles): grpc.ServerCredentials {
  const { ca, cert, key } = readTls(tls);
  // checkClientCertificate = true: a client with no certificate, or one not
  // signed by `ca`, fails the handshake.
  return grpc.ServerCredentials.createSsl(ca, [{ cert_chain: cert, private_key: key }], true);
}

/**
 * Starts serving `api` on `listen` ("host:port"; port 0 picks one); `more` adds the
 * handlers of the other groups (pods.ts, layers, stdio), built by handlers.ts.
 */
export function startAgentServer(listen: string, tls: TlsFiles, api: DpuAgentApi, more: grpc.UntypedServiceImplementation = {}): Promise<RunningServer> {
  const server = new grpc.Server();
  server.addService(dpuAgentService().service, {
    Health: unary('Health', () => api.health()),
    Capacity: unary('Capacity', () => api.capacity()),
    ...more,
  });
  const creds = serverCredentials(tls);
  return new Promise((resolve, reject) => {
    server.bindAsync(listen, creds, (err, port) => {
      if (err) return reject(new Error(`listen on ${listen}: ${err.message}`));
      resolve({
        port,
        stop: () =>
          new Promise<void>((done) => {
            // Give calls in flight a moment, then cut the rest.
            const force = setTimeout(() => server.forceShutdown(), 2000);
            server.tryShutdown(() => {
              clearTimeout(force);
              done();
            });
          }),
      });
    });
  });
}
