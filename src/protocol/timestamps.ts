import { BrokerError } from '../errors.js';
import type { Timestamp } from '../gen/google/protobuf/Timestamp.js';

export function toTimestamp(date: Date): Timestamp {
  const ms = date.getTime();
  const seconds = Math.floor(ms / 1000);
  return { seconds: String(seconds), nanos: (ms - seconds * 1000) * 1_000_000 };
}

/** A Timestamp as a Date; one outside what a Date can hold is INVALID_ARGUMENT. */
export function fromTimestamp(ts: { seconds?: string | number | null; nanos?: number | null } | null | undefined, field = 'timestamp'): Date | undefined {
  if (!ts) return undefined;
  const date = new Date(Number(ts.seconds ?? 0) * 1000 + Math.floor((ts.nanos ?? 0) / 1_000_000));
  if (!Number.isFinite(date.getTime())) throw new BrokerError('invalid-argument', `${field} is out of range`);
  return date;
}
