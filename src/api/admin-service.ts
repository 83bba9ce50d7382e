/**
 * gRPC handlers of TaskBrokerAdmin: decode, take the verified Caller, call the admin domain
 * (which checks that the caller is an admin), encode.
 */
import type { AuditEvent as AuditEventMessage } from '../gen/taskbroker/v1/AuditEvent.js';
import type { TaskBrokerAdminHandlers } from '../gen/taskbroker/v1/TaskBrokerAdmin.js';
import type { Logger } from '../observability/logger.js';
import type { AuditEvent, ChainCheck } from '../audit/audit.js';
import type { ChainCheck as ChainCheckMessage } from '../gen/taskbroker/v1/ChainCheck.js';
import { signingKeyStateName, taskStateName } from '../protocol/enums.js';
import { jsonToStruct } from '../protocol/struct.js';
import { fromTimestamp, toTimestamp } from '../protocol/timestamps.js';
import type { TaskAdmin } from '../tasks/admin.js';
import type { JsonObject } from '../model/task.js';
import { unary, type RpcContext } from './handlers.js';
import { actorOf, taskMessage } from './task-broker-service.js';

export interface AdminServiceDeps {
  logger: Logger;
  admin: TaskAdmin;
}

export function auditEventMessage(e: AuditEvent): AuditEventMessage {
  return {
    seq: e.seq,
    eventType: e.type,
    actorSpiffeId: e.actorSpiffeId,
    actorCertThumbprint: e.actorCertThumbprint ?? '',
    requestId: e.requestId,
    occurredAt: toTimestamp(e.occurredAt),
    details: jsonToStruct(e.details as JsonObject),
    prevHash: e.prevHash,
    hash: e.hash,
    taskId: e.taskId ?? '',
    traceId: typeof e.details.trace_id === 'string' ? e.details.trace_id : '',
  };
}

function chainCheckMessage(c: ChainCheck): ChainCheckMessage {
  return { ok: c.ok, events: c.events, brokenAt: c.brokenAt ?? 0, problem: c.problem ?? '' };
}

export function adminHandlers({ logger, admin }: AdminServiceDeps): TaskBrokerAdminHandlers {
  const rpc: RpcContext = { logger };
  return {
    RevokeTask: unary('RevokeTask', rpc, async (call) => {
      const res = await admin.revokeTask(actorOf(call), call.request.taskId, call.request.reason);
      return { task: taskMessage(res.task), revokedTokens: res.revokedTokens };
    }),

    RevokeWorkload: unary('RevokeWorkload', rpc, async (call) => {
      const { selector, reason, dryRun } = call.request;
      const res = await admin.revokeWorkload(actorOf(call), selector, reason, { dryRun });
      // At most 1,000 IDs go back (the count is complete); the audit trail has the rest.
      return {
        revokedTasks: res.taskIds.length,
        revokedTokens: res.revokedTokens,
        taskIds: res.taskIds.slice(0, 1000),
        dryRun: res.dryRun,
        liveTokens: res.liveTokens,
        descendantTasks: res.descendantTasks,
      };
    }),

    ListTasks: unary('ListTasks', rpc, async (call) => {
      const r = call.request;
      const res = await admin.listTasks(
        actorOf(call),
        {
          owner: r.owner || undefined,
          state: r.state,
          audience: r.audience || undefined,
          createdAfter: fromTimestamp(r.createdAfter, 'created_after'),
          createdBefore: fromTimestamp(r.createdBefore, 'created_before'),
        },
        { pageSize: r.pageSize, pageToken: r.pageToken || undefined },
      );
      return { tasks: res.tasks.map(taskMessage), nextPageToken: res.nextPageToken };
    }),

    GetAuditTrail: unary('GetAuditTrail', rpc, async (call) => {
      const { taskId, afterSeq, pageSize, tree, pageToken } = call.request;
      if (tree) {
        const res = await admin.treeAuditTrail(actorOf(call), taskId, { afterSeq, pageSize, pageToken: pageToken || undefined });
        return {
          taskId,
          events: res.events.map(auditEventMessage),
          chain: chainCheckMessage(res.check),
          nextAfterSeq: 0,
          rootTaskId: res.rootTaskId,
          chains: res.chains.map((c) => ({ taskId: c.taskId, chain: chainCheckMessage(c.check) })),
          nextPageToken: res.nextPageToken,
        };
      }
      const res = await admin.auditTrail(actorOf(call), taskId, { afterSeq, pageSize, pageToken: pageToken || undefined });
      return {
        taskId,
        events: res.events.map(auditEventMessage),
        chain: chainCheckMessage(res.check),
        nextAfterSeq: res.nextAfterSeq,
      };
    }),

    GetTaskTree: unary('GetTaskTree', rpc, async (call) => {
      const res = await admin.taskTree(actorOf(call), call.request.taskId);
      return { rootTaskId: res.rootTaskId, tasks: res.tasks.map(taskMessage) };
    }),

    GetTask: unary('GetTask', rpc, async (call) => {
      const res = await admin.getTask(actorOf(call), call.request.taskId);
      return {
        task: taskMessage(res.task),
        history: res.history.map((h) => ({
          state: taskStateName(h.state),
          at: toTimestamp(h.at),
          by: h.by,
          byCertThumbprint: h.byCertThumbprint ?? '',
          event: h.event,
          reason: h.reason,
          seq: h.seq,
        })),
        tokensIssued: res.tokensIssued,
        liveTokens: res.liveTokens,
        delegatedTasks: res.delegatedTasks,
        ownerCertThumbprint: res.ownerCertThumbprint,
        chain: chainCheckMessage(res.check),
      };
    }),

    ApproveTask: unary('ApproveTask', rpc, async (call) => {
      const task = await admin.approveTask(actorOf(call), call.request.taskId, call.request.comment, call.request.approverToken || undefined);
      return { task: taskMessage(task) };
    }),

    RotateSigningKey: unary('RotateSigningKey', rpc, async (call) => {
      const { immediate, reason } = call.request;
      const res = await admin.rotateSigningKey(actorOf(call), { immediate, reason });
      return {
        kid: res.kid,
        retiredKid: res.retiredKid ?? '',
        state: signingKeyStateName(res.state),
        activatesAt: toTimestamp(res.activatesAt),
        retiredKeyPublishedUntil: res.retiredKeyPublishedUntil ? toTimestamp(res.retiredKeyPublishedUntil) : null,
        immediate: res.immediate,
        discardedKid: res.discardedKid ?? '',
      };
    }),

    ListSigningKeys: unary('ListSigningKeys', rpc, async (call) => {
      const res = await admin.listSigningKeys(actorOf(call), { all: call.request.all });
      return {
        keys: res.keys.map((k) => ({
          kid: k.kid,
          alg: k.alg,
          state: signingKeyStateName(k.state),
          createdAt: toTimestamp(k.createdAt),
          activatesAt: toTimestamp(k.activatesAt),
          retiredAt: k.retiredAt ? toTimestamp(k.retiredAt) : null,
          publishedUntil: k.publishUntil ? toTimestamp(k.publishUntil) : null,
          published: k.published,
        })),
        prePublicationSeconds: Math.ceil(res.prePublicationMs / 1000),
        retiredPublicationSeconds: Math.ceil(res.retiredPublicationMs / 1000),
      };
    }),
  };
}
