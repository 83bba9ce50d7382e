import { BrokerError } from '../errors.js';
import type { Timestamp } from '../gen/google/protobuf/Timestamp.js';

export function toTimestamp(date: Date): Timestamp {
  const ms = date.getTime();
  const seconds = Math.floor(ms / 1000);
  return { seconds: String(seconds), nanos: (ms - seconds * 1000) * 1_000_000 };
}

type TimestampLike = { seconds?: string | number | null; nanos?: number | null } | null | undefined;

/** A Timestamp (or Duration) in milliseconds; undefined when absent or not a finite number. */
export function timestampMillis(ts: TimestampLike): number | undefined {
  if (!ts) return undefined;
  const ms = Number(ts.seconds ?? 0) * 1000 + Math.floor((ts.nanos ?? 0) / 1_000_000);
  return Number.isFinite(ms) ? ms : undefined;
}

/** A Timestamp as a Date; one outside what a Date can hold is INVALID_ARGUMENT. */
export function fromTimestamp(ts: TimestampLike, field = 'timestamp'): Date | undefined {
  if (!ts) return undefined;
  const date = new Date(timestampMillis(ts) ?? Number.NaN);
  if (!Number.isFinite(date.getTime())) throw new BrokerError('invalid-argument', `${field} is out of range`);
  return date;
}
