// Task events reach containerd in the order they were published (create → start
// → exit → delete): handlers only enqueue; one loop forwards each event to
// containerd's Events service on $TTRPC_ADDRESS, retrying a bounded number of
// times and reconnecting if containerd restarted.
import { TtrpcClient } from '../ttrpc';
import type { KeyValue } from '../ttrpc';
import type { Logger } from '../common/log';
import { EVENTS_SERVICE } from '../runcshim/runtime';

// Bounded retries: about 10 s in all, long enough to ride out a containerd restart.
const ATTEMPTS = 12;
const MAX_BACKOFF_MS = 1000;

interface Queued {
  request: Buffer; // an encoded ForwardRequest
  metadata: KeyValue[];
  topic: string;
}

export class EventForwarder {
  private readonly queue: Queued[] = [];
  private client: TtrpcClient | null = null;
  private running = false;
  private idle: (() => void)[] = [];

  constructor(private readonly address: string, private readonly log: Logger) {}

  enqueue(request: Buffer, metadata: KeyValue[], topic: string): void {
    this.queue.push({ request, metadata, topic });
    if (!this.running) void this.drain();
  }

  // Resolves once every queued event has been forwarded or given up on, or at the deadline.
  flush(timeoutMs: number): Promise<void> {
    if (!this.running && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.idle.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  close(): void {
    this.client?.close();
    this.client = null;
  }

  private async drain(): Promise<void> {
    this.running = true;
    while (this.queue.length > 0) {
      const event = this.queue[0];
      for (let attempt = 1; ; attempt++) {
        try {
          const client = await this.connect();
          await client.call(EVENTS_SERVICE, 'Forward', event.request, { metadata: event.metadata, timeoutMs: 5000 });
          this.log.debug('event forwarded', { topic: event.topic });
          break;
        } catch (err) {
          this.client?.close();
          this.client = null;
          if (attempt >= ATTEMPTS) {
            this.log.error('forward event: giving up', { topic: event.topic, error: (err as Error).message });
            break;
          }
          await new Promise((r) => setTimeout(r, Math.min(MAX_BACKOFF_MS, 50 * 2 ** attempt)));
        }
      }
      this.queue.shift();
    }
    this.running = false;
    for (const done of this.idle.splice(0)) done();
  }

  private async connect(): Promise<TtrpcClient> {
    if (this.client && !this.client.closed) return this.client;
    if (!this.address) throw new Error('TTRPC_ADDRESS is not set');
    this.client = await TtrpcClient.connect(this.address, { timeoutMs: 2000 });
    return this.client;
  }
}
