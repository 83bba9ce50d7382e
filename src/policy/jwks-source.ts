/**
 * A JWKS from a file (`subject_issuers[].jwks_file`): read, bounded, checked to be a key set of
 * public keys, made into a key lookup for jwtVerify. Apart from subject-tokens.ts because it is
 * all file handling and none of the token rules.
 */
import { open } from 'node:fs/promises';
import { createLocalJWKSet, type JWTVerifyGetKey } from 'jose';

/** The key lookup of one JWKS. */
export type KeySet = JWTVerifyGetKey;

/** A JWKS file that cannot be used; the message names the path and why. */
export class JwksFileError extends Error {
  override readonly name = 'JwksFileError';
  constructor(
    readonly path: string,
    detail: string,
  ) {
    super(`the JWKS file ${path} ${detail}`);
  }
}

/** Far above any IdP's JWKS (a few keys); a larger file is a wrong path, not a key set. */
export const MAX_JWKS_FILE_BYTES = 1 << 20;

/** Reads `path` once; throws JwksFileError when it cannot be read, is too large or is not a JWKS. */
export async function readJwksFile(path: string): Promise<KeySet> {
  const text = await readBounded(path);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new JwksFileError(path, `is not JSON: ${(err as Error).message}`);
  }
  const keys = (json as { keys?: unknown } | null)?.keys;
  if (typeof json !== 'object' || json === null || Array.isArray(json) || !Array.isArray(keys)) {
    throw new JwksFileError(path, 'is not a JWKS (a JSON object with a "keys" list)');
  }
  // A private key in a file of public keys is a mistake worth stopping at: it would be a secret
  // left readable where only public material belongs. jose would only refuse it at first use.
  const privateAt = keys.findIndex((k) => typeof k === 'object' && k !== null && ('d' in k || 'k' in k));
  if (privateAt !== -1) throw new JwksFileError(path, `holds secret key material (keys[${privateAt}]); publish public keys only`);
  try {
    return createLocalJWKSet(json as Parameters<typeof createLocalJWKSet>[0]);
  } catch (err) {
    throw new JwksFileError(path, `is not a valid JWKS: ${(err as Error).message}`);
  }
}

async function readBounded(path: string): Promise<string> {
  let handle;
  try {
    handle = await open(path, 'r');
  } catch (err) {
    throw new JwksFileError(path, `cannot be read: ${(err as Error).message}`);
  }
  try {
    // Read one byte past the bound to tell "exactly the bound" from "more".
    const buffer = Buffer.alloc(MAX_JWKS_FILE_BYTES + 1);
    let size = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, size, buffer.length - size, size);
      if (bytesRead === 0) break;
      size += bytesRead;
      if (size > MAX_JWKS_FILE_BYTES) throw new JwksFileError(path, `is more than ${MAX_JWKS_FILE_BYTES} bytes`);
    }
    return buffer.toString('utf8', 0, size);
  } catch (err) {
    if (err instanceof JwksFileError) throw err;
    throw new JwksFileError(path, `cannot be read: ${(err as Error).message}`);
  } finally {
    await handle.close();
  }
}
