import { Command } from 'commander';

export function registerImagesCommands(program: Command): void {
  void program;
}
