/**
 * gRPC handlers of the workload-facing TaskBroker service: decode, take the verified Caller,
 * call the lifecycle, encode. Status codes come from the domain error kinds (handlers.ts).
 */
import * as grpc from '@grpc/grpc-js';
import type { Task as TaskMessage } from '../gen/taskbroker/v1/Task.js';
import type { TaskBrokerHandlers } from '../gen/taskbroker/v1/TaskBroker.js';
import type { TaskState as TaskStateEnum } from '../gen/taskbroker/v1/TaskState.js';
import type { VerifyTokenReason } from '../gen/taskbroker/v1/VerifyTokenReason.js';
import type { Logger } from '../observability/logger.js';
import type { BrokerMetrics } from '../observability/metrics.js';
import { durationSeconds, jsonToStruct, secondsToDuration, structToJson } from '../protocol/struct.js';
import { toTimestamp } from '../protocol/timestamps.js';
import type { Actor, Task, TaskLifecycle, VerifyReason } from '../tasks/lifecycle.js';
import { certificateThumbprint } from '../spiffe/certificate.js';
import { callerOf } from '../transport/caller.js';
import { BrokerError } from '../errors.js';
import { REQUEST_ID_HEADER, requestIdOf } from './call-record.js';
import { unary, type RpcContext } from './handlers.js';

export interface TaskBrokerServiceDeps {
  logger: Logger;
  /** Absent in transport-only tests: task RPCs then answer UNAVAILABLE. */
  lifecycle?: TaskLifecycle;
  /** Counts calls, tokens issued and verification outcomes; absent: nothing is counted. */
  metrics?: BrokerMetrics;
}



/** The verified caller of a call plus its request id (echoed to the client in the response headers). */
export function actorOf(call: grpc.ServerUnaryCall<unknown, unknown>): Actor {
  const caller = callerOf(call);
  const requestId = requestIdOf(call);
  const md = new grpc.Metadata();
  md.set(REQUEST_ID_HEADER, requestId);
  call.sendMetadata(md);
  return { spiffeId: caller.spiffeId.toString(), trustDomain: caller.trustDomain, certThumbprint: caller.certThumbprint, requestId };
}

export function taskMessage(task: Task): TaskMessage {
  return {
    taskId: task.taskId,
    ownerSpiffeId: task.ownerSpiffeId,
    spec: {
      action: task.spec.action,
      resources: task.spec.resources,
      audience: task.spec.audience,
      scopes: task.spec.scopes,
      params: jsonToStruct(task.spec.params),
      ttl: secondsToDuration(task.spec.ttlSeconds),
    },
    taskHash: task.taskHash,
    state: `TASK_STATE_${task.state}` as TaskStateEnum,
    createdAt: toTimestamp(task.createdAt),
    expiresAt: toTimestamp(task.expiresAt),
    endedAt: task.endedAt ? toTimestamp(task.endedAt) : null,
    endedBy: task.endedBy ?? '',
    endReason: task.endReason ?? '',
    approvedBy: task.approvedBy ?? '',
    approvedAt: task.approvedAt ? toTimestamp(task.approvedAt) : null,
    approvalComment: task.approvalComment ?? '',
    policyRule: task.policyRule ?? '',
  };
}

const REASONS: Record<VerifyReason, VerifyTokenReason> = {
  valid: 'VERIFY_TOKEN_REASON_VALID',
  malformed: 'VERIFY_TOKEN_REASON_MALFORMED',
  'bad-signature': 'VERIFY_TOKEN_REASON_BAD_SIGNATURE',
  expired: 'VERIFY_TOKEN_REASON_EXPIRED',
  revoked: 'VERIFY_TOKEN_REASON_REVOKED',
  'task-not-active': 'VERIFY_TOKEN_REASON_TASK_NOT_ACTIVE',
  'audience-mismatch': 'VERIFY_TOKEN_REASON_AUDIENCE_MISMATCH',
  'binding-mismatch': 'VERIFY_TOKEN_REASON_BINDING_MISMATCH',
  'task-hash-mismatch': 'VERIFY_TOKEN_REASON_TASK_HASH_MISMATCH',
  'presenter-required': 'VERIFY_TOKEN_REASON_PRESENTER_REQUIRED',
};

const MAX_TOKEN_LENGTH = 16 * 1024;
const MAX_TEXT = 1024;

function text(value: string, field: string): string {
  if (value.length > MAX_TEXT) throw new BrokerError('invalid-argument', `${field}: at most ${MAX_TEXT} characters`);
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/.test(value)) throw new BrokerError('invalid-argument', `${field}: control characters are not allowed`);
  return value;
}

export function taskBrokerHandlers({ logger, lifecycle, metrics }: TaskBrokerServiceDeps): TaskBrokerHandlers {
  const rpc: RpcContext = { logger };
  const tasks = (): TaskLifecycle => {
    if (!lifecycle) throw new BrokerError('unavailable', 'tasks are not served by this broker');
    return lifecycle;
  };
  return {
    WhoAmI: unary('WhoAmI', rpc, (call) => {
      const caller = callerOf(call);
      return {
        spiffeId: caller.spiffeId.toString(),
        trustDomain: caller.trustDomain,
        certThumbprint: caller.certThumbprint,
        validUntil: toTimestamp(caller.validUntil),
      };
    }),

    CreateTask: unary('CreateTask', rpc, async (call) => {
      const actor = actorOf(call);
      const { spec, idempotencyKey } = call.request;
      if (!spec) throw new BrokerError('invalid-argument', 'spec is required');
      const created = await tasks().createTask(
        actor,
        {
          action: spec.action,
          resources: spec.resources,
          audience: spec.audience,
          scopes: spec.scopes,
          params: structToJson(spec.params),
          ttlSeconds: durationSeconds(spec.ttl, 'spec.ttl'),
        },
        idempotencyKey === '' ? undefined : idempotencyKey,
      );
      return { task: taskMessage(created.task), canonicalSpec: created.canonicalSpec, replayed: created.replayed };
    }),

    GetTask: unary('GetTask', rpc, async (call) => {
      const actor = actorOf(call);
      return { task: taskMessage(await tasks().getTask(actor, call.request.taskId)) };
    }),

    IssueToken: unary('IssueToken', rpc, async (call) => {
      const actor = actorOf(call);
      const { taskId, scopes, ttl } = call.request;
      const issued = await tasks().issueToken(actor, taskId, { scopes, ttlSeconds: durationSeconds(ttl, 'ttl') });
      metrics?.tokensIssued.inc();
      return { token: issued.token, tokenId: issued.tokenId, expiresAt: toTimestamp(issued.expiresAt), scopes: issued.scopes };
    }),

    CompleteTask: unary('CompleteTask', rpc, async (call) => {
      const actor = actorOf(call);
      const done = await tasks().completeTask(actor, call.request.taskId, text(call.request.outcome, 'outcome'));
      return { task: taskMessage(done.task), revokedTokens: done.revokedTokens };
    }),

    CancelTask: unary('CancelTask', rpc, async (call) => {
      const actor = actorOf(call);
      const done = await tasks().cancelTask(actor, call.request.taskId, text(call.request.reason, 'reason'));
      return { task: taskMessage(done.task), revokedTokens: done.revokedTokens };
    }),

    VerifyToken: unary('VerifyToken', rpc, async (call) => {
      const actor = actorOf(call);
      const req = call.request;
      if (req.token.length > MAX_TOKEN_LENGTH) throw new BrokerError('invalid-argument', `token: at most ${MAX_TOKEN_LENGTH} characters`);
      let presenterThumbprint: string | undefined;
      if (req.presenter === 'presenterCertThumbprint') presenterThumbprint = req.presenterCertThumbprint;
      if (req.presenter === 'presenterCertDer') {
        if (!req.presenterCertDer || req.presenterCertDer.length === 0) throw new BrokerError('invalid-argument', 'presenter_cert_der is empty');
        presenterThumbprint = certificateThumbprint(req.presenterCertDer);
      }
      const result = await tasks().verifyToken(actor, req.token, {
        presenterThumbprint,
        expectedTaskHash: req.expectedTaskHash === '' ? undefined : req.expectedTaskHash,
        skipBindingCheck: req.skipBindingCheck,
      });
      metrics?.tokenVerifications.inc({ reason: result.reason });
      const c = result.claims;
      return {
        valid: result.valid,
        reason: REASONS[result.reason],
        detail: result.detail,
        bindingChecked: result.bindingChecked,
        claims: c
          ? {
              issuer: c.iss,
              subject: c.sub,
              audience: c.aud,
              tokenId: c.jti,
              taskId: c.task_id,
              taskHash: c.task_hash,
              scopes: c.scope.split(' ').filter(Boolean),
              cnfX5tS256: c.cnf['x5t#S256'],
              issuedAt: toTimestamp(new Date(c.iat * 1000)),
              notBefore: toTimestamp(new Date(c.nbf * 1000)),
              expiresAt: toTimestamp(new Date(c.exp * 1000)),
            }
          : null,
      };
    }),
  };
}
