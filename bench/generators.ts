/**
 * The load generators (load.js), seen from the orchestrator: forked with IPC, each given its
 * share of the connections and of the calls in flight, and asked to connect, prepare and run.
 */
import { fork, type ChildProcess } from 'node:child_process';
import type { FromLoad, TargetSpec, ToLoad } from './common.js';
import type { Options } from './options.js';
import { cleanups, HERE, stopChild, track, waitForMessage } from './processes.js';
import type { Pki } from './targets.js';

export interface Generator {
  child: ChildProcess;
  pid: number;
  inflight: number;
  connections: number;
  request<T extends FromLoad>(message: ToLoad, accept: T['type']): Promise<T>;
}

export async function startGenerators(options: Options, target: TargetSpec, pki: Pki): Promise<Generator[]> {
  const gens: Generator[] = [];
  for (let g = 0; g < options.generators; g++) {
    const child = track(fork(HERE('./load.js'), [], { execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
    cleanups.push(() => stopChild(child, 'SIGKILL'));
    if (child.pid === undefined) throw new Error('load generator did not start');
    const connections = pki.connections.filter((c) => c.index % options.generators === g);
    // Calls in flight are shared out by connection (each identity gets its even share, within one),
    // and a generator drives the shares of its own connections.
    const total = pki.connections.length;
    const inflight = connections.reduce((sum, c) => sum + Math.floor(options.inflight / total) + (c.index < options.inflight % total ? 1 : 0), 0);
    const gen: Generator = {
      child,
      pid: child.pid,
      inflight,
      connections: connections.length,
      request: <T extends FromLoad>(message: ToLoad, accept: T['type']) => {
        const answer = waitForMessage<FromLoad>(child, `load generator ${g} (${message.type})`, (m) => m.type === accept, 600_000);
        child.send(message);
        return answer as Promise<T>;
      },
    };
    await gen.request({ type: 'connect', target, connections, generator: g, totalConnections: pki.connections.length }, 'connected');
    gens.push(gen);
  }
  return gens;
}

export async function closeGenerators(gens: Generator[]): Promise<void> {
  await Promise.all(gens.map((g) => stopChild(g.child, () => g.child.send({ type: 'close' } satisfies ToLoad), 10_000)));
}
