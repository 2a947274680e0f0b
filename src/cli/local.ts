import { Command } from 'commander';

export function registerLocalCommands(program: Command): void {
  void program;
}
