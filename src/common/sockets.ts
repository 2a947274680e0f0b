// Unix sockets as the shim, its proxy's peers and the tests look at them.
import * as net from 'node:net';

/**
 * Whether something accepts connections on a shim socket, given as a path or as a
 * `unix://` address (an empty address never answers). This is how `delete` finds a
 * pod's shim dead, and the test bed its node daemon up.
 */
export function socketAnswers(socketOrAddress: string): Promise<boolean> {
  const socketPath = socketOrAddress.replace(/^unix:\/\//, '');
  if (!socketPath) return Promise.resolve(false);
  return new Promise((resolve) => {
    const s = net.connect(socketPath);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/**
 * One connection at a time to a peer that may first have to be found or
 * started: an open one is reused, and callers that come while an attempt is in
 * flight share it. A failed attempt is not kept: the next get tries again.
 */
export class OneConnection<T extends { readonly closed: boolean; close(): void }> {
  private made: T | null = null;
  private attempt: Promise<T> | null = null;

  /** The open connection, or the one `connect` makes (unless one is being made). */
  get(connect: () => Promise<T>): Promise<T> {
    if (this.made && !this.made.closed) return Promise.resolve(this.made);
    if (!this.attempt) {
      const attempt = connect();
      this.attempt = attempt;
      attempt.then(
        (c) => {
          this.made = c;
          this.attempt = null;
        },
        () => {
          this.attempt = null;
        },
      );
    }
    return this.attempt;
  }

  /** The connection last made, open or not, until forgotten. */
  get current(): T | null {
    return this.made;
  }

  /** The open connection or the one being made, without making one. */
  pending(): Promise<T> | null {
    return this.made && !this.made.closed ? Promise.resolve(this.made) : this.attempt;
  }

  /** The connection last made, or else the one being made once it is (null: none, or it failed). */
  async settled(): Promise<T | null> {
    return this.made ?? (await this.attempt?.catch(() => null)) ?? null;
  }

  /** An attempt in flight settles; then the connection is closed and forgotten. */
  async close(): Promise<void> {
    await this.attempt?.catch(() => undefined);
    this.made?.close();
    this.made = null;
  }

  forget(): void {
    this.made = null;
  }
}
