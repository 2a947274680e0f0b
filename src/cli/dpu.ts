// `heteropod dpu up | down | status`: the emulated DPU (src/dpu).
import { Command } from 'commander';
import { formatBytes } from '../dpu/config';
import { down, status, up } from '../dpu/dpu';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { formatWires } from '../dpu/network';
import { DPU } from '../dpu/paths';
import { ensurePki, pkiIn } from '../dpu/pki';
import { printJson } from './table';

const say = (line: string) => process.stdout.write(`${line}\n`);

export function registerDpuCommands(program: Command): void {
  const dpu = program.command('dpu').description('the emulated DPU: its own network, mount namespace and cgroup, with the DPU agent inside');

  dpu
    .command('up')
    .description('make the emulated DPU and start its agent (idempotent; repairs a broken one)')
    .option('--cpus <n>', 'how many CPUs, taken from the end of the host\'s list (default 1: the last CPU)')
    .option('--cpuset <list>', 'exact CPUs instead, e.g. 1 or 2-3')
    .option('--memory <size>', 'memory limit, e.g. 1G or 512M (default 1G)')
    .option('--pod-cidr <cidr>', `the pod network the fabric routes to the node through the DPU (default ${DPU.defaultPodCidr})`)
    .action(async (o: { cpus?: string; cpuset?: string; memory?: string; podCidr?: string }) => {
      await up(o, say);
      say(`\nthe shim reaches the agent at ${DPU.dpuAddress}:${DPU.agentPort} with\n  CA ${DPU.pki.caCert}\n  certificate ${DPU.pki.shimCert}\n  key ${DPU.pki.shimKey}`);
    });

  dpu
    .command('certs <dir>')
    .description('make keys and certificates for a real DPU\'s agent and the host\'s shim in <dir> (a new, empty directory)')
    .option('--agent-ip <ip>', 'the agent\'s address on the management link, put in its certificate', DPU.dpuAddress)
    .action(async (dir: string, o: { agentIp: string }) => {
      if (!/^\d{1,3}(\.\d{1,3}){3}$/.test(o.agentIp)) throw new Error(`--agent-ip ${JSON.stringify(o.agentIp)}: expected an IPv4 address`);
      const out = path.resolve(dir);
      if (fs.existsSync(out) && fs.readdirSync(out).length > 0) throw new Error(`${out} is not empty: give a new directory (nothing there is overwritten)`);
      const files = pkiIn(out);
      await ensurePki(files, o.agentIp);
      say(`made in ${out}:
  on the DPU (the agent's --tls-dir):  ca.crt agent.crt agent.key
  on the host (shim.toml [dpu]):       ca = ${files.caCert}, cert = ${files.shimCert}, key = ${files.shimKey}
  keep ca.key offline: it signs new certificates`);
    });

  dpu
    .command('down')
    .description('stop the agent and remove everything the DPU made')
    .action(async () => {
      await down(say);
      say('DPU down');
    });

  dpu
    .command('status')
    .description('whether the DPU runs, its size, and its agent\'s health (asked over mutual TLS)')
    .option('-o, --output <format>', 'table or json', 'table')
    .action(async (o: { output: string }) => {
      const s = await status();
      if (o.output === 'json') printJson(s);
      else if (!s.running && !s.netns && s.pid === undefined && s.problems.length === 0) {
        say('DPU: not running (start it with: heteropod dpu up)');
      } else {
        const h = s.health;
        say([
          `DPU: ${s.running ? 'running' : 'not healthy'}`,
          `  agent          ${s.pid ? `pid ${s.pid}` : 'not running'}, ${s.address}`,
          `  network        netns ${DPU.netns}${s.netns ? '' : ' (missing)'}; the fabric (the network outside the node): netns ${DPU.uplink.fabricNetns}`,
          ...(s.netns ? formatWires(s.wires) : []),
          `  cgroup         ${s.cgroup} (${DPU.cgroupControllers.join(', ')})`,
          `  cpuset         ${s.cpuset ?? '-'}`,
          `  memory limit   ${s.memoryLimitBytes !== undefined ? formatBytes(s.memoryLimitBytes) : '-'}`,
          `  health         ${h ? `${h.ok ? 'ok' : `not ok: ${h.problem}`}, version ${h.version}, up ${Math.round(h.uptime_seconds)} s` : 'no answer'}`,
          ...(s.capacity ? [`  capacity       ${s.capacity.cpus} CPU, ${formatBytes(s.capacity.memory_free_bytes)} free of ${formatBytes(s.capacity.memory_total_bytes)}, ${s.capacity.running_containers} containers`] : []),
        ].join('\n'));
        for (const p of s.problems) say(`  problem: ${p}`);
      }
      if (!s.running) process.exitCode = 3;
    });
}
