/**
 * gRPC handlers of the workload-facing TaskBroker service: decode, take the verified Caller,
 * call the domain, map errors to status codes.
 */
import type { TaskBrokerHandlers } from '../gen/taskbroker/v1/TaskBroker.js';
import type { Logger } from '../observability/logger.js';
import { callerOf } from '../transport/caller.js';
import { unary } from './handlers.js';
import { toTimestamp } from '../protocol/timestamps.js';

export interface TaskBrokerServiceDeps {
  logger: Logger;
}

export function taskBrokerHandlers({ logger }: TaskBrokerServiceDeps): TaskBrokerHandlers {
  return {
    WhoAmI: unary('WhoAmI', logger, (call) => {
      const caller = callerOf(call);
      return {
        spiffeId: caller.spiffeId.toString(),
        trustDomain: caller.trustDomain,
        certThumbprint: caller.certThumbprint,
        validUntil: toTimestamp(caller.validUntil),
      };
    }),
  };
}
