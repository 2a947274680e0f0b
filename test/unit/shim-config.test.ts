// The one reader of shim.toml (src/shim/shim-config.c): every case runs through
// the shim's `config` action, through the reader alone built under the sanitizers
// (build/shim-test-config-asan), and through config.ts's loadConfig, which must
// give the same config or throw the same one-line message.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { configReader, defaultConfig, loadConfig, ShimConfig } from '../../src/shim/config';

const build = path.resolve(__dirname, '..', '..', '..', 'build');
const shim = configReader();
const asan = path.join(build, 'shim-test-config-asan');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shim-config-'));
const file = path.join(dir, 'shim.toml');

// What each reader says about `configFile`: the config, or the error line.
function readers(configFile: string): { name: string; result: ShimConfig | string }[] {
  const out: { name: string; result: ShimConfig | string }[] = [];
  for (const [name, bin, args] of [
    ['shim config', shim, ['config', '-config', configFile]],
    ['asan', asan, [configFile]],
  ] as const) {
    assert.ok(fs.existsSync(bin), `${bin} is missing: run "make build"`);
    const r = spawnSync(bin, args, { encoding: 'utf8' });
    if (r.status === 0) {
      assert.is(r.stderr, '', `${name}: nothing on stderr`);
      out.push({ name, result: JSON.parse(r.stdout) as ShimConfig });
    } else {
      assert.is(r.status, 1, `${name}: exit 1 (${r.signal ?? ''} ${r.stderr})`);
      assert.is(r.stdout, '', `${name}: nothing on stdout`);
      assert.ok(r.stderr.endsWith('\n') && r.stderr.indexOf('\n') === r.stderr.length - 1, `${name}: one line: ${JSON.stringify(r.stderr)}`);
      out.push({ name, result: r.stderr.slice(0, -1) });
    }
  }
  try {
    out.push({ name: 'loadConfig', result: loadConfig(configFile) });
  } catch (err) {
    out.push({ name: 'loadConfig', result: (err as Error).message });
  }
  return out;
}

function withoutDebugEnv<T>(fn: () => T): T {
  const saved = process.env.HETEROPOD_DEBUG;
  delete process.env.HETEROPOD_DEBUG;
  try {
    return fn();
  } finally {
    if (saved !== undefined) process.env.HETEROPOD_DEBUG = saved;
  }
}

function expectConfig(text: string | Buffer, want: ShimConfig): void {
  fs.writeFileSync(file, text);
  for (const { name, result } of withoutDebugEnv(() => readers(file))) assert.equal(result, want, name);
}

// `want` is the message after "<file>:".
function expectError(text: string | Buffer, want: string): void {
  fs.writeFileSync(file, text);
  for (const { name, result } of withoutDebugEnv(() => readers(file))) assert.is(result, `${file}:${want}`, name);
}

test('a missing file: the defaults, the same as config.ts defaultConfig()', () => {
  for (const { name, result } of withoutDebugEnv(() => readers(path.join(dir, 'absent.toml')))) assert.equal(result, defaultConfig(), name);
});

test('a full file: every key, comments, both string kinds, escapes, dotted keys', () => {
  expectConfig(
    [
      '# HeteroPod shim',
      'debug = true   # trailing comment',
      "state_dir = '/run/hp'",
      'runc_shim = "/usr/local/bin/containerd-shim-runc-v2"',
      '',
      '[runc]',
      '  root = "/run/containerd/runc"',
      '\tbinary_name = "/usr/bin/crun"',
      '  systemd_cgroup = true',
      '[ dpu ]  # the agent',
      'address = "[fd00::2]:7443"',
      'ca = "/pki/ca \\"x\\" \\\\ \\u00e9.crt"',
      "cert = 'C:\\pki\\shim.crt'",
      'key = "/pki/shim.key"',
      'timeout_ms = 2_500',
      '[xpu]',
      'host_mode = "elastic"',
    ].join('\n'),
    {
      debug: true,
      stateDir: '/run/hp',
      runcShim: '/usr/local/bin/containerd-shim-runc-v2',
      runc: { root: '/run/containerd/runc', binaryName: '/usr/bin/crun', systemdCgroup: true },
      dpu: { address: '[fd00::2]:7443', ca: '/pki/ca "x" \\ é.crt', cert: 'C:\\pki\\shim.crt', key: '/pki/shim.key', timeoutMs: 2500 },
      xpu: { hostMode: 'elastic' },
    },
  );
  const d = defaultConfig();
  // A byte order mark, CRLF line ends, a section's keys as dotted top-level keys.
  expectConfig('\ufeffdpu.address = "dpu.example:1"\r\ndpu.ca = "a"\r\ndpu.cert = "b"\r\ndpu.key = "c"\r\nxpu.host_mode = "poll"', {
    ...d,
    dpu: { ...d.dpu, address: 'dpu.example:1', ca: 'a', cert: 'b', key: 'c' },
    xpu: { hostMode: 'poll' },
  });
  // The longest state_dir whose socket path fits: 39 bytes.
  const longest = `/run/${'s'.repeat(34)}`;
  expectConfig(`state_dir = "${longest}"\n[dpu]\naddress = "10.0.0.2:65535"\nca = "a"\ncert = "b"\nkey = "c"\n`, {
    ...d,
    stateDir: longest,
    dpu: { ...d.dpu, address: '10.0.0.2:65535', ca: 'a', cert: 'b', key: 'c' },
  });
});

test('unknown keys and sections are refused', () => {
  expectError('[dpu]\nadress = "10.0.0.2:7443"\n', '2: dpu.adress: unknown key ([dpu] has address, ca, cert, key, timeout_ms)');
  expectError('# the DPU\n[dpuu]\naddress = "10.0.0.2:7443"\n', '2: [dpuu]: unknown section (the sections are [runc], [dpu], [xpu])');
  expectError('statedir = "/run/x"\n', '1: statedir: unknown key (the top-level keys are debug, state_dir, runc_shim)');
  expectError('dpuu.address = "x"\n', '1: dpuu.address: unknown key (no section [dpuu]; the sections are [runc], [dpu], [xpu])');
  expectError('[[dpu]]\n', '1: "[[dpu]]": not a [section] header');
});

test('a key or section given twice', () => {
  expectError('[runc]\nroot = "/a"\nroot = "/b"\n', '3: runc.root: set twice (first at line 2)');
  expectError('dpu.timeout_ms = 10\n[dpu]\ntimeout_ms = 20\n', '3: dpu.timeout_ms: set twice (first at line 1)');
  expectError('[xpu]\n[runc]\n[xpu]\n', '3: [xpu]: section repeated (first at line 1)');
});

test('a value of the wrong type', () => {
  expectError('debug = "yes"\n', '1: debug: must be true or false, not a string');
  expectError('[dpu]\ntimeout_ms = "5000"\n', '2: dpu.timeout_ms: must be an integer, not a string');
  expectError('state_dir = 5\n', '1: state_dir: must be a string, not an integer');
  expectError('[runc]\nsystemd_cgroup = 1\n', '2: runc.systemd_cgroup: must be true or false, not an integer');
});

test('a line or value that does not parse: only the start of a long line is quoted', () => {
  expectError(
    '[dpu]\naddress: 10.0.0.2:7443  # YAML, not TOML: a colon, no equals sign\n',
    '2: "address: 10.0.0.2:7443  # YAML, not TOML"…: not key = value, a [section] header or a comment',
  );
  expectError('\t debug\n', '1: "debug": not key = value, a [section] header or a comment');
  expectError('[dpu]\naddress = 10.0.0.2:7443\n', `2: dpu.address: value "10.0.0.2:7443" is not a "string", a 'string', true, false or an integer`);
  expectError('[dpu]\ntimeout_ms = 1.5\n', `2: dpu.timeout_ms: value "1.5" is not a "string", a 'string', true, false or an integer`);
  expectError('runc_shim = "/bin/x\n', '1: runc_shim: unterminated string');
  expectError('runc_shim = "/bin/\\q"\n', '1: runc_shim: unknown escape \\q in a string');
  expectError('runc_shim = "/bin/x" "/bin/y"\n', '1: runc_shim: text after the value: "\\"/bin/y\\""');
  expectError('runc_shim =\n', '1: runc_shim: no value');
  expectError('runc_shim = """x"""\n', '1: runc_shim: multi-line strings are not supported');
  expectError('[dpu]\ntimeout_ms = 99999999999999999999\n', '2: dpu.timeout_ms: integer out of range');
  expectError(Buffer.from('debug = true\nrunc_shim = "a\x00b"\n'), '2: "runc_shim = \\"a": a NUL byte in the line');
  expectError(Buffer.from('runc_shim = "\xff"\n', 'latin1'), '1: runc_shim: string is not UTF-8');
});

test('values out of range', () => {
  const tls = 'ca = "/ca"\ncert = "/c"\nkey = "/k"\n';
  expectError(`[dpu]\naddress = "10.0.0.2:99999"\n${tls}`, '2: dpu.address: port 99999 is out of range (1-65535)');
  expectError(`[dpu]\naddress = "10.0.0.2:0"\n${tls}`, '2: dpu.address: port 0 is out of range (1-65535)');
  expectError(`[dpu]\naddress = "10.0.0.2"\n${tls}`, '2: dpu.address: "10.0.0.2" is not host:port (an IPv6 address in brackets: [fd00::2]:7443)');
  expectError(`[dpu]\naddress = "fd00::2:7443"\n${tls}`, '2: dpu.address: "fd00::2:7443" is not host:port (an IPv6 address in brackets: [fd00::2]:7443)');
  expectError(`[dpu]\naddress = ":7443"\n${tls}`, '2: dpu.address: ":7443" is not host:port (an IPv6 address in brackets: [fd00::2]:7443)');
  expectError('[dpu]\ntimeout_ms = 0\n', '2: dpu.timeout_ms: must be between 1 and 2147483647, not 0');
  expectError('[dpu]\ntimeout_ms = -5\n', '2: dpu.timeout_ms: must be between 1 and 2147483647, not -5');
  expectError('state_dir = "run/heteropod"\n', '1: state_dir: must be an absolute path, not "run/heteropod"');
  expectError(
    `# one byte too long\nstate_dir = "/run/${'s'.repeat(35)}"\n`,
    '2: state_dir: 40 bytes, more than 39: <state_dir>/s/<64 hex digits> must fit a unix socket path (106 bytes)',
  );
  expectError('runc_shim = ""\n', '1: runc_shim: must not be empty');
  expectError('[xpu]\nhost_mode = "spin"\n', '2: xpu.host_mode: must be one of served, sleep, elastic, poll, not "spin"');
});

test('[dpu] address needs its TLS files: the error names the address line', () => {
  expectError('[dpu]\naddress = "10.0.0.2:7443"\ncert = "/c"\nkey = "/k"\n', '2: dpu.address: needs ca, cert and key in [dpu] (missing: ca)');
  expectError('\n\n[dpu]\nca = ""\naddress = "10.0.0.2:7443"\n', '5: dpu.address: needs ca, cert and key in [dpu] (missing: ca, cert, key)');
  // TLS files without an address: no DPU, and nothing wrong.
  expectConfig('[dpu]\nca = "/ca"\n', { ...defaultConfig(), dpu: { ...defaultConfig().dpu, ca: '/ca' } });
});

test('a file that cannot be read is an error, not the defaults', () => {
  for (const { name, result } of readers(dir)) assert.is(result, `${dir}: read: Is a directory`, name);
});

test.after(() => fs.rmSync(dir, { recursive: true, force: true }));

test.run();
