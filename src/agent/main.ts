// heteropod-dpu-agent: runs on the DPU (emulated or real) and serves the shim's
// calls over ttrpc with mutual TLS. Stops cleanly on SIGTERM / SIGINT.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command } from 'commander';
import { AGENT_DEFAULTS } from './defaults';
import { Logger, StderrSink } from '../common/log';
import { forwardedEvent } from '../taskapi/messages';
import { EVENTS_SERVICE } from '../runcshim/runtime';
import { TtrpcServer } from '../ttrpc';
import { EventHub, eventContainerId } from './events';
import { fifoKeeperBinary } from './fifo-keeper';
import { layerHandlers, podHandlers } from './handlers';
import { LayerCache } from './layer-cache';
import { AgentPaths, DpuPods } from './pods';
import { parseProcCgroup } from './resources';
import { startAgentServer } from './server';
import { DpuAgentService } from './service';

export const AGENT_VERSION: string = require('../../../package.json').version;

interface AgentOptions {
  listen: string;
  uplink: string;
  tlsDir: string;
  ca?: string;
  cert?: string;
  key?: string;
  stateDir: string;
  runDir: string;
  runcShim: string;
  fifoKeeper: string;
}

/** Pods' cgroups go under the agent's own (on the emulated DPU: /heteropod-dpu). */
function cgroupParent(): string {
  const own = parseProcCgroup(fs.readFileSync('/proc/self/cgroup', 'utf8')).get('memory') ?? '/';
  return own === '/' ? '/heteropod' : own;
}

export async function main(argv: string[]): Promise<void> {
  const program = new Command('heteropod-dpu-agent')
    .description('HeteroPod DPU agent: the shim\'s API on the DPU, ttrpc over mutual TLS')
    .version(AGENT_VERSION)
    .option('--listen <host:port>', 'address to serve on', `${AGENT_DEFAULTS.address}:${AGENT_DEFAULTS.port}`)
    .option('--tls-dir <dir>', 'directory with ca.crt, agent.crt and agent.key', AGENT_DEFAULTS.tlsDir)
    .option('--ca <file>', 'CA that signs client certificates (default: <tls-dir>/ca.crt)')
    .option('--cert <file>', 'the agent\'s certificate (default: <tls-dir>/agent.crt)')
    .option('--key <file>', 'the agent\'s key (default: <tls-dir>/agent.key)')
    .option('--state-dir <dir>', 'pods, bundles and the layer cache', AGENT_DEFAULTS.stateDir)
    .option('--run-dir <dir>', 'sockets (the events socket the runc shims publish to)', AGENT_DEFAULTS.runDir)
    .option('--runc-shim <binary>', 'the runtime that runs containers', 'containerd-shim-runc-v2')
    .option('--fifo-keeper <binary>', 'what holds each pod\'s output fifos across restarts of the agent', fifoKeeperBinary())
    .option('--uplink <dev>', 'the DPU\'s port to the network; pods\' DPU halves are wired to it when it exists ("" for none)', AGENT_DEFAULTS.uplink);
  program.parse(argv);
  const o = program.opts<AgentOptions>();
  const tls = {
    caFile: o.ca ?? path.join(o.tlsDir, 'ca.crt'),
    certFile: o.cert ?? path.join(o.tlsDir, 'agent.crt'),
    keyFile: o.key ?? path.join(o.tlsDir, 'agent.key'),
  };
  const log = new Logger(new StderrSink(), Boolean(process.env.HETEROPOD_AGENT_DEBUG), { component: 'dpu-agent' });
  const paths: AgentPaths = { stateDir: o.stateDir, runDir: o.runDir, netnsDir: '/run/netns', cgroupRoot: '/sys/fs/cgroup', cgroupParent: cgroupParent(), runcShim: o.runcShim, fifoKeeper: o.fifoKeeper, uplinkDev: o.uplink };
  fs.mkdirSync(paths.runDir, { recursive: true, mode: 0o711 });
  const layers = new LayerCache(path.join(paths.stateDir, 'layers'));
  const pods = new DpuPods(paths, layers, new EventHub(), log);
  await pods.recover();

  // The runc shims' events arrive here (their TTRPC_ADDRESS) and are filed by pod.
  const events = new TtrpcServer({ onConnectionError: (err) => log.warn('events connection', { error: err.message }) });
  events.register(EVENTS_SERVICE, 'Forward', async (payload) => {
    if (!pods.publishEvent(payload)) log.warn('event for a container of no pod dropped', { container: eventContainerId(payload), topic: forwardedEvent(payload).topic });
    return Buffer.alloc(0);
  });
  fs.rmSync(pods.eventsSocket, { force: true });
  await events.listen(pods.eventsSocket);

  const service = new DpuAgentService({ version: AGENT_VERSION, listenAddress: o.listen }, { runningCount: () => pods.runningCount() });
  const server = await startAgentServer(o.listen, tls, service, { ...podHandlers(pods), ...layerHandlers(layers) });
  process.stdout.write(`heteropod-dpu-agent ${AGENT_VERSION}: serving on ${o.listen} (pid ${process.pid}, mutual TLS)\n`);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    process.stdout.write(`heteropod-dpu-agent: ${signal}, stopping\n`);
    // Pods keep running: their runc shims and fifo keepers outlive the agent, and
    // the next agent takes them over (pods.recover).
    void Promise.all([server.stop(), events.close()]).then(() => process.exit(0));
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
