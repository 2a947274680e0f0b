// Where a pod's shim keeps its socket and state. One shim serves a pod: the group
// is the CRI sandbox id, or the task id for a task outside any pod.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

export const SANDBOX_ID_ANNOTATION = 'io.kubernetes.cri.sandbox-id';
// Unix socket paths are limited to 108 bytes including the terminator.
const MAX_SOCKET_PATH = 106;

export function groupOf(id: string, annotations: Record<string, string> | undefined): string {
  return annotations?.[SANDBOX_ID_ANNOTATION] || id;
}

export interface GroupPaths {
  // Our ttrpc socket; containerd and runc's shim (for events) connect here.
  socket: string;
  // Per-pod state: runc's shim runs with `runc/` as its working directory.
  dir: string;
  runcWorkDir: string;
}

// The socket name hashes a prefix of our own with containerd's address, the
// namespace and the group, so it never equals runc's shim socket for the same pod.
export function groupPaths(stateDir: string, containerdAddress: string, namespace: string, group: string): GroupPaths {
  const digest = crypto.createHash('sha256').update(`heteropod\0${containerdAddress}\0${namespace}\0${group}`).digest('hex');
  const socket = path.join(stateDir, 's', digest);
  if (socket.length > MAX_SOCKET_PATH) throw new Error(`socket path ${socket} longer than ${MAX_SOCKET_PATH} bytes; choose a shorter state_dir`);
  const dir = path.join(stateDir, 'pods', namespace, group);
  return { socket, dir, runcWorkDir: path.join(dir, 'runc') };
}

// Removes a directory only if it is empty: another pod's shim may be using it.
export function removeIfEmpty(dir: string): void {
  try {
    fs.rmdirSync(dir);
  } catch {
    // not empty, or gone
  }
}
