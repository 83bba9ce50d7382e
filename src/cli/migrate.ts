/**
 * `task-broker migrate`: applies pending migrations (forward only) and reports what it did.
 */
import { openStore } from '../store/database.js';
import { migrate, migrationStatus } from '../store/migrate.js';
import { stringOption, textOption, type CommandSpec, type ParsedCommand } from './options.js';
import { storageOptions } from './serve-options.js';

export const migrateSpec: CommandSpec = {
  name: 'migrate',
  summary: 'Apply pending database migrations (PostgreSQL or the embedded PGlite).',
  options: {
    ...storageOptions,
    status: { type: 'boolean', description: 'Only list applied and pending migrations' },
  },
};

export async function runMigrate(parsed: ParsedCommand, out: (line: string) => void): Promise<number> {
  const store = await openStore({
    databaseUrl: stringOption(parsed.values, 'database-url'),
    dataDir: textOption(parsed.values, 'data-dir'),
  });
  try {
    if (parsed.values.status === true) {
      const status = await migrationStatus(store.db);
      out(`database: ${store.description}`);
      for (const v of status.applied) out(`applied  ${v}`);
      for (const v of status.pending) out(`pending  ${v}`);
      return 0;
    }
    const applied = await migrate(store.db);
    out(`database: ${store.description}`);
    out(applied.length === 0 ? 'up to date: no pending migrations' : applied.map((v) => `applied  ${v}`).join('\n'));
    return 0;
  } finally {
    await store.close();
  }
}
