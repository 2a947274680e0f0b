import { Command } from 'commander';

export function registerCriCommands(program: Command): void {
  void program;
}
