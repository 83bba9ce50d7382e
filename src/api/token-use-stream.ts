/**
 * ReportTokenUse: a resource server streams the outcomes of its offline verifications; once it
 * half-closes, the broker checks them all and records them (token-use-reports.ts) and answers
 * with the counts. More than MAX_TOKEN_USES_PER_CALL uses end the call at once with
 * INVALID_ARGUMENT, before anything is recorded.
 */
import type * as grpc from '@grpc/grpc-js';
import { BrokerError } from '../errors.js';
import type { ReportTokenUseRequest__Output } from '../gen/taskbroker/v1/ReportTokenUseRequest.js';
import type { ReportTokenUseResponse } from '../gen/taskbroker/v1/ReportTokenUseResponse.js';
import type { Actor } from '../model/task.js';
import type { Logger } from '../observability/logger.js';
import { fromTimestamp } from '../protocol/timestamps.js';
import { MAX_TOKEN_USES_PER_CALL, type TokenUseCounts, type TokenUseInput } from '../tasks/token-use-reports.js';
import { requestIdOf } from './call-record.js';
import { toServiceError } from './handlers.js';

type Call = grpc.ServerReadableStream<ReportTokenUseRequest__Output, ReportTokenUseResponse>;

export interface TokenUseStreamDeps {
  logger: Logger;
  record(actor: Actor, uses: TokenUseInput[]): Promise<TokenUseCounts>;
  actorOf(call: Call): Actor;
}

export function reportTokenUseHandler(deps: TokenUseStreamDeps): grpc.handleClientStreamingCall<ReportTokenUseRequest__Output, ReportTokenUseResponse> {
  const { logger } = deps;
  return (call, callback) => {
    const uses: TokenUseInput[] = [];
    let answered = false;
    const answer = (err: unknown, counts?: TokenUseCounts) => {
      if (answered) return;
      answered = true;
      if (err) callback(toServiceError(err, logger, 'ReportTokenUse', requestIdOf(call)));
      else callback(null, counts);
    };
    let actor: Actor;
    try {
      actor = deps.actorOf(call);
    } catch (err) {
      answer(err);
      return;
    }
    call.on('data', (message: ReportTokenUseRequest__Output) => {
      if (answered) return;
      try {
        for (const u of message.uses) {
          if (uses.length >= MAX_TOKEN_USES_PER_CALL)
            throw new BrokerError('invalid-argument', `uses: at most ${MAX_TOKEN_USES_PER_CALL} per call; send the rest in another call`);
          uses.push({
            reportId: u.reportId,
            tokenId: u.tokenId,
            taskId: u.taskId,
            outcome: String(u.outcome),
            operation: u.operation,
            verifiedAt: fromTimestamp(u.verifiedAt, `uses[${uses.length}].verified_at`) ?? new Date(NaN),
            presenterThumbprint: u.presenterCertThumbprint,
          });
        }
      } catch (err) {
        answer(err);
      }
    });
    call.on('error', () => {
      answered = true;
    });
    call.on('end', () => {
      if (answered) return;
      deps.record(actor, uses).then(
        (counts) => answer(null, counts),
        (err: unknown) => answer(err),
      );
    });
  };
}
