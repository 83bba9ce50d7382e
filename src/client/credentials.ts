/**
 * Channel credentials for workloads and resource servers talking to the broker over mTLS.
 *
 * The client presents its X509-SVID and authenticates the broker by SPIFFE ID, not host name
 * (broker-identity.ts). These are fixed PEM strings, never reloaded; for an SVID that rotates
 * under open clients use x509SourceCredentials (source-credentials.ts).
 */
import * as grpc from '@grpc/grpc-js';
import { bundleRootsPem, parseX509Bundle, TrustBundleSet } from '../spiffe/bundle.js';
import { SpiffeId } from '../spiffe/id.js';
import { brokerIdentityCheck } from './broker-identity.js';

export interface SvidCredentialsOptions {
  /** The client's SVID: PEM certificate chain, leaf first. */
  certChainPem: string;
  keyPem: string;
  /** PEM (or SPIFFE bundle JSON) of the broker's trust domain. */
  bundle: string;
  /** The broker's SPIFFE ID; when omitted, any ID in the bundle's trust domain is accepted. */
  serverId?: string;
  /** Trust domain of `bundle`; taken from `serverId` when omitted. */
  trustDomain?: string;
}

export function svidChannelCredentials(options: SvidCredentialsOptions): grpc.ChannelCredentials {
  const expected = options.serverId ? SpiffeId.parse(options.serverId) : undefined;
  const trustDomain = options.trustDomain ?? expected?.trustDomain;
  if (!trustDomain) throw new Error('svidChannelCredentials: give serverId or trustDomain');
  const bundle = parseX509Bundle(trustDomain, options.bundle);
  const bundles = new TrustBundleSet([bundle]);
  const rootsPem = bundleRootsPem(bundle);
  return grpc.credentials.createSsl(Buffer.from(rootsPem), Buffer.from(options.keyPem), Buffer.from(options.certChainPem), {
    checkServerIdentity: brokerIdentityCheck(bundles, trustDomain, expected),
  });
}

/** Channel options that keep Node from sending an IP address as TLS SNI (RFC 6066 forbids it). */
export function svidChannelOptions(serverName = 'task-broker'): grpc.ChannelOptions {
  return { 'grpc.ssl_target_name_override': serverName, 'grpc.default_authority': serverName };
}
