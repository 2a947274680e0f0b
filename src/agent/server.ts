// The agent's server: ttrpc over mutual TLS (the client must present a certificate
// signed by the DPU CA), the DpuAgent service, and an orderly stop. Every handler
// is checked against the .proto's method of its name and kind; a method of the
// .proto with no handler answers UNIMPLEMENTED.
import * as fs from 'node:fs';
import * as tls from 'node:tls';
import { AgentHandlers, trace, unary } from './errors';
import { AGENT_SERVICE, agentMethod } from '../agentapi/proto';
import { splitHostPort } from '../agentapi/client';
import { TtrpcServer } from '../ttrpc/server';
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

// What stop() gives calls in flight before it cuts every connection.
const STOP_GRACE_MS = 2000;

function readTls(files: TlsFiles): { ca: Buffer; cert: Buffer; key: Buffer } {
  const read = (what: string, file: string) => {
    try {
      return fs.readFileSync(file);
    } catch (err) {
      throw new Error(`read ${what} ${file}: ${(err as Error).message}`);
    }
  };
  return { ca: read('CA certificate', files.caFile), cert: read('agent certificate', files.certFile), key: read('agent key', files.keyFile) };
}

// The handlers on the ttrpc server, messages decoded and encoded by the .proto's codecs.
function register(server: TtrpcServer, handlers: AgentHandlers, inflight: { n: number; idle: (() => void) | null }): void {
  const counted = async <T>(run: () => Promise<T>): Promise<T> => {
    inflight.n++;
    try {
      return await run();
    } finally {
      if (--inflight.n === 0) inflight.idle?.();
    }
  };
  for (const [name, h] of Object.entries(handlers)) {
    const m = agentMethod(name);
    if (h.kind !== m.kind) throw new Error(`${AGENT_SERVICE}.${name}: handled as ${h.kind}, the .proto says ${m.kind}`);
    if (h.kind === 'unary') {
      server.register(AGENT_SERVICE, name, (payload) => counted(async () => m.encodeResponse(await h.fn(m.decodeRequest(payload)))));
    } else if (h.kind === 'server') {
      server.registerServerStream(AGENT_SERVICE, name, (payload, sink, call) =>
        h.fn(m.decodeRequest(payload), { write: (message) => sink.send(m.encodeResponse(message)), onDrain: sink.onDrain }, call.signal),
      );
    } else {
      server.registerClientStream(AGENT_SERVICE, name, (messages, call) =>
        counted(async () => {
          async function* decoded(): AsyncGenerator<unknown> {
            for await (const b of messages) yield m.decodeRequest(b);
          }
          return m.encodeResponse(await h.fn(decoded(), call.signal));
        }),
      );
    }
  }
}

/**
 * Starts serving `api` on `listen` ("host:port"; port 0 picks one); `more` adds the
 * handlers of the other groups (pods.ts, layers, stdio), built by handlers.ts.
 */
export function startAgentServer(listen: string, files: TlsFiles, api: DpuAgentApi, more: AgentHandlers = {}): Promise<RunningServer> {
  const inflight = { n: 0, idle: null as (() => void) | null };
  const ttrpc = new TtrpcServer({ onConnectionError: (err) => trace(`connection: ${err.message}`) });
  register(ttrpc, { Health: unary('Health', () => api.health()), Capacity: unary('Capacity', () => api.capacity()), ...more }, inflight);
  const { ca, cert, key } = readTls(files);
  // requestCert + rejectUnauthorized: a client with no certificate, or one not
  // signed by `ca`, fails the handshake.
  const server = tls.createServer({ ca, cert, key, requestCert: true, rejectUnauthorized: true }, (socket) => {
    socket.setNoDelay(true);
    ttrpc.serve(socket);
  });
  server.on('tlsClientError', (err) => trace(`TLS handshake refused: ${err.message}`));
  const { host, port } = splitHostPort(listen);
  if (!Number.isInteger(port) || port < 0 || port > 65535) return Promise.reject(new Error(`listen on ${listen}: not a host:port`));
  return new Promise((resolve, reject) => {
    server.once('error', (err) => reject(new Error(`listen on ${listen}: ${err.message}`)));
    server.listen(port, host, () => {
      server.removeAllListeners('error');
      server.on('error', (err) => trace(`server: ${err.message}`));
      resolve({
        port: (server.address() as { port: number }).port,
        stop: async () => {
          server.close();
          // Give calls in flight a moment, then cut the rest (streams never end by themselves).
          if (inflight.n > 0) {
            await new Promise<void>((done) => {
              const force = setTimeout(done, STOP_GRACE_MS);
              inflight.idle = () => {
                clearTimeout(force);
                done();
              };
            });
          }
          await ttrpc.close();
        },
      });
    });
  });
}
