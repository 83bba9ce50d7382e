/**
 * In-memory stand-ins for the ports of the task domain, so its rules run without a database:
 * a key ring holding one generated key, a store that answers the write path's operations the
 * way tb_apply (migrations/0003) answers them for one ACTIVE task, and a Db that refuses to be
 * used. Everything else (TaskAccess, TokenOperations, TaskLifecycle, policy) is the real code.
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { calculateJwkThumbprint, type JWK } from 'jose';
import { Kysely, PostgresDialect } from 'kysely';
import type { Actor } from '../../src/model/task.js';
import { parsePolicy } from '../../src/policy/policy-document.js';
import { StaticPolicySource } from '../../src/policy/policy-source.js';
import { WriteHealth, type Db, type Store } from '../../src/store/database.js';
import type { Schema } from '../../src/store/schema.js';
import type { FactsRow } from '../../src/tasks/task-access.js';
import type { TokenKeys } from '../../src/tasks/token-operations.js';
import type { SigningKey, VerificationKey } from '../../src/tokens/keyring.js';

export const ISSUER = 'spiffe://broker.test/task-broker';
export const WORKER = 'spiffe://example.org/ns/billing/sa/worker';
export const INVOICES = 'spiffe://example.org/ns/billing/sa/invoices';
export const NOW = new Date('2030-01-01T00:00:00.000Z');
export const NOW_SEC = NOW.getTime() / 1000;
export const TASK_ID = 'tsk_AAAAAAAAAAAAAAAAAAAAAAAA';
export const TASK_HASH = 'z4PhNX7vuL3xVChQ1m2AB9BwLgzCDd2QcJ5s7e6UK0I';

export function actor(spiffeId = WORKER, certThumbprint = 'thumb-of-worker-cert'): Actor {
  return { spiffeId, trustDomain: 'example.org', certThumbprint, requestId: 'req-1' };
}

/** A Db for deps that require one but must not reach it here: any query fails loudly. */
export function unreachableDb(): Db {
  return new Kysely<Schema>({
    dialect: new PostgresDialect({
      pool: () => Promise.reject(new Error('a unit test reached the database')),
    }),
  });
}

/** A policy source holding one rule for WORKER on INVOICES; `extra` YAML lines are added to the rule. */
export function policyOf(extra = ''): StaticPolicySource {
  const text = `version: 1
rules:
  - name: billing
    callers: { spiffe_ids: ["${WORKER}"] }
    actions: ["invoice.export"]
    audiences: ["${INVOICES}"]
    scopes: ["invoices:read", "invoices:list"]
${extra}`;
  return new StaticPolicySource(parsePolicy(text, 'policy.yaml'));
}

export interface TestKey {
  key: SigningKey;
  verification: VerificationKey;
  /** The minimal key ring TokenOperations uses: the active key and its public half. */
  ring: TokenKeys;
}

export async function testKey(): Promise<TestKey> {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const jwk = publicKey.export({ format: 'jwk' }) as JWK;
  const kid = await calculateJwkThumbprint(jwk, 'sha256');
  const key: SigningKey = { kid, alg: 'ES256', privateKey, publicJwk: { ...jwk, kid, alg: 'ES256', use: 'sig' } };
  const verification: VerificationKey = { alg: 'ES256', publicKey: publicKey satisfies KeyObject };
  const ring = {
    activeKey: () => Promise.resolve(key),
    verificationKey: (k: string) => Promise.resolve(k === kid ? verification : undefined),
  } satisfies TokenKeys;
  return { key, verification, ring };
}

export type Op = Record<string, unknown> & { op: string };

/**
 * The write path's statement for one task in memory: what tb_apply decides on the locked row
 * (owner, state, approval) for the ACTIVE task TASK_ID owned by WORKER. `answers` overrides the
 * result of an operation kind (e.g. what tb_op_verify found); every operation is kept in `ops`.
 */
export class MemoryStore implements Pick<Store, 'db' | 'transaction' | 'applyBatch' | 'read' | 'writes'> {
  /** Only the write path's statement and reads are answered; anything else fails loudly. */
  readonly db = unreachableDb();
  readonly writes = new WriteHealth();
  readonly ops: Op[] = [];
  readonly reads: string[] = [];
  facts: FactsRow = {
    task_id: TASK_ID,
    owner_spiffe_id: WORKER,
    action: 'invoice.export',
    audience: INVOICES,
    scopes: ['invoices:read', 'invoices:list'],
    resources: [],
    ttl_seconds: 900,
    task_hash: TASK_HASH,
    expires_at: new Date(NOW.getTime() + 900_000),
  };
  approved = false;
  answers: Record<string, Record<string, unknown>> = {};

  transaction<T>(): Promise<T> {
    return Promise.reject(new Error('a unit test opened a transaction'));
  }

  applyBatch(opsJson: string): Promise<unknown[]> {
    const ops = JSON.parse(opsJson) as Op[];
    this.ops.push(...ops);
    return Promise.resolve(ops.map((op) => this.#answer(op)));
  }

  read<R>(_name: string, _text: string, values: unknown[]): Promise<R[]> {
    this.reads.push(String(values[0]));
    return Promise.resolve(values[0] === TASK_ID ? [this.facts as R] : []);
  }

  /** The operations of one kind, in the order they were sent. */
  sent(kind: string): Op[] {
    return this.ops.filter((o) => o.op === kind);
  }

  #answer(op: Op): Record<string, unknown> {
    const answer = this.answers[op.op];
    if (answer) return answer;
    const deny = op.deny as { kind: string; message: string } | undefined;
    if (deny) return { refused: deny.kind, message: deny.message };
    if (op.op === 'issue' && op.approval === true && !this.approved) return { refused: 'permission-denied', message: 'approval required' };
    return op.op === 'issue' ? { issued: true } : {};
  }
}
