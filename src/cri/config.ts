// User-written CRI configs (pod sandbox and container configs, as crictl reads
// them): JSON or YAML, snake_case or lowerCamelCase field names. Every field is
// checked against the CRI message type so a typo is an error that names it,
// rather than a field silently dropped on the wire.
import * as fs from 'node:fs';
import * as protobuf from 'protobufjs';
import * as YAML from 'yaml';
import { criType } from './proto';

export type CriObject = Record<string, unknown>;

export class ConfigError extends Error {}

export function parseConfigText(text: string, what: string): CriObject {
  let doc: unknown;
  try {
    doc = YAML.parse(text, { prettyErrors: true });
  } catch (err) {
    throw new ConfigError(`${what} does not parse: ${(err as Error).message.split('\n')[0]}`);
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
    throw new ConfigError(`${what} does not parse: expected an object at the top level`);
  }
  return doc as CriObject;
}

export function readConfigFile(file: string, what: string): CriObject {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`${what} ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
  }
  return parseConfigText(text, `${what} ${file}`);
}

function snakeCase(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/**
 * Returns `value` with field names normalised to the .proto's names, after
 * checking each against `type`. Map fields (labels, annotations, sysctls…) keep
 * their keys. Throws ConfigError naming the path of the first bad field.
 */
export function normaliseMessage(type: protobuf.Type, value: unknown, where: string): CriObject {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new ConfigError(`${where}: expected an object for ${type.name}`);
  }
  const out: CriObject = {};
  for (const [key, v] of Object.entries(value as CriObject)) {
    const field = type.fields[key] ?? type.fields[snakeCase(key)];
    if (!field) {
      const known = Object.keys(type.fields).join(', ');
      throw new ConfigError(`${where}.${key}: unknown field of ${type.name} (known: ${known})`);
    }
    out[field.name] = normaliseField(field, v, `${where}.${key}`);
  }
  return out;
}

function normaliseField(field: protobuf.Field, value: unknown, where: string): unknown {
  field.resolve();
  if (value === null || value === undefined) return undefined;
  if (field instanceof protobuf.MapField) {
    if (typeof value !== 'object' || Array.isArray(value)) throw new ConfigError(`${where}: expected a map`);
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as CriObject)) {
      out[k] = field.resolvedType instanceof protobuf.Type ? normaliseMessage(field.resolvedType, v, `${where}.${k}`) : scalar(field, v, `${where}.${k}`);
    }
    return out;
  }
  if (field.repeated) {
    if (!Array.isArray(value)) throw new ConfigError(`${where}: expected a list`);
    return value.map((v, i) => normaliseSingle(field, v, `${where}[${i}]`));
  }
  return normaliseSingle(field, value, where);
}

function normaliseSingle(field: protobuf.Field, value: unknown, where: string): unknown {
  if (field.resolvedType instanceof protobuf.Type) return normaliseMessage(field.resolvedType, value, where);
  if (field.resolvedType instanceof protobuf.Enum) {
    const values = field.resolvedType.values;
    if (typeof value === 'number' && Object.values(values).includes(value)) return value;
    if (typeof value === 'string' && value in values) return value;
    throw new ConfigError(`${where}: ${JSON.stringify(value)} is not one of ${Object.keys(values).join(', ')}`);
  }
  return scalar(field, value, where);
}

function scalar(field: protobuf.Field, value: unknown, where: string): unknown {
  switch (field.type) {
    case 'string':
      if (typeof value === 'string') return value;
      if (typeof value === 'number' || typeof value === 'boolean') return String(value);
      break;
    case 'bool':
      if (typeof value === 'boolean') return value;
      break;
    case 'bytes':
      if (typeof value === 'string') return Buffer.from(value);
      break;
    default: // the integer and floating types
      if (typeof value === 'number' && Number.isFinite(value)) return value;
      if (typeof value === 'string' && /^-?\d+$/.test(value)) return Number(value);
  }
  throw new ConfigError(`${where}: expected ${field.type}, got ${JSON.stringify(value)}`);
}

export function podSandboxConfig(raw: CriObject, where = 'pod config'): CriObject {
  const config = normaliseMessage(criType('PodSandboxConfig'), raw, where);
  const metadata = config.metadata as CriObject | undefined;
  if (!metadata || !metadata.name) throw new ConfigError(`${where}: metadata.name is required`);
  if (!metadata.namespace) metadata.namespace = 'default';
  if (!metadata.uid) metadata.uid = `${metadata.namespace}-${metadata.name}-${process.pid}-${Date.now()}`;
  return config;
}

export function containerConfig(raw: CriObject, where = 'container config'): CriObject {
  const config = normaliseMessage(criType('ContainerConfig'), raw, where);
  const metadata = config.metadata as CriObject | undefined;
  if (!metadata || !metadata.name) throw new ConfigError(`${where}: metadata.name is required`);
  const image = config.image as CriObject | undefined;
  if (!image || !image.image) throw new ConfigError(`${where}: image.image is required`);
  return config;
}
