/**
 * connectionProblem() over the text grpc-js and the broker really produce, one row per kind: each
 * line names the address, what is wrong and what to do. The end-to-end cases (refused, wrong
 * bundle, key mismatch, DNS, plain HTTP) run the real CLI in cli-errors.test.ts; this pins every
 * branch, including those hard to provoke on one machine, against grpc-js's wording.
 */
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { connectionProblem, type ConnectionProblemKind } from '../../src/client/connect-errors.js';

const AT = 'broker.example:8443';
const CONTEXT = {
  address: AT,
  trustSource: 'the trust bundle /etc/tb/bundle.pem',
  advice: { address: 'check --broker', brokerId: 'check --broker-id', bundle: 'pass it with --bundle', timeout: 'raise --timeout', svid: 'check --svid-cert' },
};
const noConnection = (last: string) => `No connection established. Last error: ${last}. Resolution note: `;

const CASES: [string, grpc.status, string, ConnectionProblemKind, string][] = [
  [
    'refused',
    grpc.status.UNAVAILABLE,
    noConnection('Error: connect ECONNREFUSED 10.0.0.1:8443'),
    'refused',
    `cannot reach the broker at ${AT}: connection refused (is task-broker serve running and listening there? check --broker)`,
  ],
  [
    'DNS (resolver)',
    grpc.status.UNAVAILABLE,
    'Name resolution failed for target dns:broker.example:8443',
    'dns',
    `cannot reach the broker at ${AT}: the host name broker.example does not resolve (DNS lookup failed): check --broker`,
  ],
  [
    'DNS (getaddrinfo)',
    grpc.status.UNAVAILABLE,
    noConnection('Error: getaddrinfo ENOTFOUND broker.example'),
    'dns',
    `cannot reach the broker at ${AT}: the host name does not resolve (getaddrinfo ENOTFOUND broker.example): check --broker`,
  ],
  [
    'unreachable',
    grpc.status.UNAVAILABLE,
    noConnection('Error: connect EHOSTUNREACH 10.0.0.1:8443'),
    'unreachable',
    `cannot reach the broker at ${AT}: no route to the host (EHOSTUNREACH) (is the address right, and the network or firewall open to it? check --broker)`,
  ],
  [
    'deadline, connected',
    grpc.status.DEADLINE_EXCEEDED,
    'Deadline exceeded after 5.002s,remote_addr=10.0.0.1:8443',
    'timeout',
    `the broker at ${AT} did not answer within the deadline (5.002s): it may be overloaded or waiting on its database (raise --timeout, or look at its log)`,
  ],
  [
    'deadline, never connected',
    grpc.status.DEADLINE_EXCEEDED,
    'Deadline exceeded after 5.001s,LB pick: 0.001s',
    'timeout',
    `no connection to the broker at ${AT} within the deadline (5.001s): nothing completed a TLS handshake there (is it the broker's gRPC listener, and reachable from here? check --broker; raise --timeout on a slow network)`,
  ],
  [
    'wrong bundle',
    grpc.status.UNAVAILABLE,
    noConnection('Error: unable to verify the first certificate'),
    'untrusted-broker',
    `the broker at ${AT} presented a certificate that does not chain to the trust bundle /etc/tb/bundle.pem (unable to verify the first certificate): pass it with --bundle`,
  ],
  [
    'broker certificate expired',
    grpc.status.UNAVAILABLE,
    noConnection('Error: certificate has expired'),
    'broker-certificate',
    `the broker at ${AT} presented a certificate that has expired (certificate has expired): its SVID must be renewed, or this machine's clock is wrong`,
  ],
  [
    'broker certificate not an X509-SVID',
    grpc.status.UNAVAILABLE,
    noConnection('Error: x509svid: leaf certificate must have exactly one URI SAN'),
    'broker-certificate',
    `the broker at ${AT} presented a certificate that is not a valid X509-SVID against the trust bundle /etc/tb/bundle.pem (x509svid: leaf certificate must have exactly one URI SAN): pass it with --bundle, and check --broker`,
  ],
  [
    'another broker',
    grpc.status.UNAVAILABLE,
    noConnection('Error: broker presented spiffe://example.org/other, expected spiffe://example.org/ns/task-broker/sa/task-broker'),
    'wrong-broker',
    `the broker at ${AT} presented spiffe://example.org/other, expected spiffe://example.org/ns/task-broker/sa/task-broker: check --broker-id (or check --broker, if this is not the broker you meant)`,
  ],
  [
    'plain HTTP port',
    grpc.status.UNAVAILABLE,
    noConnection('Error: 80C8:error:0A00010B:SSL routines:ssl3_get_record:wrong version number:../deps/openssl/openssl/ssl/record/ssl3_record.c:354:'),
    'not-tls',
    `${AT} does not answer with TLS (wrong version number): it is not the broker's gRPC (mTLS) listener; is it the HTTP port? check --broker`,
  ],
  [
    'our certificate refused by a TLS alert',
    grpc.status.UNAVAILABLE,
    noConnection('Error: 80C8:error:0A000418:SSL routines:ssl3_read_bytes:tlsv1 alert unknown ca:../ssl/record/rec_layer_s3.c:1605:SSL alert number 48'),
    'svid-refused',
    `the broker at ${AT} refused our certificate in the TLS handshake (alert unknown ca): check --svid-cert`,
  ],
  [
    'our SVID refused by the broker',
    grpc.status.UNAUTHENTICATED,
    'peer is not a valid X509-SVID: no trust bundle for trust domain "c.test"',
    'svid-refused',
    `the broker at ${AT} did not accept our SVID (no trust bundle for trust domain "c.test"): check --svid-cert`,
  ],
  [
    'closed during the handshake',
    grpc.status.UNAVAILABLE,
    noConnection('Error: Client network socket disconnected before secure TLS connection was established'),
    'handshake-closed',
    `the broker at ${AT} closed the connection during the TLS handshake (Client network socket disconnected before secure TLS connection was established): it may not accept our SVID (check --svid-cert), or this is not the broker's gRPC listener (check --broker)`,
  ],
  [
    'anything else before a connection',
    grpc.status.UNAVAILABLE,
    noConnection('Error: something new'),
    'no-connection',
    `cannot reach the broker at ${AT}: something new`,
  ],
];

describe('connectionProblem', () => {
  it.each(CASES)('%s', (_name, code, details, kind, text) => {
    expect(connectionProblem(code, details, CONTEXT)).toEqual({ kind, text });
  });

  it('leaves alone what the broker itself answered', () => {
    expect(connectionProblem(grpc.status.NOT_FOUND, 'task not found', CONTEXT)).toBeUndefined();
    expect(connectionProblem(grpc.status.UNAVAILABLE, 'database unavailable; retry', CONTEXT)).toBeUndefined();
    expect(connectionProblem(grpc.status.UNAUTHENTICATED, 'something else', CONTEXT)).toBeUndefined();
    expect(connectionProblem(grpc.status.DEADLINE_EXCEEDED, 'cancelled', CONTEXT)).toBeUndefined();
  });
});
