/**
 * The key-encryption key (KEK) that protects signing keys at rest. Signing keys live in the
 * database so every replica can use them; the KEK lives outside it (a file or an environment
 * value), so a database dump alone does not yield a key that can mint tokens.
 */
import { createCipheriv, createDecipheriv, createHash, createSecretKey, randomBytes, type KeyObject } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';
import { inspect } from 'node:util';

const KEY_BYTES = 32;
const IV_BYTES = 12;
const TAG_BYTES = 16;
const CIPHER = 'aes-256-gcm';

/** Standard or URL-safe base64, optional padding. Buffer.from ignores stray characters, so check first. */
const BASE64 = /^[A-Za-z0-9+/_-]+={0,2}$/;

export class KeyEncryptionKey {
  /** First 16 hex characters of SHA-256 of the key: recorded with each row it encrypts. */
  readonly id: string;
  readonly #key: KeyObject;

  private constructor(bytes: Buffer) {
    this.id = createHash('sha256').update(bytes).digest('hex').slice(0, 16);
    this.#key = createSecretKey(bytes);
  }

  static fromBase64(text: string): KeyEncryptionKey {
    const trimmed = text.trim();
    if (!BASE64.test(trimmed)) {
      throw new Error('key-encryption key is not valid base64');
    }
    const bytes = Buffer.from(trimmed, 'base64');
    try {
      if (bytes.length !== KEY_BYTES) {
        throw new Error(`key-encryption key must be ${KEY_BYTES} bytes (AES-256) after base64 decoding, got ${bytes.length}`);
      }
      return new KeyEncryptionKey(bytes);
    } finally {
      bytes.fill(0);
    }
  }

  /** Reads a base64 KEK from a file that only its owner may read. */
  static async fromFile(path: string): Promise<KeyEncryptionKey> {
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (err) {
      throw new Error(`cannot open key-encryption key file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    try {
      // fstat on the opened handle, so the mode checked is the mode of the file actually read.
      const { mode } = await handle.stat();
      if ((mode & 0o077) !== 0) {
        throw new Error(
          `key-encryption key file ${path} is accessible by group or others (mode ${(mode & 0o777).toString(8).padStart(4, '0')}); restrict it with chmod 600`,
        );
      }
      const text = await handle.readFile('utf8');
      try {
        return KeyEncryptionKey.fromBase64(text);
      } catch (err) {
        throw new Error(`key-encryption key file ${path}: ${(err as Error).message}`);
      }
    } finally {
      await handle.close();
    }
  }

  /** AES-256-GCM; returns IV || ciphertext || tag. `aad` binds the blob to its row (the kid). */
  encrypt(plaintext: Uint8Array, aad: string): Buffer {
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv(CIPHER, this.#key, iv, { authTagLength: TAG_BYTES });
    cipher.setAAD(Buffer.from(aad, 'utf8'));
    const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    return Buffer.concat([iv, body, cipher.getAuthTag()]);
  }

  decrypt(blob: Uint8Array, aad: string): Buffer {
    const bytes = Buffer.from(blob.buffer, blob.byteOffset, blob.byteLength);
    if (bytes.length < IV_BYTES + TAG_BYTES) {
      throw new Error(`cannot decrypt with key-encryption key ${this.id}: ciphertext is too short (${bytes.length} bytes)`);
    }
    const iv = bytes.subarray(0, IV_BYTES);
    const tag = bytes.subarray(bytes.length - TAG_BYTES);
    const body = bytes.subarray(IV_BYTES, bytes.length - TAG_BYTES);
    const decipher = createDecipheriv(CIPHER, this.#key, iv, { authTagLength: TAG_BYTES });
    decipher.setAAD(Buffer.from(aad, 'utf8'));
    decipher.setAuthTag(tag);
    try {
      return Buffer.concat([decipher.update(body), decipher.final()]);
    } catch {
      throw new Error(`cannot decrypt with key-encryption key ${this.id}: authentication failed (wrong key-encryption key, or the stored data was altered)`);
    }
  }

  toJSON(): { id: string } {
    return { id: this.id };
  }

  [inspect.custom](): string {
    return `KeyEncryptionKey { id: '${this.id}' }`;
  }
}

/** A fresh random KEK, base64. */
export function generateKekBase64(): string {
  return randomBytes(KEY_BYTES).toString('base64');
}

export async function loadKek(options: { file?: string; base64?: string }): Promise<KeyEncryptionKey> {
  const { file, base64 } = options;
  if (file && !base64) return await KeyEncryptionKey.fromFile(file);
  if (base64 && !file) return KeyEncryptionKey.fromBase64(base64);
  throw new Error('exactly one of a key-encryption key file or a base64 key-encryption key must be given');
}
