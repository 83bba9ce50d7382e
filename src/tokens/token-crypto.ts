/**
 * The two token algorithms on node:crypto: ES256 (P-256, signatures as r || s, never DER) and
 * EdDSA (Ed25519). A key is checked once to fit its algorithm (and a WebCrypto CryptoKey turned
 * into a KeyObject once), then remembered by identity, since the same few keys sign and verify
 * every token.
 *
 * Apart from task-token.ts, which is the token's format and claim rules: this is the one place
 * that knows what each algorithm needs of a key and of a signature.
 */
import { KeyObject, sign, verify } from 'node:crypto';
import type { CryptoKey } from 'jose';
import type { TokenAlg } from './token-alg.js';

/** ES256 signatures are r || s, 32 bytes each (RFC 7518 3.4), never DER; Ed25519 signatures are 64 bytes (RFC 8032). */
const SIGNATURE_BYTES: Record<TokenAlg, number> = { ES256: 64, EdDSA: 64 };

/** The signature of `data` with `key` (a private key that fits `alg`, from nodeKey). */
export function signatureOf(alg: TokenAlg, key: KeyObject, data: Buffer): Buffer {
  return alg === 'ES256' ? sign('sha256', data, { key, dsaEncoding: 'ieee-p1363' }) : sign(null, data, key);
}

/** Whether `signature` is `alg`'s signature of `data` by `key`; false for anything malformed, never a throw. */
export function signatureValid(alg: TokenAlg, key: KeyObject, data: Buffer, signature: Buffer): boolean {
  // node:crypto would accept a DER-encoded ECDSA signature only with dsaEncoding 'der'; the length check makes the refusal explicit.
  if (signature.length !== SIGNATURE_BYTES[alg]) return false;
  try {
    return alg === 'ES256' ? verify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, signature) : verify(null, data, key, signature);
  } catch {
    return false;
  }
}

interface PreparedKey {
  alg: TokenAlg;
  type: 'private' | 'public';
  keyObject: KeyObject;
}

/** Keys (WebCrypto CryptoKeys converted once) already checked to fit their algorithm, by the key given. */
const preparedKeys = new WeakMap<CryptoKey | KeyObject, PreparedKey>();

/** The KeyObject for `key`, which must be a `type` key for `alg`; throws otherwise (a bug of ours, not of a token). */
export function nodeKey(key: CryptoKey | KeyObject, alg: TokenAlg, type: 'private' | 'public'): KeyObject {
  const prepared = preparedKeys.get(key);
  if (prepared && prepared.alg === alg && prepared.type === type) return prepared.keyObject;
  const keyObject = key instanceof KeyObject ? key : KeyObject.from(key);
  const fits =
    keyObject.type === type &&
    (alg === 'ES256'
      ? keyObject.asymmetricKeyType === 'ec' && keyObject.asymmetricKeyDetails?.namedCurve === 'prime256v1'
      : keyObject.asymmetricKeyType === 'ed25519');
  if (!fits) {
    const actual =
      keyObject.type === 'secret'
        ? 'secret'
        : `${keyObject.type} ${keyObject.asymmetricKeyType}${keyObject.asymmetricKeyDetails?.namedCurve ? ` ${keyObject.asymmetricKeyDetails.namedCurve}` : ''}`;
    throw new TypeError(
      `task token ${type === 'private' ? 'signing' : 'verification'} key for ${alg} must be a ${type} ${alg === 'ES256' ? 'P-256' : 'Ed25519'} key, got a ${actual} key`,
    );
  }
  preparedKeys.set(key, { alg, type, keyObject });
  return keyObject;
}
