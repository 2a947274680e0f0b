// The `heteropod` command. Each area registers its own subcommands; this file only
// assembles them and turns an error into one clear line and a non-zero exit.
import { Command, CommanderError } from 'commander';
import { registerCriCommands } from './cri';
import { registerLocalCommands } from './local';
import { registerImageCommands } from './images';
import { registerShimCommands } from './shim';
import { registerDpuCommands } from './dpu';
import { registerXpuCommands } from './xpu';
import { registerPodsCommand } from './pods';
import { registerLayerCommands } from './layers';

export function buildProgram(): Command {
  const program = new Command('heteropod')
    .description('HeteroPod: run pod infrastructure containers on the DPU')
    .version(require('../../../package.json').version)
    .showHelpAfterError()
    .exitOverride()
    .enablePositionalOptions();
  registerLocalCommands(program);
  registerCriCommands(program);
  registerImageCommands(program);
  registerShimCommands(program);
  registerDpuCommands(program);
  registerXpuCommands(program);
  registerPodsCommand(program);
  registerLayerCommands(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exitCode = err.exitCode;
      return;
    }
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`heteropod: ${message}\n`);
    if (process.env.HETEROPOD_DEBUG && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    process.exitCode = 1;
  }
}
