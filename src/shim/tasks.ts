// The pod's tasks as the router sees them: which runtime holds each one, and its
// lifecycle as an explicit state machine. A transition that the lifecycle does not
// allow is refused rather than silently recorded.
import type { Runtime } from '../runcshim/runtime';
import { failedPrecondition, notFound, alreadyExists } from '../ttrpc';

export type TaskStatus = 'creating' | 'created' | 'running' | 'stopped' | 'deleted';

const NEXT: Record<TaskStatus, readonly TaskStatus[]> = {
  creating: ['created', 'deleted'],
  created: ['running', 'stopped', 'deleted'],
  running: ['stopped', 'deleted'],
  stopped: ['deleted'],
  deleted: [],
};

export class Task {
  private current: TaskStatus;

  // `status`: where a task taken over from a node daemon that is gone stood.
  constructor(readonly id: string, readonly bundle: string, readonly runtime: Runtime, status: TaskStatus = 'creating') {
    this.current = status;
  }

  get status(): TaskStatus {
    return this.current;
  }

  transition(to: TaskStatus): void {
    if (to === this.current) return;
    if (!NEXT[this.current].includes(to)) throw failedPrecondition(`task ${this.id}: cannot go from ${this.current} to ${to}`);
    this.current = to;
  }

  // Events may arrive late (an exit after a delete); those are ignored.
  observe(to: TaskStatus): void {
    if (NEXT[this.current].includes(to)) this.current = to;
  }
}

export class TaskTable {
  private readonly tasks = new Map<string, Task>();

  get size(): number {
    return this.tasks.size;
  }

  ids(): string[] {
    return [...this.tasks.keys()];
  }

  all(): Task[] {
    return [...this.tasks.values()];
  }

  add(task: Task): void {
    if (this.tasks.has(task.id)) throw alreadyExists(`task ${task.id}`);
    this.tasks.set(task.id, task);
  }

  find(id: string): Task | undefined {
    return this.tasks.get(id);
  }

  get(id: string): Task {
    const task = this.tasks.get(id);
    if (!task) throw notFound(`task ${id}`);
    return task;
  }

  remove(id: string): void {
    this.tasks.get(id)?.observe('deleted');
    this.tasks.delete(id);
  }
}
