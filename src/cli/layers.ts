// `heteropod layers digest | ship`: the cold path of a container's layers for the
// node daemon in C. The daemon looks each layer directory's digest up in the
// index itself (src/noded/layers.c); when a directory was never digested, or the
// agent lacks layers, it runs one of these as a short-lived child:
//   layers digest --config FILE DIR...           {"digests":[...]}
//   layers ship --config FILE --pod ID DIR...    {"digests":[...],"bytes_sent":N,"layers_sent":N}
// one JSON line on stdout; on failure one line on stderr naming what failed, exit 1.
// Both record what they compute in <state_dir>/layers, the index the daemon reads.
import * as path from 'node:path';
import { Command } from 'commander';
import { DEFAULT_CONFIG_PATH, loadConfig } from '../shim/config';

/** The shim config's layer index: what the shim and the node daemon (TS and C) read. */
function indexDir(stateDir: string): string {
  return path.join(stateDir, 'layers');
}

/** Runs `what`; a failure leaves as one line saying `doing` (main prints it, exit 1). */
async function oneLine<T>(doing: string, what: () => Promise<T>): Promise<T> {
  try {
    return await what();
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw new Error(`${doing}: ${message.replace(/\s*\n\s*/g, '; ')}`);
  }
}

export function registerLayerCommands(program: Command): void {
  const layers = program.command('layers').description("a container's rootfs layers: their digests, and shipping them to the DPU agent (the node daemon's cold path)");

  layers
    .command('digest')
    .description('the digest of each layer directory (top first), computed once and recorded in <state_dir>/layers')
    .option('--config <file>', 'the shim configuration file (its state_dir holds the layer index)', DEFAULT_CONFIG_PATH)
    .argument('<dir...>', 'layer directories, as the rootfs overlay lists them')
    .action(async (dirs: string[], o: { config: string }) => {
      const digests = await oneLine(`digest layers ${dirs.join(' ')}`, async () => {
        const { layerDigest } = await import('../shim/layers');
        const config = loadConfig(o.config);
        const out: string[] = [];
        for (const dir of dirs) out.push((await layerDigest(dir, indexDir(config.stateDir))).digest);
        return out;
      });
      process.stdout.write(`${JSON.stringify({ digests })}\n`);
    });

  layers
    .command('ship')
    .description('make sure the DPU agent has every layer directory: digest them, ask which it lacks, upload those')
    .option('--config <file>', 'the shim configuration file ([dpu] the agent; state_dir the layer index)', DEFAULT_CONFIG_PATH)
    .requiredOption('--pod <id>', 'the pod the layers are for (named in errors)')
    .argument('<dir...>', 'layer directories, top first')
    .action(async (dirs: string[], o: { config: string; pod: string }) => {
      const shipped = await oneLine(`ship layers of pod ${o.pod}`, async () => {
        const { DpuAgentClient } = await import('../agentapi/client');
        const { agentLayerStore, shipLayers } = await import('../shim/layers');
        const config = loadConfig(o.config);
        const d = config.dpu;
        if (!d.address) throw new Error(`${o.config}: no DPU agent is configured ([dpu] address)`);
        // As the node daemon connects (node-daemon.ts agentClient()).
        const client = DpuAgentClient.connect({ address: d.address, caFile: d.ca, certFile: d.cert, keyFile: d.key, timeoutMs: d.timeoutMs });
        try {
          return await shipLayers(dirs, agentLayerStore(client), indexDir(config.stateDir));
        } finally {
          client.close();
        }
      });
      process.stdout.write(`${JSON.stringify({ digests: shipped.digests, bytes_sent: shipped.bytesSent, layers_sent: shipped.layersSent })}\n`);
    });
}
