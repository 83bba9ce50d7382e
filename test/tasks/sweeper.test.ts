/**
 * The expiry sweeper is safe in several replicas at once: three sweepers, each with its own
 * database connection, expire every due task exactly once (one task.expired event each).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyTaskTrail } from '../../src/audit/audit.js';
import { silentLogger } from '../../src/observability/logger.js';
import type { Store } from '../../src/store/database.js';
import { migrate } from '../../src/store/migrate.js';
import type { Actor } from '../../src/model/task.js';
import { TaskLifecycle } from '../../src/tasks/lifecycle.js';
import { generateKekBase64, KeyEncryptionKey } from '../../src/tokens/kek.js';
import { SigningKeyRing } from '../../src/tokens/keyring.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { MutableClock } from '../helpers/broker.js';
import { permissivePolicySource } from '../helpers/policy.js';

const ISSUER = 'spiffe://a.test/task-broker';
const OWNER: Actor = { spiffeId: 'spiffe://a.test/w', trustDomain: 'a.test', certThumbprint: 'x5t', requestId: 'r' };
const TASKS = 300;

describe('expiry sweep in three replicas against one PostgreSQL database', () => {
  let database: TestDatabase;
  const stores: Store[] = [];
  const clock = new MutableClock();
  let replicas: TaskLifecycle[];

  beforeAll(async () => {
    database = await createTestDatabase('postgres');
    for (let i = 0; i < 3; i++) stores.push(await database.open());
    await migrate(stores[0]!.db);
    const kek = KeyEncryptionKey.fromBase64(generateKekBase64());
    replicas = await Promise.all(
      stores.map(async (store) => {
        const keys = new SigningKeyRing({ db: store.db, kek, alg: 'ES256', maxTokenTtlSeconds: 900, logger: silentLogger(), clock: clock.now });
        await keys.init();
        return new TaskLifecycle({ store, keys, issuer: ISSUER, clock: clock.now, policy: permissivePolicySource() });
      }),
    );
  });
  afterAll(async () => {
    for (const s of stores) await s.close();
    await database?.drop();
  });

  it('expires every due task exactly once and revokes its tokens', async () => {
    const spec = { action: 'sweep', resources: [], audience: 'spiffe://a.test/api', scopes: ['s'], params: {}, ttlSeconds: 60 };
    const ids: string[] = [];
    for (let i = 0; i < TASKS; i += 50) {
      const batch = await Promise.all(Array.from({ length: 50 }, () => replicas[i % 3]!.createTask(OWNER, spec)));
      ids.push(...batch.map((r) => r.task.taskId));
    }
    await Promise.all(ids.slice(0, 100).map((id) => replicas[0]!.issueToken(OWNER, id)));
    const notDue = await replicas[0]!.createTask(OWNER, { ...spec, ttlSeconds: 3600 });

    clock.advance(61_000);
    const counts = await Promise.all(replicas.map((r, i) => r.sweepExpired({ requestId: `sweep-${i}`, batchSize: 25 })));
    expect(counts.reduce((a, b) => a + b, 0)).toBe(TASKS);
    // The work was shared, not done three times.
    expect(counts.filter((n) => n > 0).length).toBeGreaterThanOrEqual(1);

    const db = stores[0]!.db;
    const states = await db.selectFrom('tasks').select(['state']).where('task_id', 'in', ids).execute();
    expect(states.every((s) => s.state === 'EXPIRED')).toBe(true);
    expect((await replicas[1]!.loadTask(notDue.task.taskId))?.state).toBe('ACTIVE');
    const unrevoked = await db.selectFrom('tokens').select('jti').where('task_id', 'in', ids).where('revoked_at', 'is', null).execute();
    expect(unrevoked).toEqual([]);
    for (const id of ids.slice(0, 30)) {
      const trail = await verifyTaskTrail(db, id);
      expect(trail.ok).toBe(true);
      expect(trail.trail.filter((e) => e.type === 'task.expired')).toHaveLength(1);
    }
    const expiredEvents = await db
      .selectFrom('audit_events')
      .select((eb) => eb.fn.countAll<string>().as('n'))
      .where('event_type', '=', 'task.expired')
      .executeTakeFirstOrThrow();
    expect(Number(expiredEvents.n)).toBe(TASKS);
    // Nothing is left for the next run.
    expect(await replicas[2]!.sweepExpired({ requestId: 'again' })).toBe(0);
  });

  it('prunes token rows long past their expiry, keeping their audit events', async () => {
    clock.advance(8 * 24 * 3600 * 1000);
    const before = await stores[0]!.db
      .selectFrom('audit_events')
      .select((eb) => eb.fn.countAll<string>().as('n'))
      .where('event_type', '=', 'token.issued')
      .executeTakeFirstOrThrow();
    expect(await replicas[0]!.pruneTokens(7 * 24 * 3600)).toBe(100);
    const after = await stores[0]!.db
      .selectFrom('audit_events')
      .select((eb) => eb.fn.countAll<string>().as('n'))
      .where('event_type', '=', 'token.issued')
      .executeTakeFirstOrThrow();
    expect(after.n).toEqual(before.n);
  });
});
