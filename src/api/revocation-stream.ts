/**
 * WatchRevocations: the server side of a resource server's revocation stream.
 *
 * The caller is the audience: it gets the revocations of tokens addressed to its own SPIFFE ID
 * and nothing else (a caller that is no token's audience gets an empty snapshot and heartbeats,
 * like anyone else: nothing tells it apart). The stream starts with a snapshot (or, given a
 * cursor this database issued, with everything after it), then carries each new revocation as
 * the replica's feed reads it, and a heartbeat every heartbeat interval while the feed is current.
 *
 * Bounds: streams per caller and per replica; a receiver whose unsent messages pile up beyond
 * `maxBufferedBytes` is ended with RESOURCE_EXHAUSTED (it resumes with its cursor); the stream
 * ends with UNAVAILABLE when the caller's certificate expires (reconnect with the new SVID), when
 * the start cannot be read from the database, and when the broker shuts down.
 */
import * as grpc from '@grpc/grpc-js';
import type { Revocation } from '../gen/taskbroker/v1/Revocation.js';
import type { WatchRevocationsRequest__Output } from '../gen/taskbroker/v1/WatchRevocationsRequest.js';
import type { WatchRevocationsResponse } from '../gen/taskbroker/v1/WatchRevocationsResponse.js';
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
  /** Unsent bytes a receiver may leave queued before its stream is ended. */
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

    const write = (message: WatchRevocationsResponse) => {
      if (ended) return;
      call.write(message);
      if (call.writableLength > limits.maxBufferedBytes) {
        finish({ code: grpc.status.RESOURCE_EXHAUSTED, details: 'the receiver does not keep up with its revocations; reconnect with the last cursor' });
      }
    };

    /** Live entries (from the feed): those not sent yet, in messages of at most maxPerMessage. */
    const sendLive = (entries: RevocationEntry[]) => {
      const fresh = entries.filter((e) => e.seq > sentSeq);
      for (let i = 0; i < fresh.length; i += limits.maxPerMessage) {
        const chunk = fresh.slice(i, i + limits.maxPerMessage);
        sentSeq = chunk.at(-1)!.seq;
        const asOf = feed.lastReadAt ?? clock();
        write({ snapshot: false, revocations: chunk.map(revocationMessage), cursor: encodeRevocationCursor(instance, sentSeq), asOf: toTimestamp(asOf) });
      }
    };

    const unsubscribe = feed.subscribe({
      audience,
      deliver: (entries) => {
        if (!started) pending.push(...entries);
        else sendLive(entries);
      },
      heartbeat: (asOf) => {
        if (started) write({ snapshot: false, revocations: [], cursor: encodeRevocationCursor(instance, sentSeq), asOf: toTimestamp(asOf) });
      },
      close: () => finish({ code: grpc.status.UNAVAILABLE, details: 'the broker is shutting down; reconnect (to another replica) with the last cursor' }),
    });
    call.on('cancelled', () => finish());
    call.on('close', () => finish());
    call.on('error', () => finish());

    void (async () => {
      instance = await feed.log.instanceId();
      const resumeAt = decodeRevocationCursor(call.request.afterCursor ?? '', instance);
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
        write(message);
        first = false;
        if (!page.more) break;
      }
      started = true;
      sendLive(pending.splice(0));
    })().catch((err: unknown) => {
      logger.warn({ err: (err as Error).message, audience }, 'WatchRevocations: reading the start of the stream failed');
      finish({ code: grpc.status.UNAVAILABLE, details: 'the revocation log cannot be read now; retry with the last cursor' });
    });
  };
}
