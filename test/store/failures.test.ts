/**
 * What database errors mean for the caller: connection trouble and timeouts are UNAVAILABLE,
 * conflicts ABORTED, a lost COMMIT says its outcome is unknown, and anything else is not a
 * database fault at all (it stays INTERNAL, a bug).
 */
import { describe, expect, it } from 'vitest';
import { BrokerError } from '../../src/errors.js';
import { brokerErrorFor, CommitOutcomeUnknownError, databaseFailure } from '../../src/store/failures.js';

const withCode = (code: string, message = 'x') => Object.assign(new Error(message), { code });

describe('database failures', () => {
  it.each([
    ['connection refused', withCode('ECONNREFUSED', 'connect ECONNREFUSED 127.0.0.1:5432'), 'connection'],
    ['connection reset', withCode('ECONNRESET'), 'connection'],
    ['administrator shutdown', withCode('57P01', 'terminating connection due to administrator command'), 'connection'],
    ['starting up', withCode('57P03', 'the database system is starting up'), 'connection'],
    ['connection exception class', withCode('08006'), 'connection'],
    ['connection terminated (pg, no code)', new Error('Connection terminated unexpectedly'), 'connection'],
    ['pool timeout (pg-pool)', new Error('timeout exceeded when trying to connect'), 'pool-timeout'],
    ['statement timeout', withCode('57014', 'canceling statement due to statement timeout'), 'statement-timeout'],
    ['serialization failure', withCode('40001'), 'conflict'],
    ['deadlock', withCode('40P01'), 'conflict'],
    ['privilege revoked', withCode('42501', 'permission denied for table audit_events'), 'privilege'],
    ['read-only standby', withCode('25006'), 'privilege'],
    ['too many connections', withCode('53300'), 'server-resources'],
    ['a syntax error (a bug)', withCode('42601'), 'other'],
  ])('%s is %s', (_label, err, kind) => {
    expect(databaseFailure(err)?.kind).toBe(kind);
  });

  it('connection failures and timeouts are UNAVAILABLE saying nothing changed; conflicts ABORTED; bugs are not database failures', () => {
    expect(brokerErrorFor(withCode('ECONNREFUSED'))).toMatchObject({
      kind: 'unavailable',
      message: expect.stringMatching(/^database unavailable: .*nothing was changed, retry with backoff/),
    });
    expect(brokerErrorFor(withCode('40P01'))).toMatchObject({ kind: 'aborted', message: expect.stringMatching(/nothing was changed, retry the call/) });
    expect(brokerErrorFor(withCode('42601'))).toBeUndefined();
    expect(brokerErrorFor(new Error('something else'))).toBeUndefined();
    expect(brokerErrorFor(new BrokerError('not-found', 'task not found'))).toBeUndefined();
  });

  it('a connection lost during COMMIT says the outcome is unknown', () => {
    const err = new CommitOutcomeUnknownError({ kind: 'connection', reason: 'the connection to the database was lost' });
    expect(brokerErrorFor(err)).toMatchObject({ kind: 'unavailable', message: expect.stringMatching(/while committing: the outcome of this call is unknown/) });
  });

  it('an error with several addresses (IPv4 and IPv6) is classified by the first', () => {
    const aggregate = Object.assign(new Error(''), { errors: [withCode('ECONNREFUSED'), withCode('ECONNREFUSED')] });
    expect(databaseFailure(aggregate)?.kind).toBe('connection');
  });
});
