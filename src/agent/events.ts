// Task events of each pod's DPU containers, on their way to the host shim.
//
// The DPU's runc shims publish to the agent's own ttrpc Events service (their
// TTRPC_ADDRESS); each event is filed under its pod (found from the container id
// every task event carries in field 1) with a sequence number and kept, a bounded
// number per pod, until the host shim's Events stream has it. Sequence numbers
// start from the agent's start time in microseconds, so that they keep growing
// across an agent restart and a host shim that reconnects with `after` set to the
// last one it saw gets everything newer, and nothing twice.
import { readFields, str, field } from '../proto/wire';
import { forwardedEvent } from '../taskapi/messages';

export interface PodEvent {
  sequence: number;
  topic: string;
  forward: Buffer;
  // the exit of a container's init: what its termination-message file held
  terminationMessage?: Buffer;
}

type Listener = (event: PodEvent) => void;

const KEEP = 1000;

class PodEventLog {
  readonly events: PodEvent[] = [];
  readonly listeners = new Set<Listener>();
}

export class EventHub {
  private next: number;
  private readonly pods = new Map<string, PodEventLog>();

  constructor(startedAtMs = Date.now()) {
    this.next = startedAtMs * 1000;
  }

  /** Files a ForwardRequest from a runc shim under `podId`. */
  publish(podId: string, forward: Buffer, terminationMessage?: Buffer): PodEvent {
    const e = forwardedEvent(forward);
    const event: PodEvent = { sequence: ++this.next, topic: e.topic, forward, terminationMessage };
    const log = this.log(podId);
    log.events.push(event);
    if (log.events.length > KEEP) log.events.shift();
    for (const l of log.listeners) l(event);
    return event;
  }

  /** Calls `listener` with each kept event after `after`, then with new ones; returns the unsubscribe. */
  subscribe(podId: string, after: number, listener: Listener): () => void {
    const log = this.log(podId);
    for (const e of log.events) if (e.sequence > after) listener(e);
    log.listeners.add(listener);
    return () => log.listeners.delete(listener);
  }

  forget(podId: string): void {
    this.pods.delete(podId);
  }

  private log(podId: string): PodEventLog {
    let log = this.pods.get(podId);
    if (!log) {
      log = new PodEventLog();
      this.pods.set(podId, log);
    }
    return log;
  }
}

/** The container id a task event names (field 1 of every containerd task event). */
export function eventContainerId(forward: Buffer): string {
  const envelope = field(readFields(forward), 1);
  if (!envelope) return '';
  const any = field(readFields(envelope.bytes), 4);
  if (!any) return '';
  const value = field(readFields(any.bytes), 2);
  return value ? str(readFields(value.bytes), 1) : '';
}
