// `heteropod local up | down | status`: the single-node test bed.
import { Command } from 'commander';
import { down, status, up } from '../testbed/testbed';
import { TESTBED } from '../testbed/paths';
import { status as dpuStatus } from '../dpu/dpu';
import { formatWires } from '../dpu/network';
import { DPU } from '../dpu/paths';
import { printJson } from './table';

const say = (line: string) => process.stdout.write(`${line}\n`);

export function registerLocalCommands(program: Command): void {
  const local = program.command('local').description('the local single-node test bed: a private containerd with CRI, CNI and images');

  local
    .command('up')
    .description('start the test bed (idempotent)')
    .action(async () => {
      await up(say);
      say(`\npoint CRI clients at it:\n  export CONTAINER_RUNTIME_ENDPOINT=${TESTBED.endpoint} IMAGE_SERVICE_ENDPOINT=${TESTBED.endpoint}\n  crictl pods    (or: heteropod cri pods)\n  ctr -a ${TESTBED.socket} -n ${TESTBED.namespace} containers ls`);
    });

  local
    .command('down')
    .description('stop the test bed and remove everything it made')
    .action(async () => {
      await down(say);
      say('test bed down');
    });

  local
    .command('status')
    .description('what runs, and how to point crictl at it')
    .option('-o, --output <format>', 'table or json', 'table')
    .action(async (o: { output: string }) => {
      const s = await status();
      if (o.output === 'json') return printJson(s);
      if (!s.running) {
        say(s.pid ? `test bed: containerd pid ${s.pid} is not answering` : 'test bed: not running (start it with: heteropod local up)');
      } else {
        say(`test bed: running\n  containerd     pid ${s.pid}, ${s.version}\n  endpoint       ${s.endpoint}\n  handlers       ${s.handlers.join(', ')}\n  network        ${TESTBED.cniBridge} ${TESTBED.podSubnet} (${s.networkReady ? 'ready' : 'not ready'})\n  pods           ${s.pods}, containers ${s.containers}\n  images         ${(s.images ?? []).join(', ')}\n\ncrictl:  crictl --runtime-endpoint ${s.endpoint} --image-endpoint ${s.endpoint} pods\nctr:     ctr -a ${TESTBED.socket} -n ${TESTBED.namespace} tasks ls`);
      }
      const d = await dpuStatus();
      if (d.netns) say(`\nthe node's wires (the DPU owns the uplink; the host reaches the fabric, ${DPU.uplink.fabricNetns}, through its PF):\n${formatWires(d.wires).join('\n')}`);
      for (const p of [...s.problems, ...d.problems]) say(`  problem: ${p}`);
      if (!s.running) process.exitCode = 3;
    });
}
