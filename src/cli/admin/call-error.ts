/**
 * The stderr line of an admin command whose call failed: `<STATUS>: <text>`, one line. A call
 * that never reached the broker (refused, DNS, deadline, a broker certificate that does not
 * chain to --bundle, another broker than --broker-id) or whose SVID the broker refused says
 * which address, what is wrong and which flag to change; the broker's own answers are printed as
 * it gave them.
 */
import * as grpc from '@grpc/grpc-js';
import { connectionProblem } from '../../client/connect-errors.js';

/** What the runner knows of the connection. */
export interface AdminConnectionFacts {
  address: string;
  /** Where the broker's certificate is verified against, e.g. "the trust bundle /x/bundle.pem". */
  trustSource: string;
  /** How to give a bundle with the broker's CA. */
  bundleAdvice: string;
  /** How to present an SVID the broker accepts. */
  svidAdvice: string;
}

export function adminCallErrorLine(err: grpc.ServiceError, facts: AdminConnectionFacts): string {
  const status = grpc.status[err.code] ?? `STATUS ${String(err.code)}`;
  const details = err.details || err.message;
  const problem = connectionProblem(err.code, details, {
    address: facts.address,
    trustSource: facts.trustSource,
    advice: {
      address: 'check --broker',
      brokerId: 'check --broker-id',
      bundle: facts.bundleAdvice,
      timeout: 'raise --timeout',
      svid: facts.svidAdvice,
    },
  });
  // The line stays one line whatever grpc-js put in the details.
  return `${status}: ${(problem?.text ?? details).replace(/\s*\n\s*/g, ' ').trim()}`;
}
