// heteropod-dpu-agent: runs on the DPU (emulated or real) and serves the shim's
// calls over gRPC with mutual TLS. Stops cleanly on SIGTERM / SIGINT.
import * as path from 'node:path';
import { Command } from 'commander';
import { DPU, agentAddress } from '../dpu/paths';
import { startAgentServer } from './server';
import { DpuAgentService } from './service';

export const AGENT_VERSION: string = require('../../../package.json').version;

interface AgentOptions {
  listen: string;
  tlsDir: string;
  ca?: string;
  cert?: string;
  key?: string;
}

export async function main(argv: string[]): Promise<void> {
  const program = new Command('heteropod-dpu-agent')
    .description('HeteroPod DPU agent: the shim\'s API on the DPU, gRPC over mutual TLS')
    .version(AGENT_VERSION)
    .option('--listen <host:port>', 'address to serve on', agentAddress())
    .option('--tls-dir <dir>', 'directory with ca.crt, agent.crt and agent.key', DPU.tlsDirInside)
    .option('--ca <file>', 'CA that signs client certificates (default: <tls-dir>/ca.crt)')
    .option('--cert <file>', 'the agent\'s certificate (default: <tls-dir>/agent.crt)')
    .option('--key <file>', 'the agent\'s key (default: <tls-dir>/agent.key)');
  program.parse(argv);
  const o = program.opts<AgentOptions>();
  const tls = {
    caFile: o.ca ?? path.join(o.tlsDir, 'ca.crt'),
    certFile: o.cert ?? path.join(o.tlsDir, 'agent.crt'),
    keyFile: o.key ?? path.join(o.tlsDir, 'agent.key'),
  };
  const server = await startAgentServer(o.listen, tls, new DpuAgentService({ version: AGENT_VERSION, listenAddress: o.listen }));
  process.stdout.write(`heteropod-dpu-agent ${AGENT_VERSION}: serving on ${o.listen} (pid ${process.pid}, mutual TLS)\n`);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    process.stdout.write(`heteropod-dpu-agent: ${signal}, stopping\n`);
    server.stop().then(() => process.exit(0));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

if (require.main === module) {
  main(process.argv).catch((err) => {
    process.stderr.write(`heteropod-dpu-agent: ${(err as Error).message}\n`);
    process.exit(1);
  });
}
