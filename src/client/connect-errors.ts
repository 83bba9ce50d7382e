/**
 * What a failed call means when it never reached the broker, in one line a person can act on.
 *
 * grpc-js reports a refused connection, a DNS failure, a certificate that does not chain to the
 * trust bundle and a broker that is not the expected one all as UNAVAILABLE with text such as
 * `No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:1. Resolution
 * note: `. connectionProblem() reads that text (and the broker's own refusal of our SVID) and
 * says which address, what is wrong and what to do. The status code is never changed: only the
 * words. Text it does not recognise gives undefined, and the caller keeps the original.
 */
import * as grpc from '@grpc/grpc-js';

/** Advice in the words of the caller's configuration: flags for the CLI, option names for the SDK. */
export interface ConnectionAdvice {
  /** How to fix the address, e.g. "check --broker". */
  address: string;
  /** How to fix the expected broker identity, e.g. "check --broker-id". */
  brokerId: string;
  /** How to fix the trust bundle, e.g. "pass the bundle of the broker's trust domain with --bundle". */
  bundle: string;
  /** How to allow more time, e.g. "raise --timeout". */
  timeout: string;
  /** How to fix the SVID the client presents, e.g. "check --svid-cert". */
  svid: string;
}

/** The SDK's words (TaskBrokerClient options). */
const SDK_ADVICE: ConnectionAdvice = {
  address: 'check the address',
  brokerId: 'check serverId',
  bundle: "give the client the trust bundle of the broker's trust domain",
  timeout: 'raise deadlineMs',
  svid: 'present an SVID from a trust domain the broker trusts (one it has a bundle for)',
};

export interface ConnectionContext {
  /** host:port the client dialled. */
  address: string;
  /** What the broker's certificate is verified against, e.g. "the trust bundle /etc/tb/bundle.pem". */
  trustSource?: string;
  advice?: Partial<ConnectionAdvice>;
}

export type ConnectionProblemKind =
  | 'refused'
  | 'dns'
  | 'unreachable'
  | 'timeout'
  | 'untrusted-broker'
  | 'broker-certificate'
  | 'wrong-broker'
  | 'not-tls'
  | 'svid-refused'
  | 'handshake-closed'
  | 'no-connection';

export interface ConnectionProblem {
  kind: ConnectionProblemKind;
  /** One line: the address, what is wrong, what to do. */
  text: string;
}

/** The "Last error" grpc-js reports for a channel that could not connect, without its decoration. */
function lastErrorOf(details: string): string | undefined {
  const match = /^No connection established\. Last error: ([\s\S]*?)(?:\.?\s*Resolution note:[\s\S]*)?$/.exec(details);
  if (!match) return undefined;
  return (
    (match[1] ?? '')
      .replace(/^Error: /, '')
      // Node 26's advice for the system's roots: the broker is verified against its bundle, never those.
      .replace(/; if the root CA is installed locally, try running Node\.js with --use-system-ca$/, '')
      .trim()
  );
}

/** An OpenSSL error string ("8C...:error:0A00010B:SSL routines:ssl3_get_record:wrong version number:../ssl.c:350:") reduced to its reason. */
function opensslReason(text: string): string {
  const match = /:error:[0-9A-F]+:[^:]*:[^:]*:([^:]+)/.exec(text);
  return match?.[1]?.trim() ?? text;
}

const SYSTEM_ERRORS: Record<string, string> = {
  ETIMEDOUT: 'connecting timed out',
  EHOSTUNREACH: 'no route to the host',
  ENETUNREACH: 'the network is unreachable',
  EADDRNOTAVAIL: 'the address is not available',
};

/**
 * The problem behind a failed call when it is about reaching or trusting the broker (or the
 * broker not accepting our SVID); undefined for anything the broker itself answered otherwise.
 */
export function connectionProblem(code: grpc.status, details: string, context: ConnectionContext): ConnectionProblem | undefined {
  const advice = { ...SDK_ADVICE, ...context.advice };
  const at = context.address;
  const trust = context.trustSource ?? "the client's trust bundle for the broker's trust domain";

  if (code === grpc.status.UNAUTHENTICATED) {
    const refused = /^peer is not a valid X509-SVID: ([\s\S]*)$/.exec(details);
    if (!refused) return undefined;
    return { kind: 'svid-refused', text: `the broker at ${at} did not accept our SVID (${refused[1] ?? ''}): ${advice.svid}` };
  }

  if (code === grpc.status.DEADLINE_EXCEEDED) {
    const after = /Deadline exceeded after ([\d.]+s)/.exec(details)?.[1];
    if (after === undefined) return undefined;
    if (/remote_addr=/.test(details)) {
      return {
        kind: 'timeout',
        text: `the broker at ${at} did not answer within the deadline (${after}): it may be overloaded or waiting on its database (${advice.timeout}, or look at its log)`,
      };
    }
    return {
      kind: 'timeout',
      text: `no connection to the broker at ${at} within the deadline (${after}): nothing completed a TLS handshake there (is it the broker's gRPC listener, and reachable from here? ${advice.address}; ${advice.timeout} on a slow network)`,
    };
  }

  if (code !== grpc.status.UNAVAILABLE) return undefined;

  const dns = /^Name resolution failed for target (?:dns:)?(\S+)/.exec(details);
  if (dns) {
    const host = (dns[1] ?? at).replace(/:\d+$/, '');
    return { kind: 'dns', text: `cannot reach the broker at ${at}: the host name ${host} does not resolve (DNS lookup failed): ${advice.address}` };
  }
  const last = lastErrorOf(details);
  if (last === undefined) return undefined;

  if (/ECONNREFUSED/.test(last)) {
    return {
      kind: 'refused',
      text: `cannot reach the broker at ${at}: connection refused (is task-broker serve running and listening there? ${advice.address})`,
    };
  }
  if (/ENOTFOUND|EAI_AGAIN/.test(last)) {
    return { kind: 'dns', text: `cannot reach the broker at ${at}: the host name does not resolve (${last}): ${advice.address}` };
  }
  const system = /\b(ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|EADDRNOTAVAIL)\b/.exec(last)?.[1];
  if (system) {
    return {
      kind: 'unreachable',
      text: `cannot reach the broker at ${at}: ${SYSTEM_ERRORS[system] ?? system} (${system}) (is the address right, and the network or firewall open to it? ${advice.address})`,
    };
  }
  const presented = /broker presented (\S+), expected ([\s\S]+)$/.exec(last);
  if (presented) {
    return {
      kind: 'wrong-broker',
      text: `the broker at ${at} presented ${presented[1] ?? ''}, expected ${presented[2] ?? ''}: ${advice.brokerId} (or ${advice.address}, if this is not the broker you meant)`,
    };
  }
  if (
    /unable to verify the first certificate|unable to get (?:local )?issuer certificate|self[- ]signed certificate|certificate signature failure/i.test(last)
  ) {
    return {
      kind: 'untrusted-broker',
      text: `the broker at ${at} presented a certificate that does not chain to ${trust} (${last}): ${advice.bundle}`,
    };
  }
  if (/certificate has expired|certificate is not yet valid/i.test(last)) {
    return {
      kind: 'broker-certificate',
      text: `the broker at ${at} presented a certificate that ${/expired/i.test(last) ? 'has expired' : 'is not valid yet'} (${last}): its SVID must be renewed, or this machine's clock is wrong`,
    };
  }
  if (/^x509svid: /.test(last)) {
    return {
      kind: 'broker-certificate',
      text: `the broker at ${at} presented a certificate that is not a valid X509-SVID against ${trust} (${last}): ${advice.bundle}, and ${advice.address}`,
    };
  }
  if (/wrong version number|packet length too long|unknown protocol|http request/i.test(last)) {
    return {
      kind: 'not-tls',
      text: `${at} does not answer with TLS (${opensslReason(last)}): it is not the broker's gRPC (mTLS) listener; is it the HTTP port? ${advice.address}`,
    };
  }
  const alert =
    /alert (certificate required|bad certificate|unknown ca|certificate unknown|certificate expired|certificate revoked|unsupported certificate|access denied|handshake failure)/i.exec(
      last,
    );
  if (alert) {
    return { kind: 'svid-refused', text: `the broker at ${at} refused our certificate in the TLS handshake (${alert[0]}): ${advice.svid}` };
  }
  if (/socket disconnected before secure TLS connection|ECONNRESET|EPIPE|socket hang up|^Failed to connect/i.test(last)) {
    return {
      kind: 'handshake-closed',
      text: `the broker at ${at} closed the connection during the TLS handshake (${last}): it may not accept our SVID (${advice.svid}), or this is not the broker's gRPC listener (${advice.address})`,
    };
  }
  return { kind: 'no-connection', text: `cannot reach the broker at ${at}: ${last}` };
}
