/**
 * ListTasks page tokens: the keyset position of the last task of a page plus a digest of the
 * filter, so a token is refused when the filter changes between pages.
 */
import { createHash } from 'node:crypto';
import { invalid } from './validation.js';

export interface ListTasksFilter {
  owner?: string;
  state?: string;
  audience?: string;
  createdAfter?: Date;
  createdBefore?: Date;
}

interface Cursor {
  v: 1;
  /** created_at of the last task of the page, ISO */
  c: string;
  /** task_id of the last task of the page */
  t: string;
  /** digest of the filter the cursor belongs to */
  f: string;
}

export function filterDigest(filter: ListTasksFilter): string {
  const canonical = JSON.stringify([
    filter.owner ?? '',
    filter.state ?? '',
    filter.audience ?? '',
    filter.createdAfter?.toISOString() ?? '',
    filter.createdBefore?.toISOString() ?? '',
  ]);
  return createHash('sha256').update(canonical).digest('base64url').slice(0, 16);
}

export function encodeCursor(last: { createdAt: Date; taskId: string }, digest: string): string {
  const c: Cursor = { v: 1, c: last.createdAt.toISOString(), t: last.taskId, f: digest };
  return Buffer.from(JSON.stringify(c)).toString('base64url');
}

export function decodeCursor(token: string, digest: string): { createdAt: Date; taskId: string } {
  const bad = () => invalid('page_token is not a page token of this listing (filters must stay the same between pages)');
  let c: Partial<Cursor> | null;
  try {
    c = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as Partial<Cursor> | null;
  } catch {
    throw bad();
  }
  if (typeof c !== 'object' || c === null) throw bad();
  if (c.v !== 1 || typeof c.c !== 'string' || typeof c.t !== 'string' || c.f !== digest || Number.isNaN(Date.parse(c.c))) throw bad();
  return { createdAt: new Date(c.c), taskId: c.t };
}
