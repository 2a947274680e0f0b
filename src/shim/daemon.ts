// The long-lived shim process of one pod: serves the Task service to containerd
// and the Events service to the runtimes behind it, on one socket. `start`
// (launcher.c, or start.ts without it) starts it with that socket listening on
// fd 3, or hands the pod to a warm spare (spare.ts), which binds the socket.
// Exits after a Shutdown leaves no task.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { TtrpcServer } from '../ttrpc';
import { forwardedEvent, taskExit } from './messages';
import { loadConfig } from './config';
import { ShimFlags } from './flags';
import { FifoSink, Logger } from './log';
import { groupPaths, removeIfEmpty } from './paths';
import { EventForwarder } from './events';
import { RuncShimRuntime } from './runc-runtime';
import { EVENTS_SERVICE, TASK_SERVICE } from './runtime';
import { TaskService } from './task-service';
import { PodRouter } from './pod-router';
import { NAMESPACE_KEY } from '../ttrpc/messages';

const LISTEN_FD = 3;

// `listen`: 'inherited' when `start` passed the listening socket as fd 3 (checked
// at exec, before Node opened descriptors of its own), 'bind' to bind the path.
export async function serveDaemon(flags: ShimFlags, group: string, listen: 'inherited' | 'bind'): Promise<void> {
  const bundle = process.cwd();
  // How ps, and the test bed's clean-up, recognise a shim of containerd's.
  process.title = `containerd-shim-heteropod-v2 -namespace ${flags.namespace} -id ${group} -address ${flags.address}`;
  const config = loadConfig(flags.configPath);
  const debug = config.debug || flags.debug;
  const log = new Logger(new FifoSink(path.join(bundle, 'log')), debug, { runtime: 'io.containerd.heteropod.v2', namespace: flags.namespace, pod: group });
  process.on('uncaughtException', (err) => log.error('uncaught exception', { error: err.stack ?? err.message }));
  process.on('unhandledRejection', (err) => log.error('unhandled rejection', { error: err instanceof Error ? err.stack ?? err.message : String(err) }));

  const paths = groupPaths(config.stateDir, flags.address, flags.namespace, group);
  // The socket `start` chose and printed to containerd is the one to serve.
  const socket = flags.socket || paths.socket;
  const events = new EventForwarder(process.env.TTRPC_ADDRESS ?? '', log);
  const runc = new RuncShimRuntime(
    {
      binary: config.runcShim,
      namespace: flags.namespace,
      containerdAddress: flags.address,
      publishBinary: flags.publishBinary,
      eventsAddress: socket,
      workDir: paths.runcWorkDir,
      debug,
      runc: config.runc,
    },
    log,
    (why) => {
      log.error('runc shim lost; exiting so that containerd cleans up the pod', { error: why });
      void exit();
    },
  );
  const server = new TtrpcServer({
    onConnectionError: (err) => log.warn('ttrpc connection error', { error: err.message }),
    onCall: debug ? (call, status, ms) => log.debug('ttrpc call', { method: `${call.service}.${call.method}`, code: status?.code ?? 0, error: status?.message, ms }) : undefined,
  });

  let service: TaskService;
  // Events of the DPU's containers, as if their runc shim had sent them here.
  const onDpuEvent = (forward: Buffer, topic: string) => {
    observe(forward);
    events.enqueue(forward, [{ key: NAMESPACE_KEY, value: flags.namespace }], topic);
  };
  const router = new PodRouter(config, flags.namespace, group, runc, log, onDpuEvent);

  let exiting = false;
  const exit = async (): Promise<void> => {
    if (exiting) return;
    exiting = true;
    await Promise.all(router.runtimes().map((r) => r.shutdown().catch((err: Error) => log.error('shut down runtime', { runtime: r.name, error: err.message }))));
    router.remove();
    await events.flush(5000);
    events.close();
    await server.close();
    fs.rmSync(socket, { force: true });
    fs.rmSync(paths.dir, { recursive: true, force: true });
    removeIfEmpty(path.dirname(paths.dir));
    log.info('shim exited');
    process.exit(0);
  };

  service = new TaskService((req) => router.runtimeFor(req), log, { onShutdown: () => void exit() });
  // Notes exits for the task table; returns the topic.
  const observe = (payload: Buffer): string => {
    try {
      const event = forwardedEvent(payload);
      if (event.topic === '/tasks/exit') {
        const exit = taskExit(event.value);
        service.observeExit(exit.containerId, exit.id);
      }
      return event.topic;
    } catch (err) {
      log.warn('undecodable event forwarded as is', { error: (err as Error).message });
      return '';
    }
  };
  server.registerService(TASK_SERVICE, service.handlers());
  server.register(EVENTS_SERVICE, 'Forward', async (payload, call) => {
    events.enqueue(payload, call.metadata, observe(payload));
    return Buffer.alloc(0);
  });

  // `start` bound and listened on the socket and passed it as fd 3, so containerd
  // could connect (its calls wait in the backlog) before this process was up.
  const inherited = listen === 'inherited';
  if (!inherited) fs.rmSync(socket, { force: true }); // stale: `start` found nothing answering
  await server.listen(inherited ? { fd: LISTEN_FD } : socket);
  log.info('shim serving', { socket, pid: process.pid });
  // The task that started this shim is about to be created: have runc's shim
  // ready by then. A failure here is retried by that Create, which reports it.
  runc.prepare({ id: path.basename(bundle), bundle }).catch((err: Error) => log.warn('start runc shim early', { error: err.message }));
}

// Whether this process was started with a listening socket as fd 3.
export function hasListener(): boolean {
  try {
    return fs.fstatSync(LISTEN_FD).isSocket();
  } catch {
    return false;
  }
}
