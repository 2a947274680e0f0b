// `heteropod layers digest | ship` (src/cli/layers.ts), the node daemon's cold
// path, as the daemon runs it: a child process with the node's shim config,
// against the agent's real TLS server (src/agent/server.ts) and layer cache on
// loopback, in this process. A layer is uploaded once, then not again; the
// digests are the TS's and land in the index the C lookup reads; a bad agent
// address, a missing config entry and a missing directory each fail with one
// line naming what failed.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { startAgentServer, RunningServer } from '../../src/agent/server';
import { layerHandlers } from '../../src/agent/handlers';
import { LayerCache } from '../../src/agent/layer-cache';
import { DpuAgentService } from '../../src/agent/service';
import { ensurePki, pkiIn, PkiFiles } from '../../src/dpu/pki';
import { digestOf, layerTar } from '../../src/shim/layers';

const root = path.resolve(__dirname, '..', '..', '..');
const CLI = path.join(root, 'bin', 'heteropod');
const LOOKUP = path.join(root, 'build', 'noded-test-layers');

let dir: string;
let pki: PkiFiles;
let server: RunningServer;
let cache: LayerCache;
let layer: string;

function config(name: string, address: string, stateDir = path.join(dir, 'state')): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, `state_dir = "${stateDir}"\n[dpu]\n  address = "${address}"\n  ca = "${pki.caCert}"\n  cert = "${pki.shimCert}"\n  key = "${pki.shimKey}"\n  timeout_ms = 2000\n`);
  return file;
}

test.before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-layers-cli-'));
  pki = pkiIn(path.join(dir, 'pki'));
  assert.is(await ensurePki(pki, '127.0.0.1'), 'made');
  cache = new LayerCache(path.join(dir, 'cache'));
  const api = new DpuAgentService({ version: 'test-layers', listenAddress: '127.0.0.1:0' });
  server = await startAgentServer('127.0.0.1:0', { caFile: pki.caCert, certFile: pki.agentCert, keyFile: pki.agentKey }, api, layerHandlers(cache));
  layer = path.join(dir, 'snapshots', '1', 'fs');
  fs.mkdirSync(path.join(layer, 'etc'), { recursive: true });
  fs.writeFileSync(path.join(layer, 'etc', 'os-release'), 'NAME=test\n');
  fs.symlinkSync('os-release', path.join(layer, 'etc', 'release'));
});

test.after(async () => {
  await server?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

// A child the test waits for asynchronously: the agent answers from this process.
function cli(args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ status: code ?? -1, stdout, stderr }));
  });
}

function oneLine(s: string): string {
  assert.is(s.split('\n').length, 2, `one line: ${JSON.stringify(s)}`);
  return s.trimEnd();
}

test('layers ship uploads a layer once; a second run sends nothing; the index is the C lookup\'s', async () => {
  const file = config('shim.toml', `127.0.0.1:${server.port}`);
  const { digest, size } = await digestOf(layerTar(layer));

  const first = await cli(['layers', 'ship', '--config', file, '--pod', 'pod-1', layer]);
  assert.is(first.stderr, '');
  assert.is(first.status, 0);
  const sent = JSON.parse(oneLine(first.stdout));
  assert.equal(sent, { digests: [digest], bytes_sent: size, layers_sent: 1 });
  assert.equal(await cache.missing([digest]), []);

  const second = await cli(['layers', 'ship', '--config', file, '--pod', 'pod-2', layer, layer]);
  assert.is(second.status, 0, second.stderr);
  assert.equal(JSON.parse(oneLine(second.stdout)), { digests: [digest, digest], bytes_sent: 0, layers_sent: 0 });

  // What ship recorded, the node daemon's warm path finds.
  assert.ok(fs.existsSync(LOOKUP), `${LOOKUP} is missing: build it (src/noded/layers.mk)`);
  const lookup = await new Promise<string>((resolve) => {
    const c = spawn(LOOKUP, ['lookup', layer, path.join(dir, 'state', 'layers')], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString()));
    c.on('close', () => resolve(out));
  });
  assert.is(lookup, `${digest} ${size}\n`);
});

test('layers digest prints the digests and records them, with no agent', async () => {
  const stateDir = path.join(dir, 'state-digest');
  const file = config('digest.toml', '', stateDir);
  const { digest } = await digestOf(layerTar(layer));
  const r = await cli(['layers', 'digest', '--config', file, layer, path.join(layer, 'etc')]);
  assert.is(r.stderr, '');
  assert.is(r.status, 0);
  const out = JSON.parse(oneLine(r.stdout));
  assert.is(out.digests.length, 2);
  assert.is(out.digests[0], digest);
  assert.is(fs.readdirSync(path.join(stateDir, 'layers')).filter((n) => n.endsWith('.json')).length, 2);
});

test('a bad agent address, no agent configured, a missing layer: one line each, exit 1', async () => {
  const port = await new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
  const nobody = await cli(['layers', 'ship', '--config', config('nobody.toml', `127.0.0.1:${port}`), '--pod', 'pod-3', layer]);
  assert.is(nobody.status, 1);
  assert.is(nobody.stdout, '');
  assert.match(oneLine(nobody.stderr), `heteropod: ship layers of pod pod-3: DPU agent at 127.0.0.1:${port} unreachable: `);
  assert.match(nobody.stderr, 'ECONNREFUSED');

  const none = config('none.toml', '');
  const unset = await cli(['layers', 'ship', '--config', none, '--pod', 'pod-3', layer]);
  assert.is(unset.status, 1);
  assert.is(oneLine(unset.stderr), `heteropod: ship layers of pod pod-3: ${none}: no DPU agent is configured ([dpu] address)`);

  const missing = path.join(dir, 'snapshots', 'gone', 'fs');
  const gone = await cli(['layers', 'ship', '--config', config('shim.toml', `127.0.0.1:${server.port}`), '--pod', 'pod-3', missing]);
  assert.is(gone.status, 1);
  assert.match(oneLine(gone.stderr), /^heteropod: ship layers of pod pod-3: ENOENT: no such file or directory, stat /);
  assert.match(gone.stderr, missing);

  const usage = await cli(['layers', 'ship', '--config', none, layer]);
  assert.is(usage.status, 1);
  assert.match(usage.stderr, "required option '--pod <id>' not specified");
});

test.run();
