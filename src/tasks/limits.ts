/**
 * Every bound of the task domain, defined once: ttl limits (overridable per broker), text sizes,
 * page sizes. The API, the admin CLI and the composition root read them from here.
 */

export interface LifecycleLimits {
  defaultTaskTtlSeconds: number;
  maxTaskTtlSeconds: number;
  defaultTokenTtlSeconds: number;
  maxTokenTtlSeconds: number;
}

export type SpecLimits = Pick<LifecycleLimits, 'defaultTaskTtlSeconds' | 'maxTaskTtlSeconds'>;

export const DEFAULT_LIMITS: LifecycleLimits = {
  defaultTaskTtlSeconds: 15 * 60,
  maxTaskTtlSeconds: 24 * 60 * 60,
  defaultTokenTtlSeconds: 5 * 60,
  maxTokenTtlSeconds: 15 * 60,
};

/** Free text a caller gives (an outcome, a reason, an approval comment). */
export const MAX_TEXT = 1024;
export const MAX_IDEMPOTENCY_KEY = 128;
export const MAX_RESOURCES = 64;
export const MAX_RESOURCE_LENGTH = 512;
export const MAX_SCOPES = 32;
export const MAX_PARAMS_BYTES = 16 * 1024;

/** ListTasks pages. */
export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 500;
/** Events per GetAuditTrail page: keeps a response far below gRPC's 4 MiB default, however long the trail. */
export const MAX_TRAIL_PAGE = 1000;

/** A caller's value recorded in a refusal's audit event: at most this many characters of it. */
export const MAX_RECORDED_INPUT = 256;
