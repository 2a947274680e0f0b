// `heteropod cri …`: a crictl-like client for debugging a node's CRI runtime
// without crictl. Command names and output follow crictl's, so the habits carry.
import { Command, Option } from 'commander';
import { CriClient, DEFAULT_CRI_ENDPOINT } from '../cri/client';
import { containerConfig, CriObject, podSandboxConfig, readConfigFile } from '../cri/config';
import { readCriLog } from '../cri/logs';
import { execStream } from '../cri/exec-stream';
import { forwardLocalPort } from '../cri/portforward';
import { ago, containerUsage, cpuTime, mebibytes, OutputFormat, parseOutputFormat, printJson, renderTable, shortId } from './table';

interface GlobalOptions {
  runtimeEndpoint: string;
  timeout: string;
}

function connect(cmd: Command): CriClient {
  const opts = cmd.optsWithGlobals<GlobalOptions>();
  const seconds = Number(opts.timeout);
  if (!Number.isFinite(seconds) || seconds <= 0) throw new Error(`--timeout ${JSON.stringify(opts.timeout)}: expected a number of seconds`);
  return CriClient.connect(opts.runtimeEndpoint, seconds * 1000);
}

/** Runs `fn` with a client and always closes it, so the process can exit. */
async function withClient<T>(cmd: Command, fn: (cri: CriClient) => Promise<T>): Promise<T> {
  const cri = connect(cmd);
  try {
    return await fn(cri);
  } finally {
    cri.close();
  }
}

const outputOption = () => new Option('-o, --output <format>', 'table or json').default('table').argParser(parseOutputFormat);

function stateName(state: unknown): string {
  return String(state).replace(/^(SANDBOX|CONTAINER)_/, '');
}

/** Resolves a unique id prefix, as crictl does, against the ids the runtime lists. */
async function resolveId(ids: string[], prefix: string, kind: string): Promise<string> {
  const hits = ids.filter((id) => id.startsWith(prefix));
  if (hits.length === 1) return hits[0];
  if (hits.length === 0) throw new Error(`${kind} ${JSON.stringify(prefix)} not found`);
  throw new Error(`${kind} id prefix ${JSON.stringify(prefix)} is ambiguous: ${hits.map(shortId).join(', ')}`);
}

async function podId(cri: CriClient, prefix: string): Promise<string> {
  return resolveId((await cri.listPodSandbox()).map((p) => p.id as string), prefix, 'pod sandbox');
}

async function containerId(cri: CriClient, prefix: string): Promise<string> {
  return resolveId((await cri.listContainers()).map((c) => c.id as string), prefix, 'container');
}

/** An unknown image is named before CreateContainer, rather than as containerd's internal error. */
async function requireImage(cri: CriClient, image: string): Promise<void> {
  if (await cri.imageStatus(image)) return;
  const known = (await cri.listImages()).flatMap((i) => i.repo_tags as string[]);
  throw new Error(`image ${JSON.stringify(image)} is not on the node (it has: ${known.join(', ') || 'no images'})`);
}

export function registerCriCommands(program: Command): void {
  const cri = program
    .command('cri')
    .description('talk CRI to a container runtime, like crictl')
    .option('-r, --runtime-endpoint <endpoint>', 'CRI endpoint', process.env.CONTAINER_RUNTIME_ENDPOINT || DEFAULT_CRI_ENDPOINT)
    .option('--timeout <seconds>', 'time-out of each call', '30')
    .enablePositionalOptions();

  cri
    .command('version')
    .description('runtime name and version')
    .action(async (_o, cmd: Command) => {
      const v = await withClient(cmd, (c) => c.version());
      process.stdout.write(`Version:  ${v.version}\nRuntimeName:  ${v.runtime_name}\nRuntimeVersion:  ${v.runtime_version}\nRuntimeApiVersion:  ${v.runtime_api_version}\n`);
    });

  cri
    .command('info')
    .description('runtime conditions (Status)')
    .action(async (_o, cmd: Command) => printJson(await withClient(cmd, (c) => c.status(true))));

  cri
    .command('pods')
    .description('list pod sandboxes')
    .option('--name <name>', 'only pods with this name')
    .option('-s, --state <state>', 'ready or notready')
    .option('-q, --quiet', 'ids only')
    .addOption(outputOption())
    .action(async (o: { name?: string; state?: string; quiet?: boolean; output: OutputFormat }, cmd: Command) => {
      const filter: CriObject = {};
      if (o.state) filter.state = { state: `SANDBOX_${o.state.toUpperCase().replace('NOTREADY', 'NOTREADY')}` };
      let pods = await withClient(cmd, (c) => c.listPodSandbox(filter));
      if (o.name) pods = pods.filter((p) => (p.metadata as CriObject).name === o.name);
      if (o.quiet) return void process.stdout.write(pods.map((p) => `${p.id}\n`).join(''));
      if (o.output === 'json') return printJson({ items: pods });
      const rows = pods.map((p) => {
        const m = p.metadata as CriObject;
        return [shortId(p.id as string), ago(p.created_at as number), stateName(p.state), String(m.name), String(m.namespace), String(m.attempt), String(p.runtime_handler || '(default)')];
      });
      process.stdout.write(renderTable(['POD ID', 'CREATED', 'STATE', 'NAME', 'NAMESPACE', 'ATTEMPT', 'RUNTIME'], rows));
    });

  cri
    .command('ps')
    .description('list containers')
    .option('-a, --all', 'include exited containers')
    .option('-p, --pod <pod>', 'only containers of this pod (id or prefix)')
    .option('--name <regexp>', 'only containers whose name matches')
    .option('-q, --quiet', 'ids only')
    .addOption(outputOption())
    .action(async (o: { all?: boolean; pod?: string; name?: string; quiet?: boolean; output: OutputFormat }, cmd: Command) => {
      let name: RegExp | null = null;
      try {
        if (o.name !== undefined) name = new RegExp(o.name);
      } catch (err) {
        throw new Error(`--name ${JSON.stringify(o.name)}: ${(err as Error).message}`);
      }
      const containers = (
        await withClient(cmd, async (c) => {
          const filter: CriObject = {};
          if (o.pod) filter.pod_sandbox_id = await podId(c, o.pod);
          if (!o.all) filter.state = { state: 'CONTAINER_RUNNING' };
          return c.listContainers(filter);
        })
      ).filter((x) => !name || name.test(String((x.metadata as CriObject).name)));
      if (o.quiet) return void process.stdout.write(containers.map((x) => `${x.id}\n`).join(''));
      if (o.output === 'json') return printJson({ containers });
      const rows = containers.map((x) => {
        const m = x.metadata as CriObject;
        return [shortId(x.id as string), String((x.image as CriObject).image), ago(x.created_at as number), stateName(x.state), String(m.name), String(m.attempt), shortId(x.pod_sandbox_id as string)];
      });
      process.stdout.write(renderTable(['CONTAINER', 'IMAGE', 'CREATED', 'STATE', 'NAME', 'ATTEMPT', 'POD ID'], rows));
    });

  cri
    .command('images')
    .description('list images')
    .addOption(outputOption())
    .action(async (o: { output: OutputFormat }, cmd: Command) => {
      const images = await withClient(cmd, (c) => c.listImages());
      if (o.output === 'json') return printJson({ images });
      const rows = images.flatMap((i) =>
        ((i.repo_tags as string[]).length ? (i.repo_tags as string[]) : ['<none>:<none>']).map((tag) => {
          const at = tag.lastIndexOf(':');
          return [tag.slice(0, at), tag.slice(at + 1), String(i.id).replace(/^sha256:/, '').slice(0, 13), `${(Number(i.size) / 1e6).toFixed(1)}MB`];
        }),
      );
      process.stdout.write(renderTable(['IMAGE', 'TAG', 'IMAGE ID', 'SIZE'], rows));
    });

  cri
    .command('inspectp <pod>')
    .description('status of a pod sandbox (JSON)')
    .action(async (pod: string, _o, cmd: Command) =>
      printJson(await withClient(cmd, async (c) => c.podSandboxStatus(await podId(c, pod), true))),
    );

  cri
    .command('inspect <container>')
    .description('status of a container (JSON)')
    .action(async (id: string, _o, cmd: Command) =>
      printJson(await withClient(cmd, async (c) => c.containerStatus(await containerId(c, id), true))),
    );

  cri
    .command('runp <pod-config>')
    .description('run a pod sandbox from a JSON or YAML config; prints its id')
    .option('--runtime <handler>', 'runtime handler (e.g. runc, heteropod)', '')
    .action(async (file: string, o: { runtime: string }, cmd: Command) => {
      const config = podSandboxConfig(readConfigFile(file, 'pod config'));
      const id = await withClient(cmd, (c) => c.runPodSandbox(config, o.runtime));
      process.stdout.write(`${id}\n`);
    });

  cri
    .command('create <pod> <container-config> <pod-config>')
    .description('create a container in a pod; prints its id')
    .action(async (pod: string, containerFile: string, podFile: string, _o, cmd: Command) => {
      const config = containerConfig(readConfigFile(containerFile, 'container config'));
      const sandbox = podSandboxConfig(readConfigFile(podFile, 'pod config'));
      const id = await withClient(cmd, async (c) => {
        await requireImage(c, (config.image as CriObject).image as string);
        return c.createContainer(await podId(c, pod), config, sandbox);
      });
      process.stdout.write(`${id}\n`);
    });

  cri
    .command('run <container-config> <pod-config>')
    .description('run a pod and one container in it (runp + create + start); prints the container id')
    .option('--runtime <handler>', 'runtime handler', '')
    .action(async (containerFile: string, podFile: string, o: { runtime: string }, cmd: Command) => {
      const config = containerConfig(readConfigFile(containerFile, 'container config'));
      const sandbox = podSandboxConfig(readConfigFile(podFile, 'pod config'));
      const id = await withClient(cmd, async (c) => {
        await requireImage(c, (config.image as CriObject).image as string);
        const pod = await c.runPodSandbox(sandbox, o.runtime);
        const ctr = await c.createContainer(pod, config, sandbox);
        await c.startContainer(ctr);
        return ctr;
      });
      process.stdout.write(`${id}\n`);
    });

  const eachId = (verb: string, fn: (c: CriClient, id: string) => Promise<void>, kind: 'pod' | 'container') =>
    async (ids: string[], _o: unknown, cmd: Command) =>
      withClient(cmd, async (c) => {
        for (const prefix of ids) {
          const id = kind === 'pod' ? await podId(c, prefix) : await containerId(c, prefix);
          await fn(c, id);
          process.stdout.write(`${verb} ${id}\n`);
        }
      });

  cri.command('start <container...>').description('start created containers').action(eachId('Started', (c, id) => c.startContainer(id), 'container'));
  cri
    .command('stop <container...>')
    .description('stop running containers')
    .option('-t, --timeout <seconds>', 'grace period before SIGKILL', '10')
    .action(async (ids: string[], o: { timeout: string }, cmd: Command) => {
      const grace = Number(o.timeout);
      if (!Number.isInteger(grace) || grace < 0) throw new Error(`--timeout ${JSON.stringify(o.timeout)}: expected whole seconds`);
      await eachId('Stopped', (c, id) => c.stopContainer(id, grace), 'container')(ids, o, cmd);
    });
  cri.command('rm <container...>').description('remove containers').action(eachId('Removed', (c, id) => c.removeContainer(id), 'container'));
  cri.command('stopp <pod...>').description('stop pod sandboxes').action(eachId('Stopped sandbox', (c, id) => c.stopPodSandbox(id), 'pod'));
  cri.command('rmp <pod...>').description('remove pod sandboxes').action(eachId('Removed sandbox', (c, id) => c.removePodSandbox(id), 'pod'));

  cri
    .command('exec <container> <command...>')
    .description('run a command in a container and wait (ExecSync, or with -i/-t the streaming Exec); exits with its code')
    .passThroughOptions()
    .option('-i, --interactive', 'send this terminal\'s input (streaming Exec)')
    .option('-t, --tty', 'give the command a terminal (streaming Exec; with containerd 1.6 its output shows only with -i too)')
    .option('--exec-timeout <seconds>', 'kill the command after this long (0: never; ExecSync only)', '0')
    .action(async (id: string, command: string[], o: { interactive?: boolean; tty?: boolean; execTimeout: string }, cmd: Command) => {
      if (command[0] === '--') command = command.slice(1);
      if (command.length === 0) throw new Error('exec: no command given');
      if (!o.interactive && !o.tty) {
        const res = await withClient(cmd, async (c) => c.execSync(await containerId(c, id), command, Number(o.execTimeout)));
        process.stdout.write(res.stdout);
        process.stderr.write(res.stderr);
        process.exitCode = res.exitCode;
        return;
      }
      const stdin = process.stdin;
      const raw = Boolean(o.tty && o.interactive && stdin.isTTY);
      process.exitCode = await withClient(cmd, async (c) => {
        const session = await execStream(c, await containerId(c, id), command, {
          tty: Boolean(o.tty),
          stdin: o.interactive ? stdin : undefined,
          stdout: (d) => process.stdout.write(d),
          stderr: (d) => process.stderr.write(d),
          size: o.tty && process.stdout.isTTY ? { columns: process.stdout.columns, rows: process.stdout.rows } : undefined,
        });
        if (raw) stdin.setRawMode(true);
        const onResize = () => session.resize(process.stdout.columns, process.stdout.rows);
        process.stdout.on('resize', onResize);
        try {
          return await session.exitCode;
        } finally {
          process.stdout.off('resize', onResize);
          if (raw) stdin.setRawMode(false);
          if (o.interactive) stdin.destroy(); // else an open pipe keeps the process waiting
        }
      });
    });

  cri
    .command('logs <container>')
    .description("print a container's log (the CRI log file)")
    .option('--tail <lines>', 'only the last lines', '-1')
    .option('-t, --timestamps', 'show timestamps')
    .action(async (id: string, o: { tail: string; timestamps?: boolean }, cmd: Command) => {
      const status = await withClient(cmd, async (c) => c.containerStatus(await containerId(c, id)));
      const logPath = (status.status as CriObject).log_path as string;
      if (!logPath) throw new Error(`container ${id} has no log path (its pod config sets no log_directory)`);
      for (const r of readCriLog(logPath, Number(o.tail))) {
        const text = `${o.timestamps ? `${r.time} ` : ''}${r.line}\n`;
        (r.stream === 'stderr' ? process.stderr : process.stdout).write(text);
      }
    });

  cri
    .command('stats [container...]')
    .description('CPU and memory of containers')
    .addOption(outputOption())
    .action(async (ids: string[], o: { output: OutputFormat }, cmd: Command) => {
      const stats = await withClient(cmd, async (c) => {
        if (ids.length === 0) return c.listContainerStats();
        return Promise.all(ids.map(async (id) => c.containerStats(await containerId(c, id))));
      });
      if (o.output === 'json') return printJson({ stats });
      const rows = stats.map((s) => {
        const attrs = s.attributes as CriObject;
        const use = containerUsage(s);
        return [shortId(attrs.id as string), String((attrs.metadata as CriObject).name), cpuTime(use.cpuSeconds), mebibytes(use.memoryBytes)];
      });
      process.stdout.write(renderTable(['CONTAINER', 'NAME', 'CPU TIME', 'MEM'], rows));
    });

  cri
    .command('port-forward <pod> <ports>')
    .description('forward [LOCAL:]REMOTE: 127.0.0.1:LOCAL on this machine to localhost:REMOTE in the pod (PortForward); runs until interrupted')
    .action(async (id: string, ports: string, _o: object, cmd: Command) => {
      const m = /^(?:(\d+):)?(\d+)$/.exec(ports);
      const local = Number(m?.[1] ?? m?.[2]);
      const remote = Number(m?.[2]);
      if (!m || local > 65535 || remote < 1 || remote > 65535) throw new Error(`port-forward: ${JSON.stringify(ports)}: expected [LOCAL:]REMOTE, TCP ports (LOCAL 0: any free port)`);
      const c = connect(cmd);
      const pod = await podId(c, id).catch((err) => {
        c.close();
        throw err;
      });
      const fwd = await forwardLocalPort(c, pod, local, remote, (err) => process.stderr.write(`${err.message}\n`));
      process.stdout.write(`Forwarding from 127.0.0.1:${fwd.port} -> ${remote}\n`);
      const stop = () => fwd.close().then(() => c.close());
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
    });
}
