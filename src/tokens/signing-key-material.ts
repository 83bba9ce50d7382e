/**
 * The key material of one `signing_keys` row: a fresh key pair made into a row (the private key
 * encrypted under the KEK, with the kid as associated data so a ciphertext cannot be moved to
 * another row), and a stored row made into keys again, each part checked on the way: the public
 * JWK against the kid, the decrypted private key against the public key.
 *
 * Apart from keyring.ts, which decides which keys exist and when each is read, so that every
 * byte-level check on key material is in one short file.
 */
import { KeyObject, createPrivateKey, createPublicKey, type JsonWebKey } from 'node:crypto';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, type JWK } from 'jose';
import type { SigningKeyRow } from '../store/schema.js';
import type { KeyEncryptionKey } from './kek.js';
import type { SigningKey, TokenAlg } from './keyring.js';

/** The columns of a new `signing_keys` row that hold the key itself. */
export interface SigningKeyMaterial {
  kid: string;
  alg: TokenAlg;
  public_jwk: string;
  private_key_ciphertext: Buffer;
  kek_id: string;
}

/** A fresh key pair for `alg`; its kid is the JWK thumbprint of its public key. */
export async function generateSigningKey(alg: TokenAlg, kek: KeyEncryptionKey): Promise<SigningKeyMaterial> {
  const pair = await generateKeyPair(alg, { extractable: true });
  const jwk = await exportJWK(pair.publicKey);
  const kid = await calculateJwkThumbprint(jwk, 'sha256');
  const publicJwk = publicMembers(jwk, kid, alg);
  const der = KeyObject.from(pair.privateKey).export({ format: 'der', type: 'pkcs8' });
  try {
    return {
      kid,
      alg,
      public_jwk: JSON.stringify(publicJwk),
      private_key_ciphertext: kek.encrypt(der, kid),
      kek_id: kek.id,
    };
  } finally {
    der.fill(0);
  }
}

/** The public key of a stored row whose alg is `alg`; throws when it is not a valid key or not the one its kid names. */
export async function publicKeyOf(row: SigningKeyRow, alg: TokenAlg): Promise<{ publicJwk: JWK; publicKey: KeyObject }> {
  const stored: unknown = row.public_jwk;
  if (typeof stored !== 'object' || stored === null) throw new Error(`signing key ${row.kid}: public_jwk is not a JSON object`);
  let publicKey: KeyObject;
  try {
    publicKey = createPublicKey({ key: stored as JsonWebKey, format: 'jwk' });
  } catch (err) {
    throw new Error(`signing key ${row.kid}: public_jwk is not a valid public key: ${(err as Error).message}`);
  }
  // Rebuilt from the key itself, so nothing but public members is ever published.
  const jwk = publicKey.export({ format: 'jwk' }) as JWK;
  if ((await calculateJwkThumbprint(jwk, 'sha256')) !== row.kid) {
    throw new Error(`signing key ${row.kid}: kid does not match the thumbprint of its public key`);
  }
  return { publicJwk: publicMembers(jwk, row.kid, alg), publicKey };
}

/** The private key of a stored row, decrypted with `kek` and checked against the row's public key (`publicJwk`). */
export function privateKeyOf(row: SigningKeyRow, alg: TokenAlg, publicJwk: JWK, kek: KeyEncryptionKey): SigningKey {
  if (row.kek_id !== kek.id) {
    throw new Error(`signing key ${row.kid} was encrypted with key-encryption key ${row.kek_id}, but the configured key-encryption key is ${kek.id}`);
  }
  const der = kek.decrypt(row.private_key_ciphertext, row.kid);
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
  } catch (err) {
    throw new Error(`signing key ${row.kid}: decrypted private key is not valid PKCS#8: ${(err as Error).message}`);
  } finally {
    der.fill(0);
  }
  // Signing with a private key that does not match the published public key would mint
  // tokens nobody can verify; refuse the row instead.
  const derived = createPublicKey(privateKey).export({ format: 'jwk' });
  if (derived.x !== publicJwk.x || derived.y !== publicJwk.y) {
    throw new Error(`signing key ${row.kid}: private key does not match its public key`);
  }
  return { kid: row.kid, alg, privateKey, publicJwk: { ...publicJwk } };
}

function publicMembers(jwk: JWK, kid: string, alg: TokenAlg): JWK {
  const out: JWK = { kty: jwk.kty, crv: jwk.crv, x: jwk.x };
  if (jwk.y !== undefined) out.y = jwk.y;
  return { ...out, kid, alg, use: 'sig' };
}
