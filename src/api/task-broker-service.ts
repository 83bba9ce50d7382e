/**
 * gRPC handlers of the workload-facing TaskBroker service: decode, take the verified Caller,
 * call the lifecycle, encode. Status codes come from the domain error kinds (handlers.ts).
 */
import * as grpc from '@grpc/grpc-js';
import type { Task as TaskMessage } from '../gen/taskbroker/v1/Task.js';
import type { TaskBrokerHandlers } from '../gen/taskbroker/v1/TaskBroker.js';
import type { Logger } from '../observability/logger.js';
import type { BrokerMetrics } from '../observability/metrics.js';
import { durationSeconds, jsonToStruct, secondsToDuration, structToJson } from '../protocol/struct.js';
import { toTimestamp } from '../protocol/timestamps.js';
import type { Actor, Principal, Task, TaskReadOperation } from '../model/task.js';
import type { RequesterInput } from '../tasks/gateway.js';
import type { Requester__Output as RequesterMessage__Output } from '../gen/taskbroker/v1/Requester.js';
import type { GetTaskRequest__Output } from '../gen/taskbroker/v1/GetTaskRequest.js';
import type { Principal as PrincipalMessage } from '../gen/taskbroker/v1/Principal.js';
import { actorsOf } from '../tokens/task-token.js';
import { taskStateName, verifyReasonName } from '../protocol/enums.js';
import type { TaskLifecycle } from '../tasks/lifecycle.js';
import { callerOf } from '../transport/caller.js';
import { subjectTokenArgument } from '../tasks/validation.js';
import { BrokerError } from '../errors.js';
import type { RevocationFeed } from '../tasks/revocation-feed.js';
import type { SigningKeyRing } from '../tokens/keyring.js';
import { callTraceOf, REQUEST_ID_HEADER, requestIdOf } from './call-record.js';
import { unary, type RpcContext } from './handlers.js';
import { watchRevocationsHandler, type RevocationStreamLimits } from './revocation-stream.js';
import { reportTokenUseHandler } from './token-use-stream.js';

export interface TaskBrokerServiceDeps {
  logger: Logger;
  lifecycle: TaskLifecycle;
  /** The replica's view of the revocation log, for WatchRevocations. */
  revocations: RevocationFeed;
  revocationStreamLimits?: Partial<RevocationStreamLimits>;
  /** The JWKS and the active key, for GetSigningKeys. */
  keys: Pick<SigningKeyRing, 'jwks' | 'activeKey'>;
  /** Counts calls, tokens issued and verification outcomes; absent: nothing is counted. */
  metrics?: BrokerMetrics;
}

/** The verified caller of a call plus its request id (echoed to the client in the response headers) and trace context. */
export function actorOf(call: Pick<grpc.ServerUnaryCall<unknown, unknown>, 'metadata' | 'sendMetadata'>): Actor {
  const caller = callerOf(call);
  const requestId = requestIdOf(call);
  const md = new grpc.Metadata();
  md.set(REQUEST_ID_HEADER, requestId);
  call.sendMetadata(md);
  const trace = callTraceOf(call);
  return {
    spiffeId: caller.spiffeId.toString(),
    trustDomain: caller.trustDomain,
    certThumbprint: caller.certThumbprint,
    requestId,
    ...(trace ? { trace } : {}),
  };
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
    state: taskStateName(task.state),
    createdAt: toTimestamp(task.createdAt),
    expiresAt: toTimestamp(task.expiresAt),
    endedAt: task.endedAt ? toTimestamp(task.endedAt) : null,
    endedBy: task.endedBy ?? '',
    endReason: task.endReason ?? '',
    approvedBy: task.approvedBy ?? '',
    approvedAt: task.approvedAt ? toTimestamp(task.approvedAt) : null,
    approvalComment: task.approvalComment ?? '',
    policyRule: task.policyRule ?? '',
    parentTaskId: task.parentTaskId ?? '',
    rootTaskId: task.rootTaskId ?? '',
    depth: task.depth,
    delegators: task.delegators,
    principal: principalMessage(task.principal),
    approver: principalMessage(task.approver),
    gateway: task.gateway ?? '',
    hasResult: task.hasResult,
    resultFailed: task.resultFailed,
  };
}

function principalMessage(p: Principal | null | undefined): PrincipalMessage | null {
  return p ? { issuer: p.iss, subject: p.sub, sessionId: p.sid ?? '' } : null;
}

/** A request's subject_token: empty means none; an oversized one is INVALID_ARGUMENT before anything else. */
function subjectTokenOf(request: { subjectToken?: string }): { subjectToken?: string } {
  const subjectToken = subjectTokenArgument(request.subjectToken);
  return subjectToken ? { subjectToken } : {};
}

/** A request's on_behalf_of (absent: none); which credential it carries is checked by the task domain (requesterArgument). */
function onBehalfOfArgument(request: { onBehalfOf?: RequesterMessage__Output | null }): { onBehalfOf?: RequesterInput } {
  const r = request.onBehalfOf;
  return r ? { onBehalfOf: { x509SvidChain: r.x509SvidChain, subjectToken: r.subjectToken } } : {};
}

function readOperationOf(operation: GetTaskRequest__Output['operation']): TaskReadOperation {
  switch (operation) {
    case 'TASK_OPERATION_RESULT':
      return 'result';
    case 'TASK_OPERATION_UNSPECIFIED':
    case 'TASK_OPERATION_POLL':
      return 'poll';
    default:
      throw new BrokerError('invalid-argument', `operation: unknown value ${String(operation)} (POLL or RESULT)`);
  }
}

/** WhoAmI needs no task domain: transport tests serve it alone. */
export function whoAmIHandler(rpc: RpcContext): TaskBrokerHandlers['WhoAmI'] {
  return unary('WhoAmI', rpc, (call) => {
    const caller = callerOf(call);
    return {
      spiffeId: caller.spiffeId.toString(),
      trustDomain: caller.trustDomain,
      certThumbprint: caller.certThumbprint,
      validUntil: toTimestamp(caller.validUntil),
    };
  });
}

export function taskBrokerHandlers({ logger, lifecycle, metrics, revocations, revocationStreamLimits, keys }: TaskBrokerServiceDeps): TaskBrokerHandlers {
  const rpc: RpcContext = { logger };
  return {
    WhoAmI: whoAmIHandler(rpc),

    CreateTask: unary('CreateTask', rpc, async (call) => {
      const actor = actorOf(call);
      const { spec, idempotencyKey } = call.request;
      if (!spec) throw new BrokerError('invalid-argument', 'spec is required');
      const followUp = { ...subjectTokenOf(call.request), ...onBehalfOfArgument(call.request) };
      const created = await lifecycle.createTask(
        actor,
        {
          action: spec.action,
          resources: spec.resources,
          audience: spec.audience,
          scopes: spec.scopes,
          params: structToJson(spec.params),
          ttlSeconds: durationSeconds(spec.ttl, 'spec.ttl'),
        },
        idempotencyKey,
        followUp,
      );
      return { task: taskMessage(created.task), canonicalSpec: created.canonicalSpec, replayed: created.replayed };
    }),

    GetTask: unary('GetTask', rpc, async (call) => {
      const actor = actorOf(call);
      const { taskId, operation } = call.request;
      const read = await lifecycle.readTask(actor, taskId, {
        ...subjectTokenOf(call.request),
        ...onBehalfOfArgument(call.request),
        operation: readOperationOf(operation),
      });
      return {
        task: taskMessage(read.task),
        result: read.result
          ? {
              json: read.result.json,
              failed: read.result.failed,
              storedAt: toTimestamp(read.result.storedAt),
              retainedUntil: toTimestamp(read.result.retainedUntil),
            }
          : null,
        resultExpired: read.resultExpired,
      };
    }),

    ListOwnTasks: unary('ListOwnTasks', rpc, async (call) => {
      const actor = actorOf(call);
      const { pageSize, pageToken } = call.request;
      const page = await lifecycle.listOwnTasks(actor, { ...onBehalfOfArgument(call.request), pageSize, pageToken });
      return { tasks: page.tasks.map(taskMessage), nextPageToken: page.nextPageToken ?? '' };
    }),

    DelegateTask: unary('DelegateTask', rpc, async (call) => {
      const actor = actorOf(call);
      const { parentTaskId, delegatee, spec, idempotencyKey } = call.request;
      const delegated = await lifecycle.delegateTask(actor, {
        parentTaskId,
        delegatee,
        spec: {
          resources: spec?.resources ?? [],
          scopes: spec?.scopes ?? [],
          audience: spec?.audience ?? '',
          params: structToJson(spec?.params),
          ttlSeconds: durationSeconds(spec?.ttl, 'spec.ttl'),
        },
        idempotencyKey,
        ...subjectTokenOf(call.request),
      });
      return { task: taskMessage(delegated.task), canonicalSpec: delegated.canonicalSpec, replayed: delegated.replayed };
    }),

    IssueToken: unary('IssueToken', rpc, async (call) => {
      const actor = actorOf(call);
      const { taskId, scopes, ttl, maxUses } = call.request;
      const issued = await lifecycle.issueToken(actor, taskId, { scopes, ttlSeconds: durationSeconds(ttl, 'ttl'), maxUses, ...subjectTokenOf(call.request) });
      metrics?.tokensIssued.inc();
      return { token: issued.token, tokenId: issued.tokenId, expiresAt: toTimestamp(issued.expiresAt), scopes: issued.scopes };
    }),

    CompleteTask: unary('CompleteTask', rpc, async (call) => {
      const actor = actorOf(call);
      const { result } = call.request;
      const done = await lifecycle.completeTask(actor, call.request.taskId, call.request.outcome, {
        ...subjectTokenOf(call.request),
        ...(result ? { result: { json: result.json, failed: result.failed } } : {}),
      });
      return { task: taskMessage(done.task), revokedTokens: done.revokedTokens };
    }),

    CancelTask: unary('CancelTask', rpc, async (call) => {
      const actor = actorOf(call);
      const done = await lifecycle.cancelTask(actor, call.request.taskId, call.request.reason, {
        ...subjectTokenOf(call.request),
        ...onBehalfOfArgument(call.request),
      });
      return { task: taskMessage(done.task), revokedTokens: done.revokedTokens };
    }),

    WatchRevocations: watchRevocationsHandler({ feed: revocations, logger, limits: revocationStreamLimits }),

    ReportTokenUse: reportTokenUseHandler({
      logger,
      actorOf,
      record: async (actor, uses) => {
        const counts = await lifecycle.reportTokenUses(actor, uses);
        metrics?.tokenUsesReported.inc({ result: 'recorded' }, counts.recorded);
        metrics?.tokenUsesReported.inc({ result: 'duplicate' }, counts.duplicates);
        metrics?.tokenUsesReported.inc({ result: 'rejected' }, counts.rejected);
        return counts;
      },
    }),

    GetSigningKeys: unary('GetSigningKeys', rpc, async (call) => {
      actorOf(call);
      const [jwks, active] = await Promise.all([keys.jwks(), keys.activeKey()]);
      return { jwksJson: JSON.stringify(jwks), issuer: lifecycle.issuer, alg: active.alg };
    }),

    VerifyToken: unary('VerifyToken', rpc, async (call) => {
      const actor = actorOf(call);
      const req = call.request;
      const result = await lifecycle.verifyToken(actor, req.token, {
        ...(req.presenter === 'presenterCertThumbprint' ? { presenterThumbprint: req.presenterCertThumbprint } : {}),
        ...(req.presenter === 'presenterCertDer' ? { presenterCertDer: req.presenterCertDer ?? Buffer.alloc(0) } : {}),
        expectedTaskHash: req.expectedTaskHash === '' ? undefined : req.expectedTaskHash,
        skipBindingCheck: req.skipBindingCheck,
      });
      metrics?.tokenVerifications.inc({ reason: result.reason });
      const c = result.claims;
      return {
        valid: result.valid,
        reason: verifyReasonName(result.reason),
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
              version: c.ver ?? 0,
              parentTaskId: c.parent_task_id ?? '',
              actors: actorsOf(c.act),
              principal: c.principal ? { issuer: c.principal.iss, subject: c.principal.sub, sessionId: c.principal.sid ?? '' } : null,
              maxUses: c.max_uses ?? 0,
              usesLeft: result.usesLeft ?? 0,
            }
          : null,
      };
    }),
  };
}
