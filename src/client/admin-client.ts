/**
 * A typed, promise-based client for TaskBrokerAdmin (platform teams, admin SVIDs only).
 */
import type { ApproveTaskResponse__Output } from '../gen/taskbroker/v1/ApproveTaskResponse.js';
import type { GetAuditTrailResponse__Output } from '../gen/taskbroker/v1/GetAuditTrailResponse.js';
import type { ListSigningKeysResponse__Output } from '../gen/taskbroker/v1/ListSigningKeysResponse.js';
import type { ListTasksRequest } from '../gen/taskbroker/v1/ListTasksRequest.js';
import type { ListTasksResponse__Output } from '../gen/taskbroker/v1/ListTasksResponse.js';
import type { RevokeTaskResponse__Output } from '../gen/taskbroker/v1/RevokeTaskResponse.js';
import type { RevokeWorkloadResponse__Output } from '../gen/taskbroker/v1/RevokeWorkloadResponse.js';
import type { RotateSigningKeyResponse__Output } from '../gen/taskbroker/v1/RotateSigningKeyResponse.js';
import type { TaskBrokerAdminClient } from '../gen/taskbroker/v1/TaskBrokerAdmin.js';
import type { TaskBrokerAdminGetTaskResponse__Output } from '../gen/taskbroker/v1/TaskBrokerAdminGetTaskResponse.js';
import { brokerProto } from '../protocol/proto.js';
import { ServiceClient, unaryCall, type CallOptions, type ConnectOptions } from './broker-client.js';

export class AdminClient extends ServiceClient<TaskBrokerAdminClient> {
  constructor(options: ConnectOptions) {
    super(brokerProto().taskbroker.v1.TaskBrokerAdmin, options);
  }

  revokeTask(taskId: string, reason: string, options?: CallOptions): Promise<RevokeTaskResponse__Output> {
    return unaryCall((md, opts, cb) => this.raw.RevokeTask({ taskId, reason }, md, opts, cb), options);
  }

  /**
   * `dryRun`: change nothing, answer what a real call would revoke. A broker older than dry_run
   * ignores the field and revokes for real; that answer (dryRun false) is returned as it is, so
   * check `dryRun` on it (the admin CLI does, and fails loudly).
   */
  revokeWorkload(selector: string, reason: string, options?: CallOptions & { dryRun?: boolean }): Promise<RevokeWorkloadResponse__Output> {
    const { dryRun = false, ...callOptions } = options ?? {};
    return unaryCall((md, opts, cb) => this.raw.RevokeWorkload({ selector, reason, dryRun }, md, opts, cb), callOptions);
  }

  /** One task with its history (state changes from its audit trail), token counts and chain check. */
  getTask(taskId: string, options?: CallOptions): Promise<TaskBrokerAdminGetTaskResponse__Output> {
    return unaryCall((md, opts, cb) => this.raw.GetTask({ taskId }, md, opts, cb), options);
  }

  listTasks(request: ListTasksRequest, options?: CallOptions): Promise<ListTasksResponse__Output> {
    return unaryCall((md, opts, cb) => this.raw.ListTasks(request, md, opts, cb), options);
  }

  /** One page of a task's trail (with the check of the whole chain). */
  getAuditTrail(taskId: string, options?: CallOptions & { afterSeq?: number; pageSize?: number }): Promise<GetAuditTrailResponse__Output> {
    const { afterSeq = 0, pageSize = 0, ...callOptions } = options ?? {};
    return unaryCall((md, opts, cb) => this.raw.GetAuditTrail({ taskId, afterSeq, pageSize }, md, opts, cb), callOptions);
  }

  /** The whole trail, following pages. */
  async getWholeAuditTrail(taskId: string, options?: CallOptions): Promise<GetAuditTrailResponse__Output> {
    const first = await this.getAuditTrail(taskId, options);
    const events = [...first.events];
    let next = first.nextAfterSeq;
    while (next !== 0) {
      const page = await this.getAuditTrail(taskId, { ...options, afterSeq: next });
      events.push(...page.events);
      // A cursor that does not move on would page forever: the broker's answer is wrong, say so.
      if (page.nextAfterSeq !== 0 && page.nextAfterSeq <= next)
        throw new Error(`the audit trail's next page cursor did not advance (${next} → ${page.nextAfterSeq})`);
      next = page.nextAfterSeq;
    }
    return { ...first, events, nextAfterSeq: 0 };
  }

  /** `approverToken`: the approving person's subject token, for a rule that names its approvers by claim. */
  approveTask(taskId: string, comment: string, options?: CallOptions & { approverToken?: string }): Promise<ApproveTaskResponse__Output> {
    const { approverToken = '', ...callOptions } = options ?? {};
    return unaryCall((md, opts, cb) => this.raw.ApproveTask({ taskId, comment, approverToken }, md, opts, cb), callOptions);
  }

  /**
   * A new signing key: NEXT (in the JWKS now, signing from the answer's activatesAt). `immediate`:
   * the emergency path for a compromised key, ACTIVE at once without pre-publication.
   */
  rotateSigningKey(options?: CallOptions & { immediate?: boolean; reason?: string }): Promise<RotateSigningKeyResponse__Output> {
    const { immediate = false, reason = '', ...callOptions } = options ?? {};
    return unaryCall((md, opts, cb) => this.raw.RotateSigningKey({ immediate, reason }, md, opts, cb), callOptions);
  }

  /** The signing keys in the JWKS (`all`: also the retired keys no longer in it), newest first, with their phases. */
  listSigningKeys(options?: CallOptions & { all?: boolean }): Promise<ListSigningKeysResponse__Output> {
    const { all = false, ...callOptions } = options ?? {};
    return unaryCall((md, opts, cb) => this.raw.ListSigningKeys({ all }, md, opts, cb), callOptions);
  }
}
