/**
 * A load generator: one child process of run.ts (forked, IPC), never in a server's event loop.
 *
 * It opens its connections to one target (each connection presents its own workload SVID; to
 * verify, a second one presents the API's SVID), prepares what a call needs (tasks to issue
 * tokens for, tokens to verify), and then runs one plan:
 *
 * - closed loop: `inflight` loops, each bound to one connection, each sending its next call as
 *   soon as its last one ended; a call counts when it ends inside the measurement window, its
 *   latency is from its send to its answer;
 * - open loop: a fixed arrival schedule (`ratePerSec`, offset so that generators interleave);
 *   every call scheduled inside the window counts, its latency is from its *scheduled* time to
 *   its answer, so a stall of the server (or of this generator) is not hidden by sending less
 *   (no coordinated omission). The generator sleeps on timers, so it sends up to a millisecond
 *   early (such a call is timed from its actual send). Nothing caps the calls in flight.
 *
 * gRPC for the echo server and the broker (grpc-js, one channel and TCP connection per
 * connection: local subchannel pools); HTTPS/1.1 for oidc-provider (undici Pool per identity,
 * keep-alive, one request per socket at a time, so `inflight` sockets).
 */
import * as grpc from '@grpc/grpc-js';
import * as hdr from 'hdr-histogram-js';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { PeerCertificate } from 'node:tls';
import { Pool } from 'undici';
import { BrokerClient } from '../src/client/broker-client.js';
import { svidChannelCredentials, svidChannelOptions } from '../src/client/credentials.js';
import type { CreateTaskRequest } from '../src/gen/taskbroker/v1/CreateTaskRequest.js';
import {
  BROKER_ID,
  ECHO_PATH,
  errorMessage,
  oidcApiClient,
  oidcOpaqueClient,
  oidcWorkerClient,
  SCOPES,
  send,
  thumbprintOfPem,
  TOKEN_TTL_SECONDS,
  type CallKind,
  type ConnectionSpec,
  type LoadResult,
  type RunPlan,
  type TargetSpec,
  type ToLoad,
} from './common.js';

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

function keyOf(err: unknown): string {
  if (err instanceof CallError) return err.key;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'number' && grpc.status[code] !== undefined) return grpc.status[code];
  if (typeof code === 'string') return code;
  return 'ERROR';
}

function pemOf(path: string): string {
  return readFileSync(path, 'utf8');
}

interface Identity {
  spiffeId: string;
  certPem: string;
  keyPem: string;
  thumbprint: string;
}

function identity(files: ConnectionSpec['worker']): Identity {
  const certPem = pemOf(files.certPath);
  return { spiffeId: files.spiffeId, certPem, keyPem: pemOf(files.keyPath), thumbprint: thumbprintOfPem(certPem) };
}

/** Each channel on its own TCP connection: without this grpc-js shares subchannels between clients of the same target. */
const OWN_CONNECTION: grpc.ChannelOptions = { 'grpc.use_local_subchannel_pool': 1 };

/** What the generator holds for one connection index. */
interface Conn {
  index: number;
  worker: Identity;
  api: Identity;
  echo?: grpc.Client;
  brokerWorker?: BrokerClient;
  brokerApi?: BrokerClient;
  /** HTTPS pools (created at prepare, sized to the calls in flight per connection). */
  httpsWorker?: Pool;
  httpsApi?: Pool;
  /** Tasks to issue tokens for, and tokens to verify or introspect; used round-robin. */
  tasks: Array<{ taskId: string; taskHash: string }>;
  tokens: Array<{ token: string; taskHash: string }>;
  next: number;
  /** Sequence for unique task resources. */
  created: number;
}

let target: TargetSpec | undefined;
let generator = 0;
let conns: Conn[] = [];
let httpsPoolSize = 0;
const echoPayload = randomBytes(64);

function connect(t: TargetSpec, specs: ConnectionSpec[]): void {
  target = t;
  const bundle = pemOf(t.bundlePath);
  conns = specs.map((spec) => {
    const worker = identity(spec.worker);
    const api = identity(spec.api);
    const conn: Conn = { index: spec.index, worker, api, tasks: [], tokens: [], next: 0, created: 0 };
    const creds = (who: Identity) => svidChannelCredentials({ certChainPem: who.certPem, keyPem: who.keyPem, bundle, serverId: BROKER_ID });
    if (t.kind === 'echo') {
      conn.echo = new grpc.Client(t.address, creds(worker), { ...svidChannelOptions(), ...OWN_CONNECTION });
    } else if (t.kind === 'broker') {
      conn.brokerWorker = new BrokerClient({ address: t.address, credentials: creds(worker), channelOptions: OWN_CONNECTION });
      conn.brokerApi = new BrokerClient({ address: t.address, credentials: creds(api), channelOptions: OWN_CONNECTION });
    }
    return conn;
  });
}

function httpsPool(who: Identity, connections: number): Pool {
  if (!target) throw new Error('not connected');
  const ca = pemOf(target.bundlePath);
  return new Pool(`https://${target.address}`, {
    connections,
    pipelining: 1,
    keepAliveTimeout: 120_000,
    connect: {
      ca,
      cert: who.certPem,
      key: who.keyPem,
      rejectUnauthorized: true,
      // The server's certificate is the broker's SVID: a URI SAN and no DNS name.
      checkServerIdentity: (_host: string, cert: PeerCertificate) =>
        (cert.subjectaltname ?? '').split(', ').includes(`URI:${BROKER_ID}`) ? undefined : new Error(`server is not ${BROKER_ID}`),
    },
  });
}

async function sizeHttpsPools(perConnection: number): Promise<void> {
  if (httpsPoolSize === perConnection) return;
  for (const c of conns) {
    await Promise.all([c.httpsWorker?.close(), c.httpsApi?.close()]);
    c.httpsWorker = httpsPool(c.worker, perConnection);
    c.httpsApi = httpsPool(c.api, perConnection);
  }
  httpsPoolSize = perConnection;
}

// ---------------------------------------------------------------------------------------------
// Calls

function echo(c: Conn): Promise<void> {
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
      resources: [`s3://bench-bucket/invoices/g${generator}-c${c.index}-${n}`],
      audience: c.api.spiffeId,
      scopes: SCOPES,
      params: { fields: { format: { stringValue: 'csv' }, month: { stringValue: '2024-06' }, n: { numberValue: n } } },
      ttl: { seconds: 3600 },
    },
  };
}

function brokerOf(c: Conn): { worker: BrokerClient; api: BrokerClient } {
  if (!c.brokerWorker || !c.brokerApi) throw new Error('no broker clients');
  return { worker: c.brokerWorker, api: c.brokerApi };
}

async function createTask(c: Conn): Promise<{ taskId: string; taskHash: string }> {
  const res = await brokerOf(c).worker.createTask(taskRequest(c), { deadlineMs: DEADLINE_MS });
  if (!res.task?.taskId) throw new CallError('BAD_ANSWER', 'CreateTask: no task in the answer');
  return { taskId: res.task.taskId, taskHash: res.task.taskHash };
}

async function issueToken(c: Conn, taskId: string): Promise<string> {
  const res = await brokerOf(c).worker.issueToken({ taskId }, { deadlineMs: DEADLINE_MS });
  if (!res.token) throw new CallError('BAD_ANSWER', 'IssueToken: no token in the answer');
  return res.token;
}

async function verifyToken(c: Conn, token: string, taskHash: string): Promise<void> {
  const res = await brokerOf(c).api.verifyToken({ token, presenterCertThumbprint: c.worker.thumbprint, expectedTaskHash: taskHash }, { deadlineMs: DEADLINE_MS });
  if (!res.valid || !res.bindingChecked) throw new CallError(`VERIFY_${res.reason}`, `VerifyToken: expected a valid, bound token, got ${res.reason}: ${res.detail}`);
}

function pick<T>(c: Conn, items: T[]): T {
  const item = items[c.next++ % items.length];
  if (item === undefined) throw new Error('nothing prepared for this call');
  return item;
}

/** The measurement window of the plan running, and the calls of flows that ended inside it. */
const window = { from: 0n, until: 0n, flowCalls: 0 };
function flowStep(): void {
  const t = now();
  if (t >= window.from && t <= window.until) window.flowCalls++;
}

async function flow(c: Conn): Promise<void> {
  const task = await createTask(c);
  flowStep();
  const token = await issueToken(c, task.taskId);
  flowStep();
  await verifyToken(c, token, task.taskHash);
  flowStep();
  const done = await brokerOf(c).worker.completeTask(task.taskId, 'ok', { deadlineMs: DEADLINE_MS });
  if (done.task?.state !== 'TASK_STATE_COMPLETED' || done.revokedTokens !== 1) {
    throw new CallError('BAD_ANSWER', `CompleteTask: ${done.task?.state ?? 'no task'}, revoked ${done.revokedTokens}`);
  }
  flowStep();
}

const FORM = { 'content-type': 'application/x-www-form-urlencoded' };

async function postForm(pool: Pool | undefined, path: string, form: Record<string, string>): Promise<Record<string, unknown>> {
  if (!pool) throw new Error('no HTTPS pool');
  const res = await pool.request({ path, method: 'POST', headers: FORM, body: new URLSearchParams(form).toString(), headersTimeout: DEADLINE_MS, bodyTimeout: DEADLINE_MS });
  const body = (await res.body.json()) as Record<string, unknown>;
  if (res.statusCode !== 200) {
    const error = typeof body.error === 'string' ? body.error : '';
    throw new CallError(`HTTP_${res.statusCode}${error ? `_${error}` : ''}`, `${path}: ${res.statusCode} ${JSON.stringify(body).slice(0, 300)}`);
  }
  return body;
}

async function oidcToken(c: Conn, clientId: string): Promise<string> {
  const body = await postForm(c.httpsWorker, '/token', { grant_type: 'client_credentials', client_id: clientId, resource: c.api.spiffeId, scope: SCOPES.join(' ') });
  if (typeof body.access_token !== 'string') throw new CallError('BAD_ANSWER', '/token: no access_token');
  return body.access_token;
}

/** The resource server introspects the token and checks its certificate binding against the presenter's (the worker's) certificate. */
async function oidcIntrospect(c: Conn, token: string): Promise<void> {
  const body = await postForm(c.httpsApi, '/token/introspection', { token, token_type_hint: 'access_token', client_id: oidcApiClient(c.index) });
  const cnf = body.cnf as Record<string, unknown> | undefined;
  if (body.active !== true || cnf?.['x5t#S256'] !== c.worker.thumbprint) {
    throw new CallError('INACTIVE_OR_UNBOUND', `/token/introspection: ${JSON.stringify(body).slice(0, 300)}`);
  }
}

function decodeJwt(token: string): { header: Record<string, unknown>; payload: Record<string, unknown> } {
  const [h, p] = token.split('.');
  if (h === undefined || p === undefined) throw new Error('not a JWT');
  const part = (s: string) => JSON.parse(Buffer.from(s, 'base64url').toString('utf8')) as Record<string, unknown>;
  return { header: part(h), payload: part(p) };
}

/** Checks once, before the load, that a token is what the scenario claims: ES256, audience, certificate-bound, lifetime. */
function checkToken(c: Conn, token: string, typ: string): string {
  const { header, payload } = decodeJwt(token);
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

/** Runs fn(0..n-1) with `concurrency` in flight. */
async function inParallel(n: number, concurrency: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < n; i = next++) await fn(i);
  };
  await Promise.all(Array.from({ length: Math.min(n, concurrency) }, worker));
}

/** Tasks (or tokens) per connection that follow-up calls spread over: the broker locks the task row per call. */
const poolPerConnection = (inflightPerConn: number) => Math.max(64, inflightPerConn * 4);

async function prepare(call: CallKind, inflight: number): Promise<string | undefined> {
  const perConn = Math.max(1, Math.ceil(inflight / conns.length));
  const first = conns[0];
  if (!first) throw new Error('no connections');
  switch (call) {
    case 'echo':
      await Promise.all(conns.map((c) => echo(c)));
      return undefined;
    case 'oidc-token':
    case 'oidc-token-opaque': {
      await sizeHttpsPools(perConn);
      const clientId = call === 'oidc-token' ? oidcWorkerClient : oidcOpaqueClient;
      // Open every keep-alive connection now (TLS handshakes are not what is measured).
      await Promise.all(conns.map((c) => inParallel(perConn, perConn, async () => void (await oidcToken(c, clientId(c.index))))));
      const detail = checkToken(first, await oidcToken(first, oidcWorkerClient(first.index)), 'at+jwt');
      return call === 'oidc-token' ? detail : 'opaque access tokens (stored in the in-memory adapter)';
    }
    case 'oidc-introspect': {
      await sizeHttpsPools(perConn);
      // Opaque tokens (oidc-provider refuses to introspect JWT access tokens); the adapter is an LRU of 1000, so stay well below.
      const count = Math.max(8, Math.floor(600 / conns.length / 2));
      await Promise.all(
        conns.map(async (c) => {
          c.tokens = [];
          await inParallel(count, perConn, async () => {
            c.tokens.push({ token: await oidcToken(c, oidcOpaqueClient(c.index)), taskHash: '' });
          });
          // Checks the answer, and opens every keep-alive connection of the API's pool.
          await inParallel(perConn, perConn, () => oidcIntrospect(c, pick(c, c.tokens).token));
        }),
      );
      return `${count} opaque tokens per identity`;
    }
    case 'create':
      // Only the identities a scenario calls with touch the broker: its admission shares the
      // replica among the callers seen in the last second.
      await Promise.all(conns.map((c) => brokerOf(c).worker.whoAmI()));
      return undefined;
    case 'flow':
      await Promise.all(conns.map((c) => Promise.all([brokerOf(c).worker.whoAmI(), brokerOf(c).api.whoAmI()])));
      return undefined;
    case 'issue':
    case 'verify': {
      const size = poolPerConnection(perConn);
      let detail: string | undefined;
      await Promise.all(
        conns.map(async (c) => {
          if (call === 'verify') await brokerOf(c).api.whoAmI();
          if (c.tasks.length < size) await inParallel(size - c.tasks.length, perConn, async () => void c.tasks.push(await createTask(c)));
          if (call === 'verify' && c.tokens.length < size) {
            await inParallel(size - c.tokens.length, perConn, async (i) => {
              const task = c.tasks[i % c.tasks.length];
              if (task) c.tokens.push({ token: await issueToken(c, task.taskId), taskHash: task.taskHash });
            });
          }
          if (c === first) detail = checkToken(c, await issueToken(c, pick(c, c.tasks).taskId), 'task+jwt');
        }),
      );
      return `${size} tasks per connection; ${detail ?? ''}`;
    }
  }
}

function callFor(kind: CallKind): (c: Conn) => Promise<void> {
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
      return flow;
  }
}

// ---------------------------------------------------------------------------------------------
// Running a plan

const now = () => process.hrtime.bigint();

/**
 * Resolves at `t`: a timer until about a millisecond before, then the event loop's turns (I/O
 * goes on meanwhile). Timers alone would be up to a millisecond late, and in the open loop that
 * lateness would count as the server's latency.
 */
async function sleepUntil(t: bigint): Promise<void> {
  for (;;) {
    const leftMs = Number(t - now()) / 1e6;
    if (leftMs <= 0) return;
    if (leftMs > 1.2) await new Promise((r) => setTimeout(r, Math.min(50, Math.floor(leftMs - 1))));
    else await new Promise((r) => setImmediate(r));
  }
}

class Recorder {
  readonly histogram = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3 });
  ok = 0;
  errors: Record<string, number> = {};
  firstError?: string;
  maxUs = 0;
  /** Successful completions per whole second of the window. */
  readonly perSecond: number[] = [];

  success(us: number, at = now()): void {
    this.ok++;
    const second = Number((at - window.from) / 1_000_000_000n);
    if (second >= 0) this.perSecond[second] = (this.perSecond[second] ?? 0) + 1;
    this.histogram.recordValue(Math.max(1, us));
    if (us > this.maxUs) this.maxUs = us;
  }

  failure(err: unknown): void {
    const key = keyOf(err);
    this.errors[key] = (this.errors[key] ?? 0) + 1;
    this.firstError ??= `${key}: ${errorMessage(err)}`.slice(0, 500);
  }

  result(extra: Pick<LoadResult, 'scheduled' | 'maxInflight' | 'maxSendLagMs'>): LoadResult {
    const histogram = hdr.encodeIntoCompressedBase64(this.histogram);
    this.histogram.destroy();
    return {
      ok: this.ok,
      errors: this.errors,
      ...(this.firstError ? { firstError: this.firstError } : {}),
      histogram,
      maxUs: this.maxUs,
      perSecond: Array.from(this.perSecond, (n) => n ?? 0),
      flowCalls: window.flowCalls,
      ...extra,
    };
  }
}

async function closedLoop(plan: RunPlan, call: (c: Conn) => Promise<void>): Promise<LoadResult> {
  const start = BigInt(plan.startNs);
  const from = BigInt(plan.measureStartNs);
  const until = BigInt(plan.measureEndNs);
  const rec = new Recorder();
  await sleepUntil(start);
  const loop = async (k: number) => {
    const c = conns[k % conns.length];
    if (!c) return;
    while (now() < until) {
      const t0 = now();
      let error: unknown;
      let failed = false;
      try {
        await call(c);
      } catch (err) {
        failed = true;
        error = err;
      }
      const t1 = now();
      if (t1 < from || t1 > until) continue;
      if (failed) rec.failure(error);
      else rec.success(Number((t1 - t0) / 1000n), t1);
    }
  };
  await Promise.all(Array.from({ length: plan.inflight }, (_, k) => loop(k)));
  return rec.result({ scheduled: 0, maxInflight: plan.inflight, maxSendLagMs: 0 });
}

async function openLoop(plan: RunPlan, call: (c: Conn) => Promise<void>): Promise<LoadResult> {
  const rate = plan.ratePerSec ?? 0;
  if (!(rate > 0)) throw new Error('open loop without a rate');
  const intervalNs = 1e9 / rate;
  const start = BigInt(plan.startNs) + BigInt(Math.round(plan.offsetNs ?? 0));
  const from = BigInt(plan.measureStartNs);
  const until = BigInt(plan.measureEndNs);
  const rec = new Recorder();
  const pending = new Set<Promise<void>>();
  let inflight = 0;
  let maxInflight = 0;
  let scheduled = 0;
  let maxLagNs = 0n;
  await sleepUntil(start);
  for (let i = 0; ; i++) {
    const at = start + BigInt(Math.round(i * intervalNs));
    if (at >= until) break;
    // Timers only, no spinning (a spinning generator takes a core from the server): wake when
    // less than a millisecond is left, and send then. A call sent early is timed from its send,
    // a call sent late from its scheduled time: neither shortens what is measured.
    let t = now();
    if (at - t >= 1_000_000n) {
      await new Promise((r) => setTimeout(r, Number((at - t) / 1_000_000n)));
      t = now();
    }
    const origin = t < at ? t : at;
    if (t - at > maxLagNs && at >= from) maxLagNs = t - at;
    const counted = at >= from;
    if (counted) scheduled++;
    const c = conns[i % conns.length];
    if (!c) break;
    inflight++;
    if (inflight > maxInflight) maxInflight = inflight;
    const p: Promise<void> = call(c).then(
      () => {
        if (counted) rec.success(Number((now() - origin) / 1000n));
      },
      (err: unknown) => {
        if (counted) rec.failure(err);
      },
    );
    const tracked = p.finally(() => {
      inflight--;
      pending.delete(tracked);
    });
    pending.add(tracked);
  }
  await Promise.all(pending);
  return rec.result({ scheduled, maxInflight, maxSendLagMs: Number(maxLagNs) / 1e6 });
}

async function close(): Promise<void> {
  for (const c of conns) {
    c.echo?.close();
    c.brokerWorker?.close();
    c.brokerApi?.close();
    await Promise.all([c.httpsWorker?.close(), c.httpsApi?.close()]);
  }
}

if (process.send) {
  process.on('message', (message: ToLoad) => {
    const handle = async () => {
      switch (message.type) {
        case 'connect':
          generator = message.generator;
          connect(message.target, message.connections);
          send({ type: 'connected' });
          return;
        case 'prepare': {
          const detail = await prepare(message.call, message.inflight);
          send({ type: 'prepared', ...(detail ? { detail } : {}) });
          return;
        }
        case 'run': {
          const call = callFor(message.plan.call);
          Object.assign(window, { from: BigInt(message.plan.measureStartNs), until: BigInt(message.plan.measureEndNs), flowCalls: 0 });
          const result = message.plan.mode === 'open' ? await openLoop(message.plan, call) : await closedLoop(message.plan, call);
          send({ type: 'result', result });
          return;
        }
        case 'close':
          await close();
          process.exit(0);
      }
    };
    handle().catch((err: unknown) => send({ type: 'failed', message: errorMessage(err) }));
  });
  process.once('disconnect', () => process.exit(0));
}

