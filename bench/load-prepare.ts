/**
 * What a load generator does before a scenario's warm-up: opens every connection the scenario
 * uses (TLS handshakes are not what is measured), makes the tasks and tokens its calls spread
 * over, and checks once that a token is what the scenario claims. Returns a line for the report.
 */
import { oidcOpaqueClient, oidcWorkerClient, type CallKind } from './common.js';
import { brokerOf, checkToken, createTask, echo, issueToken, oidcIntrospect, oidcToken, pick } from './load-calls.js';
import type { LoadConnections } from './load-connections.js';

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

export async function prepare(connections: LoadConnections, call: CallKind, inflight: number): Promise<string | undefined> {
  const conns = connections.conns;
  const perConn = Math.max(1, Math.ceil(inflight / conns.length));
  const first = conns[0];
  if (!first) throw new Error('no connections');
  switch (call) {
    case 'echo':
      await Promise.all(conns.map((c) => echo(c)));
      return undefined;
    case 'oidc-token':
    case 'oidc-token-opaque': {
      await connections.sizeHttpsPools(perConn);
      const clientId = call === 'oidc-token' ? oidcWorkerClient : oidcOpaqueClient;
      // Open every keep-alive connection now (TLS handshakes are not what is measured).
      await Promise.all(conns.map((c) => inParallel(perConn, perConn, async () => void (await oidcToken(c, clientId(c.index))))));
      const detail = checkToken(first, await oidcToken(first, oidcWorkerClient(first.index)), 'at+jwt');
      return call === 'oidc-token' ? detail : 'opaque access tokens (stored in the in-memory adapter)';
    }
    case 'oidc-introspect': {
      await connections.sizeHttpsPools(perConn);
      // Opaque tokens (oidc-provider refuses to introspect JWT access tokens); the adapter is an LRU
      // of 1000 shared by every generator's connections, so all of them together stay well below.
      const count = Math.max(1, Math.floor(600 / connections.totalConnections));
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
