// Keys and certificates for the management link, made with openssl at `dpu up`:
// a CA, the agent's server certificate (SAN = the DPU's address) and the shim's
// client certificate. The agent trusts only this CA for clients, and the shim
// only this CA for the agent. P-256 keys: small and fast.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { AGENT_SERVER_NAME } from '../agentapi/client';
import { run } from '../testbed/proc';

export interface PkiFiles {
  dir: string;
  caKey: string;
  caCert: string;
  agentKey: string;
  agentCert: string;
  shimKey: string;
  shimCert: string;
}

/** The set's files in `dir`, by their usual names. */
export function pkiIn(dir: string): PkiFiles {
  const f = (name: string) => path.join(dir, name);
  return { dir, caKey: f('ca.key'), caCert: f('ca.crt'), agentKey: f('agent.key'), agentCert: f('agent.crt'), shimKey: f('shim.key'), shimCert: f('shim.crt') };
}

const DAYS = '825';
const KEY_ARGS = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

export function pkiComplete(files: PkiFiles): boolean {
  return [files.caKey, files.caCert, files.agentKey, files.agentCert, files.shimKey, files.shimCert].every((f) => fs.existsSync(f));
}

/** A self-signed CA. Exported so tests can make a foreign one. */
export async function makeCa(keyFile: string, certFile: string, commonName: string): Promise<void> {
  await run('openssl', ['req', '-x509', ...KEY_ARGS, '-keyout', keyFile, '-out', certFile, '-days', DAYS, '-subj', `/CN=${commonName}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  fs.chmodSync(keyFile, 0o600);
}

/** A leaf certificate signed by the CA; `extensions` are x509v3 config lines. */
export async function makeLeaf(ca: { key: string; cert: string }, keyFile: string, certFile: string, commonName: string, extensions: string[]): Promise<void> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'hp-pki-'));
  try {
    const csr = path.join(tmp, 'req.csr');
    const ext = path.join(tmp, 'ext.cnf');
    fs.writeFileSync(ext, `${['basicConstraints=critical,CA:FALSE', 'keyUsage=critical,digitalSignature', ...extensions].join('\n')}\n`);
    await run('openssl', ['req', '-new', ...KEY_ARGS, '-keyout', keyFile, '-out', csr, '-subj', `/CN=${commonName}`]);
    fs.chmodSync(keyFile, 0o600);
    const serial = `0x${Buffer.from(Array.from({ length: 16 }, () => Math.floor(Math.random() * 256))).toString('hex')}`;
    await run('openssl', ['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-set_serial', serial, '-days', DAYS, '-out', certFile, '-extfile', ext]);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** Makes the whole set in `files.dir`; an existing complete set is kept (so the shim's copy stays valid). */
export async function ensurePki(files: PkiFiles, agentIp: string): Promise<'kept' | 'made'> {
  if (pkiComplete(files)) return 'kept';
  fs.rmSync(files.dir, { recursive: true, force: true });
  fs.mkdirSync(files.dir, { recursive: true, mode: 0o700 });
  try {
    await makeCa(files.caKey, files.caCert, 'HeteroPod DPU CA');
    await makeLeaf({ key: files.caKey, cert: files.caCert }, files.agentKey, files.agentCert, 'heteropod-dpu-agent',
      [`subjectAltName=IP:${agentIp},DNS:${AGENT_SERVER_NAME}`, 'extendedKeyUsage=serverAuth']);
    await makeLeaf({ key: files.caKey, cert: files.caCert }, files.shimKey, files.shimCert, 'heteropod-shim',
      ['extendedKeyUsage=clientAuth']);
  } catch (err) {
    fs.rmSync(files.dir, { recursive: true, force: true });
    throw new Error(`make DPU keys and certificates: ${(err as Error).message}`);
  }
  return 'made';
}
