import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateKekBase64, KeyEncryptionKey, loadKek } from '../../src/tokens/kek.js';

describe('KeyEncryptionKey', () => {
  const bytes = randomBytes(32);
  const kek = KeyEncryptionKey.fromBase64(bytes.toString('base64'));

  it('round-trips with AES-256-GCM: IV || ciphertext || tag, fresh IV each time', () => {
    const plaintext = Buffer.from('a PKCS#8 private key, say');
    const a = kek.encrypt(plaintext, 'kid-1');
    const b = kek.encrypt(plaintext, 'kid-1');
    expect(a.length).toBe(12 + plaintext.length + 16);
    expect(a.subarray(0, 12).equals(b.subarray(0, 12))).toBe(false);
    expect(a.includes(plaintext)).toBe(false);
    expect(kek.decrypt(a, 'kid-1').equals(plaintext)).toBe(true);
    expect(kek.decrypt(new Uint8Array(b), 'kid-1').equals(plaintext)).toBe(true);
  });

  it('has an id of 16 hex chars from SHA-256 of the key, the same for base64 and base64url input', () => {
    expect(kek.id).toBe(createHash('sha256').update(bytes).digest('hex').slice(0, 16));
    expect(KeyEncryptionKey.fromBase64(`  ${bytes.toString('base64url')}\n`).id).toBe(kek.id);
  });

  it('fails clearly, naming the KEK id, with the wrong KEK', () => {
    const other = KeyEncryptionKey.fromBase64(generateKekBase64());
    const blob = kek.encrypt(Buffer.from('secret'), 'kid-1');
    expect(() => other.decrypt(blob, 'kid-1')).toThrow(
      new RegExp(`key-encryption key ${other.id}: authentication failed \\(wrong key-encryption key, or the stored data was altered\\)`),
    );
  });

  it('fails clearly on tampered ciphertext, IV, tag, or another row (AAD)', () => {
    const blob = kek.encrypt(Buffer.from('secret material'), 'kid-1');
    for (const index of [0, 12, blob.length - 1]) {
      const tampered = Buffer.from(blob);
      tampered[index]! ^= 0x01;
      expect(() => kek.decrypt(tampered, 'kid-1')).toThrow(/authentication failed/);
    }
    expect(() => kek.decrypt(blob, 'kid-2')).toThrow(/authentication failed/);
    expect(() => kek.decrypt(blob.subarray(0, 20), 'kid-1')).toThrow(/too short/);
  });

  it('refuses keys that are not exactly 32 bytes, without echoing the input', () => {
    for (const length of [0, 16, 31, 33, 64]) {
      const text = randomBytes(length).toString('base64');
      if (length === 0) {
        expect(() => KeyEncryptionKey.fromBase64(text)).toThrow(/not valid base64/);
        continue;
      }
      let message = '';
      try {
        KeyEncryptionKey.fromBase64(text);
      } catch (err) {
        message = (err as Error).message;
      }
      expect(message).toBe(`key-encryption key must be 32 bytes (AES-256) after base64 decoding, got ${length}`);
      expect(message).not.toContain(text);
    }
    expect(() => KeyEncryptionKey.fromBase64('not base64 at all!')).toThrow(/not valid base64/);
  });

  it('does not reveal the key through JSON or inspect', () => {
    expect(JSON.stringify({ kek })).toBe(`{"kek":{"id":"${kek.id}"}}`);
    const shown = inspect(kek, { showHidden: true, depth: 5 });
    expect(shown).toBe(`KeyEncryptionKey { id: '${kek.id}' }`);
  });

  it('generateKekBase64 gives 32 random bytes', () => {
    const a = generateKekBase64();
    expect(Buffer.from(a, 'base64')).toHaveLength(32);
    expect(generateKekBase64()).not.toBe(a);
    expect(KeyEncryptionKey.fromBase64(a).id).toMatch(/^[0-9a-f]{16}$/);
  });
});

describe('KEK files and loadKek', () => {
  let dir: string;
  const text = generateKekBase64();
  const expectedId = KeyEncryptionKey.fromBase64(text).id;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tb-kek-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function kekFile(name: string, content: string, mode: number): Promise<string> {
    const path = join(dir, name);
    await writeFile(path, content, { mode });
    await chmod(path, mode);
    return path;
  }

  it('reads a base64 KEK from an owner-only file', async () => {
    const path = await kekFile('ok.key', `${text}\n`, 0o600);
    expect((await KeyEncryptionKey.fromFile(path)).id).toBe(expectedId);
    expect((await loadKek({ file: path })).id).toBe(expectedId);
  });

  it('refuses a file readable by group or others', async () => {
    for (const [name, mode] of [
      ['group.key', 0o640],
      ['other.key', 0o604],
      ['write.key', 0o620],
    ] as const) {
      const path = await kekFile(name, text, mode);
      await expect(KeyEncryptionKey.fromFile(path)).rejects.toThrow(
        `key-encryption key file ${path} is accessible by group or others (mode 0${mode.toString(8)}); restrict it with chmod 600`,
      );
    }
  });

  it('names the file when it is missing or holds a bad key, without echoing the content', async () => {
    await expect(KeyEncryptionKey.fromFile(join(dir, 'absent.key'))).rejects.toThrow(/cannot open key-encryption key file .*absent\.key: ENOENT/);
    const short = randomBytes(16).toString('base64');
    const path = await kekFile('short.key', short, 0o600);
    const error = await KeyEncryptionKey.fromFile(path).catch((err: unknown) => err as Error);
    expect(error).toBeInstanceOf(Error);
    expect((error as Error).message).toBe(`key-encryption key file ${path}: key-encryption key must be 32 bytes (AES-256) after base64 decoding, got 16`);
  });

  it('loadKek takes exactly one source', async () => {
    expect((await loadKek({ base64: text })).id).toBe(expectedId);
    await expect(loadKek({})).rejects.toThrow(/exactly one of/);
    await expect(loadKek({ base64: text, file: join(dir, 'ok.key') })).rejects.toThrow(/exactly one of/);
    await expect(loadKek({ base64: '' })).rejects.toThrow(/exactly one of/);
  });
});
