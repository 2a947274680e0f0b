// The images HeteroPod runs, described as data: which files of this machine go into
// each image's single layer and what its OCI config says. Nothing here touches the
// file system; src/images/rootfs.ts turns a definition into layer entries.
import * as path from 'node:path';

/** Root of the repository: this file compiles to dist/src/images/, three levels down. */
export const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');

/** Where a binary comes from on this machine, and how a user gets it when it is missing. */
export interface HostSource {
  /** Absolute path on this machine. */
  path: string;
  /** The Debian package that installs it (`make deps` installs these). */
  debianPackage?: string;
  /** The make target that builds it, for files this repository builds. */
  makeTarget?: string;
}

/**
 * One thing placed in the image's root file system. Image paths are absolute
 * ("/bin/sh"); parent directories are created (0755) when nothing names them.
 */
export type RootfsItem =
  /** A binary copied from this machine; with `libraries`, also its `ldd` closure at the same paths. */
  | { kind: 'binary'; path: string; source: HostSource; libraries: boolean }
  | { kind: 'directory'; path: string; mode: number }
  | { kind: 'file'; path: string; mode: number; content: string }
  | { kind: 'symlink'; path: string; target: string }
  /** A symlink `<dir>/<applet>` → `busybox` for every applet the busybox at `<dir>/busybox` lists. */
  | { kind: 'busybox-applets'; dir: string; source: HostSource; required: string[] };

/** The part of an OCI image config that says how to run the image. */
export interface ImageRunConfig {
  Env: string[];
  Entrypoint?: string[];
  Cmd?: string[];
  WorkingDir: string;
}

export interface ImageDefinition {
  /** Full reference, e.g. `heteropod.local/busybox:1`. */
  name: string;
  /** Short name used on the command line and for archive files, e.g. `busybox`. */
  shortName: string;
  files: RootfsItem[];
  config: ImageRunConfig;
}

export const IMAGE_REGISTRY = 'heteropod.local';
export const IMAGE_TAG = '1';

const DEFAULT_PATH = 'PATH=/bin:/usr/bin:/sbin:/usr/sbin';

const BUSYBOX: HostSource = { path: '/bin/busybox', debianPackage: 'busybox-static' };

/** Applets the test bed and users rely on; building fails if the busybox lacks one. */
export const REQUIRED_APPLETS = [
  'sh', 'ash', 'ls', 'cat', 'echo', 'sleep', 'httpd', 'wget', 'nc', 'ps', 'top', 'id',
  'env', 'grep', 'sed', 'head', 'tail', 'true', 'false', 'mkdir', 'rm', 'date',
  'hostname', 'ip', 'ifconfig', 'netstat', 'kill', 'printf', 'wc', 'seq', 'uname', 'vi',
  'yes', 'touch', 'dd', 'find', 'tee',
];

const PASSWD = 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n';
const GROUP = 'root:x:0:\nnogroup:x:65534:\n';
const NSSWITCH = 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nservices: files\nprotocols: files\n';

// A configuration that starts and keeps running without reaching anything outside
// the pod: one HTTP health endpoint on the pod's loopback. Real deployments mount
// their own /etc/haproxy/haproxy.cfg over it.
const HAPROXY_CFG = `global
    maxconn 256

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend health
    bind 127.0.0.1:8404
    http-request return status 200 content-type text/plain string "ok\\n"
`;

/** What every image holds: users, name service, and the mount points a runtime expects. */
function baseFiles(): RootfsItem[] {
  return [
    { kind: 'directory', path: '/dev', mode: 0o755 },
    { kind: 'directory', path: '/proc', mode: 0o555 },
    { kind: 'directory', path: '/sys', mode: 0o555 },
    { kind: 'directory', path: '/tmp', mode: 0o1777 },
    { kind: 'directory', path: '/etc', mode: 0o755 },
    { kind: 'file', path: '/etc/passwd', mode: 0o644, content: PASSWD },
    { kind: 'file', path: '/etc/group', mode: 0o644, content: GROUP },
    { kind: 'file', path: '/etc/nsswitch.conf', mode: 0o644, content: NSSWITCH },
    // containerd bind-mounts its own files over these two.
    { kind: 'file', path: '/etc/hosts', mode: 0o644, content: '' },
    { kind: 'file', path: '/etc/resolv.conf', mode: 0o644, content: '' },
  ];
}

/** A shell and the usual tools, so `crictl exec <id> sh -c …` works in the image. */
function shellFiles(): RootfsItem[] {
  return [
    { kind: 'binary', path: '/bin/busybox', source: BUSYBOX, libraries: false },
    { kind: 'busybox-applets', dir: '/bin', source: BUSYBOX, required: REQUIRED_APPLETS },
  ];
}

function ref(shortName: string): string {
  return `${IMAGE_REGISTRY}/${shortName}:${IMAGE_TAG}`;
}

export const IMAGES: ImageDefinition[] = [
  {
    name: ref('pause'),
    shortName: 'pause',
    files: [
      ...baseFiles(),
      {
        kind: 'binary',
        path: '/pause',
        source: { path: path.join(REPO_ROOT, 'build', 'pause'), makeTarget: 'build-c' },
        libraries: false,
      },
    ],
    config: { Env: [DEFAULT_PATH], Entrypoint: ['/pause'], WorkingDir: '/' },
  },
  {
    name: ref('busybox'),
    shortName: 'busybox',
    files: [...baseFiles(), ...shellFiles()],
    config: { Env: [DEFAULT_PATH], Cmd: ['sh'], WorkingDir: '/' },
  },
  {
    name: ref('haproxy'),
    shortName: 'haproxy',
    files: [
      ...baseFiles(),
      ...shellFiles(),
      {
        kind: 'binary',
        path: '/usr/sbin/haproxy',
        source: { path: '/usr/sbin/haproxy', debianPackage: 'haproxy' },
        libraries: true,
      },
      { kind: 'directory', path: '/etc/haproxy', mode: 0o755 },
      { kind: 'file', path: '/etc/haproxy/haproxy.cfg', mode: 0o644, content: HAPROXY_CFG },
      { kind: 'directory', path: '/var/lib/haproxy', mode: 0o755 },
    ],
    config: {
      Env: [DEFAULT_PATH],
      Entrypoint: ['/usr/sbin/haproxy'],
      Cmd: ['-f', '/etc/haproxy/haproxy.cfg'],
      WorkingDir: '/',
    },
  },
  {
    name: ref('node-exporter'),
    shortName: 'node-exporter',
    files: [
      ...baseFiles(),
      ...shellFiles(),
      {
        kind: 'binary',
        path: '/usr/bin/prometheus-node-exporter',
        source: { path: '/usr/bin/prometheus-node-exporter', debianPackage: 'prometheus-node-exporter' },
        libraries: true,
      },
    ],
    config: { Env: [DEFAULT_PATH], Entrypoint: ['/usr/bin/prometheus-node-exporter'], WorkingDir: '/' },
  },
];

/** Full references of every image, in build order. */
export function imageNames(): string[] {
  return IMAGES.map((def) => def.name);
}

/** Finds an image by short name (`busybox`) or full reference (`heteropod.local/busybox:1`). */
export function findImage(name: string): ImageDefinition {
  const def = IMAGES.find((d) => d.name === name || d.shortName === name);
  if (!def) {
    const known = IMAGES.map((d) => `${d.shortName} (${d.name})`).join(', ');
    throw new Error(`unknown image "${name}"; known images: ${known}`);
  }
  return def;
}

/** The definitions for `names`, or all of them when `names` is empty. */
export function selectImages(names: readonly string[] | undefined): ImageDefinition[] {
  if (!names || names.length === 0) return [...IMAGES];
  return names.map(findImage);
}

/** Maps Node's architecture name to the OCI/Go one. */
export function ociArchitecture(arch: string = process.arch): string {
  switch (arch) {
    case 'x64':
      return 'amd64';
    case 'arm64':
      return 'arm64';
    default:
      throw new Error(`no OCI architecture known for Node architecture "${arch}"`);
  }
}

/** The message for a file an image needs that this machine lacks. */
export function missingSourceMessage(imageName: string, source: HostSource): string {
  let remedy: string;
  if (source.debianPackage) {
    remedy = `install the Debian package ${source.debianPackage} (run \`make deps\`)`;
  } else if (source.makeTarget) {
    remedy = `build it with \`make ${source.makeTarget}\``;
  } else {
    remedy = 'install it';
  }
  return `image ${imageName} needs ${source.path}, which is not on this machine: ${remedy}`;
}
