/**
 * Channel credentials for workloads and resource servers talking to the broker over mTLS.
 *
 * The client presents its X509-SVID and authenticates the broker by SPIFFE ID, not host name
 * (broker-identity.ts). These are fixed PEM strings, never reloaded; for an SVID that rotates
 * under open clients use x509SourceCredentials (source-credentials.ts).
 */
import * as grpc from '@grpc/grpc-js';
import { bundleRootsPem, parseX509Bundle, TrustBundleSet, type X509Bundle } from '../spiffe/bundle.js';
import { CertificateParseError, parsePemCertificates } from '../spiffe/certificate.js';
import { SpiffeId } from '../spiffe/id.js';
import { checkKeyPair, svidFilesMessage, SvidKeyPairError } from '../spiffe/key-pair.js';
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
  /**
   * Where the PEM came from (file paths, and the flags they were given with), to name them when
   * they cannot be used: e.g. a key that does not match the certificate.
   */
  files?: SvidCredentialFiles;
}

export interface SvidCredentialFiles {
  cert: string;
  key: string;
  bundle?: string;
  certOption?: string;
  keyOption?: string;
  bundleOption?: string;
}

/** The SVID's leaf, checked to be a certificate whose private key is `keyPem`; throws one line saying what is wrong. */
function checkSvidPem(options: SvidCredentialsOptions): void {
  const files = options.files;
  try {
    const [leaf] = parsePemCertificates(options.certChainPem);
    if (leaf) checkKeyPair(leaf, options.keyPem, 'the SVID certificate and key do not form a usable pair: ');
  } catch (err) {
    const problem = files && svidFilesMessage(err, files, files);
    if (problem) throw new Error(problem, { cause: err });
    // Without file names, a chain our parser refuses is left to TLS to judge, as before.
    if (err instanceof CertificateParseError) return;
    if (err instanceof SvidKeyPairError && err.failure === 'mismatch') {
      throw new Error('the SVID key does not match the SVID certificate (its public key differs): give the private key that was issued with this certificate', {
        cause: err,
      });
    }
    throw err;
  }
}

export function svidChannelCredentials(options: SvidCredentialsOptions): grpc.ChannelCredentials {
  const expected = options.serverId ? SpiffeId.parse(options.serverId) : undefined;
  const trustDomain = options.trustDomain ?? expected?.trustDomain;
  if (!trustDomain) throw new Error('svidChannelCredentials: give serverId or trustDomain');
  checkSvidPem(options);
  let bundle: X509Bundle;
  try {
    bundle = parseX509Bundle(trustDomain, options.bundle);
  } catch (err) {
    const file = options.files?.bundle;
    if (!file) throw err;
    const option = options.files?.bundleOption;
    throw new Error(
      `trust bundle ${file} cannot be used (${(err as Error).message}): ${option ? `give ${option}` : 'give'} the bundle of the broker's trust domain ${trustDomain} (PEM certificates or SPIFFE bundle JSON)`,
      { cause: err },
    );
  }
  const bundles = new TrustBundleSet([bundle]);
  const rootsPem = bundleRootsPem(bundle);
  try {
    return grpc.credentials.createSsl(Buffer.from(rootsPem), Buffer.from(options.keyPem), Buffer.from(options.certChainPem), {
      checkServerIdentity: brokerIdentityCheck(bundles, trustDomain, expected),
    });
  } catch (err) {
    const files = options.files;
    if (!files) throw err;
    throw new Error(
      `cannot use the SVID ${files.cert} with the key ${files.key}${files.bundle ? ` and the bundle ${files.bundle}` : ''}: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
}

/** Channel options that keep Node from sending an IP address as TLS SNI (RFC 6066 forbids it). */
export function svidChannelOptions(serverName = 'task-broker'): grpc.ChannelOptions {
  return { 'grpc.ssl_target_name_override': serverName, 'grpc.default_authority': serverName };
}
