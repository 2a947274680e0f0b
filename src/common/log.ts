// The shim log: logrus-style `time=… level=… msg=… key=value` lines written to the
// bundle's `log` fifo, which containerd reads and copies into its own log. Writes
// never block and never fail the caller: with no reader (containerd restarting)
// a line is dropped and the fifo is reopened on a later write.
import * as fs from 'node:fs';

export type Level = 'debug' | 'info' | 'warning' | 'error';
export type Fields = Record<string, string | number | boolean | undefined>;

export interface LogSink {
  write(line: string): void;
}

export class FifoSink implements LogSink {
  private fd = -1;

  constructor(private readonly path: string) {}

  write(line: string): void {
    if (this.fd < 0) {
      try {
        this.fd = fs.openSync(this.path, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
      } catch {
        return; // no reader yet
      }
    }
    try {
      fs.writeSync(this.fd, line);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') {
        fs.closeSync(this.fd);
        this.fd = -1;
      }
    }
  }
}

export class StderrSink implements LogSink {
  write(line: string): void {
    process.stderr.write(line);
  }
}

/** Every line to each sink: a pod's lines to its fifo and to the node daemon's log. */
export class TeeSink implements LogSink {
  constructor(private readonly sinks: LogSink[]) {}

  write(line: string): void {
    for (const s of this.sinks) s.write(line);
  }
}

function quote(v: string): string {
  return /^[A-Za-z0-9_.\-/:@+]+$/.test(v) ? v : JSON.stringify(v);
}

export class Logger {
  constructor(private readonly sink: LogSink, readonly debugEnabled: boolean, private readonly fields: Fields = {}) {}

  with(fields: Fields): Logger {
    return new Logger(this.sink, this.debugEnabled, { ...this.fields, ...fields });
  }

  debug(msg: string, fields?: Fields): void {
    if (this.debugEnabled) this.log('debug', msg, fields);
  }
  info(msg: string, fields?: Fields): void {
    this.log('info', msg, fields);
  }
  warn(msg: string, fields?: Fields): void {
    this.log('warning', msg, fields);
  }
  error(msg: string, fields?: Fields): void {
    this.log('error', msg, fields);
  }

  private log(level: Level, msg: string, fields?: Fields): void {
    let line = `time="${new Date().toISOString()}" level=${level} msg=${JSON.stringify(msg)}`;
    for (const [k, v] of Object.entries({ ...this.fields, ...fields })) {
      if (v !== undefined && v !== '') line += ` ${k}=${quote(String(v))}`;
    }
    this.sink.write(`${line}\n`);
  }
}
