// WebCrypto type names as globals, as the DOM lib would declare them: @peculiar/x509's types
// refer to them, and Node's implementation (node:crypto webcrypto) is the one used at run time.
import type { webcrypto } from 'node:crypto';

declare global {
  type Crypto = webcrypto.Crypto;
  type CryptoKey = webcrypto.CryptoKey;
  type CryptoKeyPair = webcrypto.CryptoKeyPair;
  type Algorithm = webcrypto.Algorithm;
  type EcKeyGenParams = webcrypto.EcKeyGenParams;
  type EcdsaParams = webcrypto.EcdsaParams;
  type RsaHashedKeyGenParams = webcrypto.RsaHashedKeyGenParams;
  type BufferSource = webcrypto.BufferSource;
}
