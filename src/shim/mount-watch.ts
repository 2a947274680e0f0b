// Keeps the DPU's copies of one offloaded container's mounts as live as the
// host's: the kubelet updates a ConfigMap, Secret, projected (service-account
// token) or downward-API volume by writing the new data beside the old and
// swapping the volume's `..data` symlink (its atomic writer), and a container on
// the host sees that through its bind mount at once.
//
// Each shipped source but the termination-message file (which goes the other
// way, at the exit) is watched:
//   - fs.watch (inotify) on the source: a directory's watch sees the `..data`
//     rename in it, a file's sees writes to it; events are let settle briefly
//     (the writer makes several changes) before the sources are looked at;
//   - a re-check every RECHECK_MS as the safety net, for what a watch cannot see
//     (a change deeper in a plain directory, a file replaced by another, a watch
//     that failed): a fingerprint of stats (mounted-files.ts), no content read,
//     so an idle pod costs a few stat calls per mount and period.
// A source whose fingerprint differs from the one the DPU's copy was made from is
// read and sent (UpdateFiles, all changed mounts of the container in one call).
// The fingerprint is taken before the content is read, so a change during the
// read is sent again at the next look. A send that failed is tried again (soon
// when the agent was away); content the agent refuses is not, until it changes;
// a container the agent no longer knows ends the watch.
import * as fs from 'node:fs';
import type { MountedFile } from '../agentapi/proto';
import { Code, RpcError } from '../common/status';
import type { Logger } from '../common/log';
import { isTerminationLog, OciMount } from '../oci/mounts';
import { readMountedFile, shippedMounts, sourceFingerprint } from './mounted-files';

export const RECHECK_MS = 10_000;
// How long the kubelet's writer gets to finish before the sources are looked at.
const SETTLE_MS = 100;
const RETRY_MS = 1000;

export interface MountWatchOptions {
  containerId: string;
  // the container's spec's mounts: those shipped are watched
  mounts: OciMount[];
  // sends the new content of changed mounts to the agent (UpdateFiles)
  send: (files: MountedFile[]) => Promise<void>;
  log: Logger;
  recheckMs?: number;
  settleMs?: number;
  retryMs?: number;
}

interface Watched {
  mount: OciMount & { source: string };
  // the fingerprint of what the DPU's copy holds; null: unknown, send it
  sent: string | null;
  // a fingerprint whose content could not be read or sent for good: not tried again
  refused: string | null;
  watcher: fs.FSWatcher | null;
  watchedIno: bigint;
}

export class MountWatch {
  private readonly watched: Watched[];
  private readonly recheckMs: number;
  private readonly settleMs: number;
  private readonly retryMs: number;
  private timer: NodeJS.Timeout | null = null;
  private soonTimer: NodeJS.Timeout | null = null;
  private checking: Promise<void> | null = null;
  private again = false;
  // the last send failed (its warning said once)
  private failing = false;
  private started = false;
  private closed = false;

  /**
   * Takes each source's fingerprint now: call it before the content that the
   * DPU's copies are made of is read (Create), so that no change falls between.
   */
  constructor(private readonly opts: MountWatchOptions) {
    this.recheckMs = opts.recheckMs ?? RECHECK_MS;
    this.settleMs = opts.settleMs ?? SETTLE_MS;
    this.retryMs = opts.retryMs ?? RETRY_MS;
    this.watched = shippedMounts(opts.mounts)
      .filter((m) => !isTerminationLog(m))
      .map((m) => ({ mount: m as OciMount & { source: string }, sent: this.fingerprint(m.source as string), refused: null, watcher: null, watchedIno: -1n }));
  }

  /** The destinations watched. */
  get destinations(): string[] {
    return this.watched.map((w) => w.mount.destination);
  }

  /**
   * Starts watching. `resend`: what the DPU holds is not known (the node daemon
   * restarted and may have missed changes): every source is sent once now.
   */
  start(resend = false): void {
    if (this.started || this.closed || this.watched.length === 0) return;
    this.started = true;
    if (resend) for (const w of this.watched) w.sent = null;
    for (const w of this.watched) this.arm(w);
    this.timer = setInterval(() => void this.check(), this.recheckMs);
    this.timer.unref();
    if (resend) void this.check();
  }

  /** Stops every watch and timer; an update being sent finishes, nothing follows it. */
  close(): void {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    if (this.soonTimer) clearTimeout(this.soonTimer);
    this.timer = this.soonTimer = null;
    for (const w of this.watched) this.disarm(w);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Looks at every source now and sends what changed; one look at a time (a look asked meanwhile follows). */
  check(): Promise<void> {
    if (this.closed) return Promise.resolve();
    if (this.checking) {
      this.again = true;
      return this.checking;
    }
    this.checking = (async () => {
      do {
        this.again = false;
        await this.checkOnce();
      } while (this.again && !this.closed);
    })().finally(() => (this.checking = null));
    return this.checking;
  }

  private soon(delayMs = this.settleMs): void {
    if (this.closed || this.soonTimer) return;
    this.soonTimer = setTimeout(() => {
      this.soonTimer = null;
      void this.check();
    }, delayMs);
    this.soonTimer.unref();
  }

  private async checkOnce(): Promise<void> {
    const changed: { w: Watched; fingerprint: string }[] = [];
    for (const w of this.watched) {
      const fingerprint = this.fingerprint(w.mount.source);
      this.arm(w);
      if (fingerprint === null || fingerprint === w.sent || fingerprint === w.refused) continue;
      changed.push({ w, fingerprint });
    }
    if (changed.length === 0 || this.closed) return;
    const files: MountedFile[] = [];
    const sending: typeof changed = [];
    for (const c of changed) {
      try {
        files.push(readMountedFile(c.w.mount));
        sending.push(c);
      } catch (err) {
        // Gone since (a pod being removed), or too large to ship: not tried again until it changes.
        c.w.refused = c.fingerprint;
        this.opts.log.warn('read a mounted volume of a DPU container; the DPU keeps its copy', { id: this.opts.containerId, mount: c.w.mount.destination, error: (err as Error).message });
      }
    }
    if (files.length === 0) return;
    const mounts = files.map((f) => f.destination).join(',');
    try {
      await this.opts.send(files);
    } catch (err) {
      if (this.closed) return;
      const code = err instanceof RpcError ? err.code : Code.UNKNOWN;
      const error = (err as Error).message;
      if (code === Code.NOT_FOUND) {
        this.opts.log.info('the DPU no longer has the container: its mounts are not watched any more', { id: this.opts.containerId, error });
        this.close();
        return;
      }
      // Refused (not the kind of mount it was, or larger than a message may be): until it changes.
      if (code === Code.INVALID_ARGUMENT || code === Code.FAILED_PRECONDITION || code === Code.RESOURCE_EXHAUSTED) {
        for (const c of sending) c.w.refused = c.fingerprint;
        this.opts.log.warn('the DPU refused new content of a container\'s mounts; it keeps its copy', { id: this.opts.containerId, mounts, error });
        return;
      }
      // Said once per outage. An agent that is away is asked again soon; any
      // other failure at the next re-check.
      if (!this.failing) this.opts.log.warn('send new content of a container\'s mounts to the DPU; trying again', { id: this.opts.containerId, mounts, error });
      this.failing = true;
      if (code === Code.UNAVAILABLE || code === Code.DEADLINE_EXCEEDED) this.soon(this.retryMs);
      return;
    }
    for (const c of sending) {
      c.w.sent = c.fingerprint;
      c.w.refused = null;
    }
    this.failing = false;
    this.opts.log.info('mounted volumes updated on the DPU', { id: this.opts.containerId, mounts });
  }

  private fingerprint(source: string): string | null {
    try {
      return sourceFingerprint(source);
    } catch (err) {
      this.opts.log.warn('look at a mounted volume of a DPU container', { id: this.opts.containerId, source, error: (err as Error).message });
      return null;
    }
  }

  // A watch on the source as it is now: made when there is none (a failed one
  // is dropped), and made again when the source is another inode (a file or
  // directory replaced: the old watch follows the old inode).
  private arm(w: Watched): void {
    if (!this.started || this.closed) return;
    let ino: bigint;
    try {
      ino = fs.statSync(w.mount.source, { bigint: true }).ino;
    } catch {
      this.disarm(w);
      return;
    }
    if (w.watcher && w.watchedIno === ino) return;
    this.disarm(w);
    try {
      const watcher = fs.watch(w.mount.source, { persistent: false }, () => this.soon());
      watcher.on('error', () => {
        if (w.watcher === watcher) this.disarm(w);
      });
      w.watcher = watcher;
      w.watchedIno = ino;
    } catch {
      // not watchable now: the re-check looks at it, and tries again
    }
  }

  private disarm(w: Watched): void {
    w.watcher?.close();
    w.watcher = null;
    w.watchedIno = -1n;
  }
}
