/**
 * Whether an X509-SVID's certificate and private key belong together, and what to say when they
 * do not. OpenSSL's own verdict (`error:05800074:x509 certificate routines::key values mismatch`)
 * names neither file nor remedy; the messages here name both, for the broker's SVID files, the
 * admin CLI's and the SDK's.
 */
import { createPrivateKey, type KeyObject } from 'node:crypto';
import { CertificateParseError, type ParsedCertificate } from './certificate.js';

/** What is wrong with a certificate and key pair. */
export type KeyPairFailure = 'key-unreadable' | 'mismatch';

/** An SVID's key that cannot be read, or that is not the certificate's: `failure` says which. */
export class SvidKeyPairError extends Error {
  override readonly name = 'SvidKeyPairError';
  constructor(
    readonly failure: KeyPairFailure,
    message: string,
    /** For 'key-unreadable': what the crypto library said about the key. */
    readonly reason = '',
  ) {
    super(message);
  }
}

/** The files an SVID came from, to name them in messages. */
export interface SvidFiles {
  cert: string;
  key: string;
}

function privateKeyOf(keyPem: string): KeyObject | Error {
  try {
    return createPrivateKey(keyPem);
  } catch (err) {
    return err as Error;
  }
}

/**
 * Throws SvidKeyPairError when `keyPem` is not a private key, or not the private key of `leaf`'s
 * public key. `prefix` starts the message (the caller's context), before what is wrong.
 */
export function checkKeyPair(leaf: ParsedCertificate, keyPem: string, prefix = 'certificate and key do not form a usable pair: '): void {
  const key = privateKeyOf(keyPem);
  if (key instanceof Error) throw new SvidKeyPairError('key-unreadable', `${prefix}the key is not a readable private key (${key.message})`, key.message);
  let matches: boolean;
  try {
    matches = leaf.node.checkPrivateKey(key);
  } catch {
    // A key of another type than the certificate's (RSA key, EC certificate): not its key either.
    matches = false;
  }
  if (!matches) throw new SvidKeyPairError('mismatch', `${prefix}the private key does not match the certificate's public key`);
}

/** The flags the files were given with (e.g. --svid-cert, --svid-key), when there are flags. */
export interface SvidFileOptions {
  certOption?: string;
  keyOption?: string;
}

/**
 * The one line for SVID files that cannot be used because of the key or because the certificate
 * file holds no certificate: which file, what is wrong, what to do. Undefined for other errors.
 */
export function svidFilesMessage(err: unknown, files: SvidFiles, options: SvidFileOptions = {}): string | undefined {
  const give = (option: string | undefined) => (option ? `give ${option}` : 'give');
  if (err instanceof SvidKeyPairError) {
    if (err.failure === 'mismatch') {
      return `SVID key ${files.key} does not match the certificate in ${files.cert} (its public key differs): ${give(options.keyOption)} the private key that was issued with this certificate`;
    }
    return `SVID key ${files.key} is not a readable private key (${err.reason}): ${give(options.keyOption)} the PEM private key (PKCS#8, unencrypted) that was issued with the certificate in ${files.cert}`;
  }
  if (err instanceof CertificateParseError) {
    const swapped = /is (?:[A-Z]+ )?PRIVATE KEY, expected CERTIFICATE/.test(err.message)
      ? ' (it holds a private key: are the certificate and key files swapped?)'
      : '';
    return `SVID certificate ${files.cert} is not a PEM certificate chain (${err.message})${swapped}: ${give(options.certOption)} the X509-SVID certificate, leaf first`;
  }
  return undefined;
}
