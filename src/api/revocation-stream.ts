/**
 * WatchRevocations: the server side of a resource server's revocation stream.
 *
 * The caller is the audience: it gets the revocations of tokens addressed to its own SPIFFE ID
 * and nothing else (a caller that is no token's audience gets an empty snapshot and heartbeats,
 * like anyone else: nothing tells it apart). The stream starts with a snapshot (or, given a
 * cursor this database issued, with everything after it), then carries each new revocation as
 * the replica's feed reads it, and a heartbeat every heartbeat interval while the feed is current.
 *
 * Bounds: streams per caller and per replica; the start (a snapshot may be large) is written at
 * the receiver's pace, but a receiver that lets live messages pile up beyond `maxBufferedBytes`
 * (counted until grpc-js hands them to HTTP/2) is ended with RESOURCE_EXHAUSTED (it resumes with
 * its cursor); the stream
 * ends with UNAVAILABLE when the caller's certificate expires (reconnect with the new SVID), when
 * the start cannot be read from the database, and when the broker shuts down.
 */
import * as grpc from '@grpc/grpc-js';
import type { Revocation } from '../gen/taskbroker/v1/Revocation.js';
import type { WatchRevocationsRequest__Output } from '../gen/taskbroker/v1/WatchRevocationsRequest.js';
import type { WatchRevocationsResponse } from '../gen/taskbroker/v1/WatchRevocationsResponse.js';
import { LogThrottle } from '../observability/log-throttle.js';
import type { Logger } from '../observability/logger.js';
import { taskStateName } from '../protocol/enums.js';
import { RETRY_PUSHBACK_TRAILER } from '../protocol/status.js';
import { toTimestamp } from '../protocol/timestamps.js';
import { decodeRevocationCursor, encodeRevocationCursor, type RevocationEntry } from '../tasks/revocation-log.js';
import type { RevocationFeed } from '../tasks/revocation-feed.js';
import { callerOf } from '../transport/caller.js';
import { toServiceError } from './handlers.js';
import { requestIdOf } from './call-record.js';

export interface RevocationStreamLimits {
  /** Open streams per caller SPIFFE ID. */
  maxPerCaller: number;
  /** Open streams per replica. */
  maxStreams: number;
  /** Entries per message. */
  maxPerMessage: number;
  /** Bytes of live messages a receiver may leave unsent (its HTTP/2 flow control holding them) before its stream is ended. */
  maxBufferedBytes: number;
}

export const DEFAULT_REVOCATION_STREAM_LIMITS: RevocationStreamLimits = { maxPerCaller: 8, maxStreams: 1024, maxPerMessage: 500, maxBufferedBytes: 4 << 20 };

export interface RevocationStreamDeps {
  feed: RevocationFeed;
  logger: Logger;
  limits?: Partial<RevocationStreamLimits>;
  clock?: () => Date;
}

type Call = grpc.ServerWritableStream<WatchRevocationsRequest__Output, WatchRevocationsResponse>;

/** A Duration of `ms` milliseconds. */
function durationOf(ms: number): { seconds: string; nanos: number } {
  return { seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 };
}

/** About what a message of `entries` takes on the wire (the bound on a slow receiver counts these). */
function approximateBytes(entries: readonly RevocationEntry[]): number {
  let bytes = 96;
  for (const e of entries) bytes += 64 + e.taskId.length + e.reason.length;
  return bytes;
}

function revocationMessage(e: RevocationEntry): Revocation {
  return {
    taskId: e.taskId,
    taskState: taskStateName(e.taskState),
    reason: e.reason,
    revokedAt: toTimestamp(e.revokedAt),
    revokedTokens: e.revokedTokens,
    tokensExpireBy: toTimestamp(e.tokensExpireBy),
  };
}

export function watchRevocationsHandler(deps: RevocationStreamDeps): grpc.handleServerStreamingCall<WatchRevocationsRequest__Output, WatchRevocationsResponse> {
  const limits = { ...DEFAULT_REVOCATION_STREAM_LIMITS, ...deps.limits };
  const clock = deps.clock ?? (() => new Date());
  const perCaller = new Map<string, number>();
  const { feed, logger } = deps;
  // A caller that reconnects in a loop while the log cannot be read would write a line per attempt.
  const startFailures = new LogThrottle(logger);

  return (call: Call) => {
    let caller: ReturnType<typeof callerOf>;
    try {
      caller = callerOf(call);
    } catch (err) {
      call.emit('error', toServiceError(err, logger, 'WatchRevocations', requestIdOf(call)));
      return;
    }
    const audience = caller.spiffeId.toString();
    const open = perCaller.get(audience) ?? 0;
    if (open >= limits.maxPerCaller || feed.subscriberCount >= limits.maxStreams) {
      const trailers = new grpc.Metadata();
      trailers.set(RETRY_PUSHBACK_TRAILER, '5000');
      call.emit('error', {
        code: grpc.status.RESOURCE_EXHAUSTED,
        details:
          open >= limits.maxPerCaller
            ? `at most ${limits.maxPerCaller} revocation streams per caller; close one first`
            : 'this replica serves as many revocation streams as it can; retry later or on another replica',
        metadata: trailers,
      });
      return;
    }
    perCaller.set(audience, open + 1);

    let ended = false;
    let started = false;
    let sentSeq = 0;
    let instance = '';
    const pending: RevocationEntry[] = [];
    const untilExpiry = caller.validUntil.getTime() - clock().getTime();
    const expiry = setTimeout(
      () => finish({ code: grpc.status.UNAVAILABLE, details: 'the caller certificate expired; reconnect with the current SVID and the last cursor' }),
      Math.max(0, Math.min(untilExpiry, 2 ** 31 - 1)),
    );
    expiry.unref();

    const finish = (status?: Partial<grpc.StatusObject>) => {
      if (ended) return;
      ended = true;
      unsubscribe();
      clearTimeout(expiry);
      const left = (perCaller.get(audience) ?? 1) - 1;
      if (left <= 0) perCaller.delete(audience);
      else perCaller.set(audience, left);
      if (status) call.emit('error', status);
    };

    /** Bytes handed to grpc-js and not yet written to HTTP/2 (the receiver's flow control holds them), and entries waiting for the start. */
    let queuedBytes = 0;
    let pendingBytes = 0;
    const overflow = () =>
      finish({ code: grpc.status.RESOURCE_EXHAUSTED, details: 'the receiver does not keep up with its revocations; reconnect with the last cursor' });

    /** Writes one message; false when grpc-js wants no more until 'drain'. */
    const write = (message: WatchRevocationsResponse, bytes: number): boolean => {
      if (ended) return true;
      queuedBytes += bytes;
      return call.write(message, () => {
        queuedBytes -= bytes;
      });
    };

    /** Resolves once grpc-js has room again (or the stream ended). */
    const drained = () =>
      new Promise<void>((resolve) => {
        const done = () => {
          call.off('drain', done);
          call.off('close', done);
          resolve();
        };
        call.once('drain', done);
        call.once('close', done);
      });

    /** Live entries (from the feed): those not sent yet, in messages of at most maxPerMessage. */
    const sendLive = (entries: RevocationEntry[]) => {
      const fresh = entries.filter((e) => e.seq > sentSeq);
      for (let i = 0; i < fresh.length; i += limits.maxPerMessage) {
        const chunk = fresh.slice(i, i + limits.maxPerMessage);
        sentSeq = chunk.at(-1)!.seq;
        const asOf = feed.lastReadAt ?? clock();
        const message = {
          snapshot: false,
          revocations: chunk.map(revocationMessage),
          cursor: encodeRevocationCursor(instance, sentSeq),
          asOf: toTimestamp(asOf),
        };
        write(message, approximateBytes(chunk));
      }
      // Live messages are not waited for: a receiver that lets them pile up is let go (it resumes with its cursor).
      if (queuedBytes > limits.maxBufferedBytes) overflow();
    };

    const unsubscribe = feed.subscribe({
      audience,
      deliver: (entries) => {
        if (started) return sendLive(entries);
        pending.push(...entries);
        pendingBytes += approximateBytes(entries);
        if (queuedBytes + pendingBytes > limits.maxBufferedBytes) overflow();
      },
      heartbeat: (asOf) => {
        if (!started) return;
        write({ snapshot: false, revocations: [], cursor: encodeRevocationCursor(instance, sentSeq), asOf: toTimestamp(asOf) }, approximateBytes([]));
        if (queuedBytes > limits.maxBufferedBytes) overflow();
      },
      close: () => finish({ code: grpc.status.UNAVAILABLE, details: 'the broker is shutting down; reconnect (to another replica) with the last cursor' }),
    });
    call.on('cancelled', () => finish());
    call.on('close', () => finish());
    call.on('error', () => finish());

    void (async () => {
      instance = await feed.log.instanceId();
      let resumeAt = decodeRevocationCursor(call.request.afterCursor ?? '', instance);
      // A cursor past the log's head (a database restored from an older backup) would skip what
      // is committed from now on: such a receiver gets a snapshot.
      if (resumeAt !== undefined && resumeAt > (await feed.log.head())) resumeAt = undefined;
      const snapshot = resumeAt === undefined;
      let after = resumeAt ?? 0;
      let first = true;
      for (;;) {
        const asOf = clock();
        const page = await feed.log.forAudience(audience, after, asOf, limits.maxPerMessage);
        if (ended) return;
        after = page.lastSeq;
        sentSeq = Math.max(sentSeq, page.lastSeq);
        const message: WatchRevocationsResponse = {
          snapshot: snapshot && first,
          revocations: page.entries.map(revocationMessage),
          cursor: encodeRevocationCursor(instance, sentSeq),
          asOf: toTimestamp(asOf),
        };
        if (first) message.heartbeatInterval = durationOf(feed.heartbeatIntervalMs);
        if (!page.more) message.startComplete = true;
        // The start may be large (a snapshot of many revocations): it goes at the receiver's pace.
        if (!write(message, approximateBytes(page.entries))) await drained();
        first = false;
        if (!page.more) break;
      }
      started = true;
      pendingBytes = 0;
      sendLive(pending.splice(0));
    })().catch((err: unknown) => {
      startFailures.log('warn', 'start-failed', { err: (err as Error).message, audience }, 'WatchRevocations: reading the start of the stream failed');
      finish({ code: grpc.status.UNAVAILABLE, details: 'the revocation log cannot be read now; retry with the last cursor' });
    });
  };
}
