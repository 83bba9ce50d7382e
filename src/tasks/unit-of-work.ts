/**
 * The unit of work of the admin plane and the sweeper: one transaction, the audit events of the
 * change appended inside it, refusals that must be on record, and hooks that run only once the
 * transaction committed. (The six workload RPCs go through the write batcher instead, whose one
 * statement does the same work: task-access.ts.)
 *
 * A refusal is evidence first and an error second: `work.refuse(error)` ends the unit, the
 * transaction commits whatever was appended (the access.denied event), and only then does the
 * call fail with `error`. If the evidence cannot be stored, the call fails with that instead.
 */
import { appendAuditEvent, type AuditActor, type AuditEventInput } from '../audit/audit.js';
import type { BrokerError } from '../errors.js';
import type { Actor, FinalState } from '../model/task.js';
import type { Store, Tx } from '../store/database.js';

/** Hooks for metrics. They must not throw; they never change an outcome. */
export interface TaskObserver {
  /** A task reached a final state, with the tokens revoked with it; called once its transaction committed. */
  taskEnded?(state: FinalState, revokedTokens: number): void;
  /** One audit event was appended, taking `seconds`. */
  auditWritten?(seconds: number): void;
  /** A write batch of `operations` calls committed, `seconds` after it was sent. */
  batchCommitted?(operations: number, seconds: number): void;
}

export type AuditInput = Omit<AuditEventInput, 'actor' | 'occurredAt'> & { occurredAt?: Date };

/** What a unit of work can do inside its transaction. */
export interface Work {
  readonly tx: Tx;
  /** The unit's time: every event and change of one unit carries the same instant. */
  readonly now: Date;
  /** Appends an audit event in this transaction. */
  audit(actor: Actor | AuditActor, input: AuditInput): Promise<void>;
  /** Ends the unit: what it appended commits, then the call fails with `error`. */
  refuse(error: BrokerError): never;
  /** Runs `hook` once the transaction committed (never if it rolled back). */
  afterCommit(hook: () => void): void;
}

export interface UnitOfWorkDeps {
  /** Runs a transaction (Store.transaction: a conflict is retried whole, the outcome feeds write health). */
  store: Pick<Store, 'transaction'>;
  clock: () => Date;
  observer?: TaskObserver;
}

export function auditActor(actor: Actor | AuditActor): AuditActor {
  if (!('trustDomain' in actor)) return actor;
  const who = { spiffeId: actor.spiffeId, certThumbprint: actor.certThumbprint, requestId: actor.requestId };
  return actor.trace ? { ...who, traceId: actor.trace.traceId } : who;
}

/** Thrown by Work.refuse inside the unit; caught by run, which commits and then throws the error. */
class Refusal extends Error {
  constructor(readonly error: BrokerError) {
    super(error.message);
  }
}

export class UnitOfWork {
  readonly #deps: UnitOfWorkDeps;

  constructor(deps: UnitOfWorkDeps) {
    this.#deps = deps;
  }

  /** Runs `fn` in one transaction (retried whole on a conflict); after-commit hooks run once it committed. */
  async run<T>(fn: (work: Work) => Promise<T>): Promise<T> {
    let hooks: Array<() => void> = [];
    const outcome = await this.#deps.store.transaction(async (tx): Promise<{ value: T } | Refusal> => {
      hooks = []; // a retried attempt starts afresh
      const work: Work = {
        tx,
        now: this.#deps.clock(),
        audit: (actor, input) => this.#append(tx, actor, input, work.now),
        refuse: (error) => {
          throw new Refusal(error);
        },
        afterCommit: (hook) => void hooks.push(hook),
      };
      try {
        return { value: await fn(work) };
      } catch (err) {
        if (err instanceof Refusal) return err;
        throw err;
      }
    });
    for (const hook of hooks) hook();
    if (outcome instanceof Refusal) throw outcome.error;
    return outcome.value;
  }

  /** Records `event` by `actor` in a unit of its own, then fails with `error`. */
  refuse(actor: Actor | AuditActor, event: AuditInput, error: BrokerError): Promise<never> {
    return this.run(async (work) => {
      await work.audit(actor, event);
      return work.refuse(error);
    });
  }

  /** Appends one event in a unit of its own. */
  record(actor: Actor | AuditActor, event: AuditInput): Promise<void> {
    return this.run((work) => work.audit(actor, event));
  }

  /** Appends one event in a transaction someone else runs (the key ring's rotation). */
  append(tx: Tx, actor: Actor | AuditActor, event: AuditInput): Promise<void> {
    return this.#append(tx, actor, event, this.#deps.clock());
  }

  async #append(tx: Tx, actor: Actor | AuditActor, input: AuditInput, now: Date): Promise<void> {
    const observer = this.#deps.observer;
    const onTimed = observer?.auditWritten ? (seconds: number) => observer.auditWritten!(seconds) : undefined;
    await appendAuditEvent(tx, { ...input, actor: auditActor(actor), occurredAt: input.occurredAt ?? now }, { onTimed });
  }
}
