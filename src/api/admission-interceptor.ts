/**
 * The gRPC side of admission: an interceptor that asks CallAdmission for a slot before the
 * request is decoded, holds the call until its turn, and answers a refusal with its status and
 * a retry hint (the `grpc-retry-pushback-ms` trailer of gRFC A6).
 *
 * Apart from admission.ts so that the policy (who runs, who waits, who is refused) reads
 * without grpc-js's call plumbing, and can be tested without a server.
 */
import * as grpc from '@grpc/grpc-js';
import type { BrokerMetrics } from '../observability/metrics.js';
import { RETRY_PUSHBACK_TRAILER } from '../protocol/status.js';
import { callerOf } from '../transport/caller.js';
import type { AdmissionSlot, CallAdmission } from './admission.js';

/** Runs after authentication (it needs the caller), before decoding; only for paths under `prefixes`. */
export function admissionInterceptor(
  admission: Pick<CallAdmission, 'admit' | 'limits'>,
  prefixes: readonly string[],
  metrics: BrokerMetrics | undefined,
  exempt: ReadonlySet<string> = new Set(),
): grpc.ServerInterceptor {
  return (descriptor, call) => {
    if (!prefixes.some((p) => descriptor.path.startsWith(p)) || exempt.has(descriptor.path)) return new grpc.ServerInterceptingCall(call);
    let slot: AdmissionSlot | undefined;
    let paused: NodeJS.Timeout | undefined;
    const release = () => slot?.release();
    return new grpc.ServerInterceptingCall(call, {
      start: (next) => {
        next({
          onReceiveMetadata: (metadata, nextMetadata) => {
            let caller: string;
            try {
              caller = callerOf({ metadata }).spiffeId.toString();
            } catch (err) {
              // Unreachable behind the authenticator, which answers such calls itself; if it were
              // not in front, no call without a verified caller gets past here.
              call.sendStatus({ code: grpc.status.UNAUTHENTICATED, details: (err as Error).message });
              return;
            }
            const admitted = admission.admit(caller);
            if ('release' in admitted) {
              slot = admitted;
              // Its turn may come later: grpc-js holds the request until the metadata is passed on.
              admitted.whenActive(() => nextMetadata(metadata));
              return;
            }
            metrics?.callsShed.inc({ reason: admitted.reason });
            const trailers = new grpc.Metadata();
            trailers.set(RETRY_PUSHBACK_TRAILER, String(admitted.retryAfterMs));
            const refuse = () =>
              call.sendStatus({ code: admitted.code, details: `${admitted.details}; retry after ${admitted.retryAfterMs} ms`, metadata: trailers });
            // A caller over its own quota is answered after a short pause, not at once: a client
            // that fires thousands of calls then sends them at the pace of its own stream limit
            // instead of spinning both sides' CPU on refusals, which is what would slow everyone
            // else. The pause holds only the caller's own stream (bounded per connection).
            const pause = admitted.code === grpc.status.RESOURCE_EXHAUSTED ? Math.min(admission.limits.refusalDelayMs, admitted.retryAfterMs) : 0;
            if (pause <= 0) {
              refuse();
              return;
            }
            // Jittered (half to the whole pause), so a burst's refusals do not all land in one
            // tick, and its next burst does not arrive in one piece either.
            paused = setTimeout(refuse, pause * (0.5 + Math.random() / 2));
          },
          onCancel: () => {
            clearTimeout(paused);
            release();
          },
        });
      },
      sendStatus: (status, next) => {
        release();
        next(status);
      },
    });
  };
}
