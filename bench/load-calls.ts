/**
 * The calls a load generator makes, one per scenario kind: gRPC to the echo server and the
 * broker, HTTPS forms to oidc-provider. A call that fails throws; its error is counted under a
 * key (gRPC status name, HTTP status and OAuth error, or what was wrong with the answer).
 */
import * as grpc from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import { decodeJwt, decodeProtectedHeader } from 'jose';
import type { Pool } from 'undici';
import type { BrokerClient } from '../src/client/broker-client.js';
import type { CreateTaskRequest } from '../src/gen/taskbroker/v1/CreateTaskRequest.js';
import { ECHO_PATH, oidcApiClient, oidcOpaqueClient, oidcWorkerClient, SCOPES, TOKEN_TTL_SECONDS, type CallKind } from './common.js';
import type { Conn } from './load-connections.js';
import type { MeasurementWindow } from './load-loops.js';

const DEADLINE_MS = 10_000;

/** A failed call, with the key it is counted under (gRPC status name, HTTP status, or what went wrong). */
class CallError extends Error {
  constructor(
    readonly key: string,
    message: string,
  ) {
    super(message);
  }
}

export function keyOf(err: unknown): string {
  if (err instanceof CallError) return err.key;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'number' && grpc.status[code] !== undefined) return grpc.status[code];
  if (typeof code === 'string') return code;
  return 'ERROR';
}

const echoPayload = randomBytes(64);

export function echo(c: Conn): Promise<void> {
  const client = c.echo;
  if (!client) throw new Error('no echo client');
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest<Buffer, Buffer>(
      ECHO_PATH,
      (b) => b,
      (b) => b,
      echoPayload,
      new grpc.Metadata(),
      { deadline: Date.now() + DEADLINE_MS },
      (err, res) => {
        if (err) reject(err);
        else if (res?.length !== echoPayload.length) reject(new CallError('BAD_ANSWER', 'echo answered other bytes'));
        else resolve();
      },
    );
  });
}

function taskRequest(c: Conn): CreateTaskRequest {
  const n = c.created++;
  return {
    spec: {
      action: 'invoice.export',
      resources: [`s3://bench-bucket/invoices/g${c.generator}-c${c.index}-${n}`],
      audience: c.api.spiffeId,
      scopes: SCOPES,
      params: { fields: { format: { stringValue: 'csv' }, month: { stringValue: '2024-06' }, n: { numberValue: n } } },
      ttl: { seconds: 3600 },
    },
  };
}

export function brokerOf(c: Conn): { worker: BrokerClient; api: BrokerClient } {
  if (!c.brokerWorker || !c.brokerApi) throw new Error('no broker clients');
  return { worker: c.brokerWorker, api: c.brokerApi };
}

export async function createTask(c: Conn): Promise<{ taskId: string; taskHash: string }> {
  const res = await brokerOf(c).worker.createTask(taskRequest(c), { deadlineMs: DEADLINE_MS });
  if (!res.task?.taskId) throw new CallError('BAD_ANSWER', 'CreateTask: no task in the answer');
  return { taskId: res.task.taskId, taskHash: res.task.taskHash };
}

export async function issueToken(c: Conn, taskId: string): Promise<string> {
  const res = await brokerOf(c).worker.issueToken({ taskId }, { deadlineMs: DEADLINE_MS });
  if (!res.token) throw new CallError('BAD_ANSWER', 'IssueToken: no token in the answer');
  return res.token;
}

async function verifyToken(c: Conn, token: string, taskHash: string): Promise<void> {
  const res = await brokerOf(c).api.verifyToken(
    { token, presenterCertThumbprint: c.worker.thumbprint, expectedTaskHash: taskHash },
    { deadlineMs: DEADLINE_MS },
  );
  if (!res.valid || !res.bindingChecked)
    throw new CallError(`VERIFY_${res.reason}`, `VerifyToken: expected a valid, bound token, got ${res.reason}: ${res.detail}`);
}

export function pick<T>(c: Conn, items: T[]): T {
  const item = items[c.next++ % items.length];
  if (item === undefined) throw new Error('nothing prepared for this call');
  return item;
}

/** One flow; `step` is told each time one of its four calls ends. */
async function flow(c: Conn, step: () => void): Promise<void> {
  const task = await createTask(c);
  step();
  const token = await issueToken(c, task.taskId);
  step();
  await verifyToken(c, token, task.taskHash);
  step();
  const done = await brokerOf(c).worker.completeTask(task.taskId, 'ok', { deadlineMs: DEADLINE_MS });
  if (done.task?.state !== 'TASK_STATE_COMPLETED' || done.revokedTokens !== 1) {
    throw new CallError('BAD_ANSWER', `CompleteTask: ${done.task?.state ?? 'no task'}, revoked ${done.revokedTokens}`);
  }
  step();
}

const FORM = { 'content-type': 'application/x-www-form-urlencoded' };

async function postForm(pool: Pool | undefined, path: string, form: Record<string, string>): Promise<Record<string, unknown>> {
  if (!pool) throw new Error('no HTTPS pool');
  const res = await pool.request({
    path,
    method: 'POST',
    headers: FORM,
    body: new URLSearchParams(form).toString(),
    headersTimeout: DEADLINE_MS,
    bodyTimeout: DEADLINE_MS,
  });
  const body = (await res.body.json()) as Record<string, unknown>;
  if (res.statusCode !== 200) {
    const error = typeof body.error === 'string' ? body.error : '';
    throw new CallError(`HTTP_${res.statusCode}${error ? `_${error}` : ''}`, `${path}: ${res.statusCode} ${JSON.stringify(body).slice(0, 300)}`);
  }
  return body;
}

export async function oidcToken(c: Conn, clientId: string): Promise<string> {
  const body = await postForm(c.httpsWorker, '/token', {
    grant_type: 'client_credentials',
    client_id: clientId,
    resource: c.api.spiffeId,
    scope: SCOPES.join(' '),
  });
  if (typeof body.access_token !== 'string') throw new CallError('BAD_ANSWER', '/token: no access_token');
  return body.access_token;
}

/** The resource server introspects the token and checks its certificate binding against the presenter's (the worker's) certificate. */
export async function oidcIntrospect(c: Conn, token: string): Promise<void> {
  const body = await postForm(c.httpsApi, '/token/introspection', { token, token_type_hint: 'access_token', client_id: oidcApiClient(c.index) });
  const cnf = body.cnf as Record<string, unknown> | undefined;
  if (body.active !== true || cnf?.['x5t#S256'] !== c.worker.thumbprint) {
    throw new CallError('INACTIVE_OR_UNBOUND', `/token/introspection: ${JSON.stringify(body).slice(0, 300)}`);
  }
}

/** Checks once, before the load, that a token is what the scenario claims: ES256, audience, certificate-bound, lifetime. */
export function checkToken(c: Conn, token: string, typ: string): string {
  const header = decodeProtectedHeader(token);
  const payload = decodeJwt(token);
  const cnf = payload.cnf as Record<string, unknown> | undefined;
  const problems = [
    header.alg !== 'ES256' && `alg ${String(header.alg)}`,
    header.typ !== typ && `typ ${String(header.typ)}`,
    payload.aud !== c.api.spiffeId && `aud ${JSON.stringify(payload.aud)}`,
    cnf?.['x5t#S256'] !== c.worker.thumbprint && 'cnf x5t#S256 is not the worker certificate',
    Number(payload.exp) - Number(payload.iat) !== TOKEN_TTL_SECONDS && `lifetime ${Number(payload.exp) - Number(payload.iat)} s`,
  ].filter(Boolean);
  if (problems.length > 0) throw new Error(`token check failed: ${problems.join(', ')}`);
  return `${String(header.alg)} ${typ}, aud ${String(payload.aud)}, cnf x5t#S256 bound, ${TOKEN_TTL_SECONDS} s`;
}

/** The call a scenario makes, on one connection; a flow reports its steps to `window`. */
export function callFor(kind: CallKind, window: MeasurementWindow): (c: Conn) => Promise<void> {
  switch (kind) {
    case 'echo':
      return echo;
    case 'oidc-token':
      return async (c) => void (await oidcToken(c, oidcWorkerClient(c.index)));
    case 'oidc-token-opaque':
      return async (c) => void (await oidcToken(c, oidcOpaqueClient(c.index)));
    case 'oidc-introspect':
      return (c) => oidcIntrospect(c, pick(c, c.tokens).token);
    case 'create':
      return async (c) => void (await createTask(c));
    case 'issue':
      return async (c) => void (await issueToken(c, pick(c, c.tasks).taskId));
    case 'verify':
      return (c) => {
        const t = pick(c, c.tokens);
        return verifyToken(c, t.token, t.taskHash);
      };
    case 'flow':
      return (c) => flow(c, () => window.flowStep());
  }
}
