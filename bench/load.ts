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
 *
 * This file is the IPC loop; the connections, the calls, the preparation and the loops are in
 * load-connections.ts, load-calls.ts, load-prepare.ts and load-loops.ts.
 */
import { errorMessage, send, type ToLoad } from './common.js';
import { callFor } from './load-calls.js';
import { LoadConnections } from './load-connections.js';
import { closedLoop, MeasurementWindow, openLoop } from './load-loops.js';
import { prepare } from './load-prepare.js';

let connections: LoadConnections | undefined;
const window = new MeasurementWindow();

function connected(): LoadConnections {
  if (!connections) throw new Error('not connected');
  return connections;
}

if (process.send) {
  process.on('message', (message: ToLoad) => {
    const handle = async () => {
      switch (message.type) {
        case 'connect':
          connections = new LoadConnections(message.target, message.connections, message.generator, message.totalConnections);
          send({ type: 'connected' });
          return;
        case 'prepare': {
          const detail = await prepare(connected(), message.call, message.inflight);
          send({ type: 'prepared', ...(detail ? { detail } : {}) });
          return;
        }
        case 'run': {
          const conns = connected().conns;
          const call = callFor(message.plan.call, window);
          window.reset(message.plan);
          const result = message.plan.mode === 'open' ? await openLoop(message.plan, conns, call, window) : await closedLoop(message.plan, conns, call, window);
          send({ type: 'result', result });
          return;
        }
        case 'close':
          await connections?.close();
          process.exit(0);
      }
    };
    handle().catch((err: unknown) => send({ type: 'failed', message: errorMessage(err) }));
  });
  process.once('disconnect', () => process.exit(0));
}
