/**
 * The RFC 8705 x5t#S256 of the presenter's certificate, whatever form the caller has it in.
 * Thumbprints of certificate objects (X509Certificate, DER buffers) are remembered by object, so
 * a server that keeps the peer certificate of a connection hashes it once.
 */
import { X509Certificate } from 'node:crypto';
import { x5tS256 } from '../tokens/task-token.js';
import type { PresenterCertificate } from './types.js';

const thumbprints = new WeakMap<object, string>();

/** The thumbprint, or a string saying why there is none: undefined input is 'missing'. */
export function presenterThumbprint(presenter: PresenterCertificate | undefined | null): { thumbprint: string } | { problem: string } {
  if (presenter === undefined || presenter === null) return { problem: 'missing' };
  if (typeof presenter === 'string') return pemThumbprint(presenter);
  const known = thumbprints.get(presenter);
  if (known !== undefined) return { thumbprint: known };
  let thumbprint: string;
  if (presenter instanceof X509Certificate) thumbprint = x5tS256(presenter.raw);
  else if (presenter instanceof Uint8Array) {
    if (presenter.length === 0) return { problem: 'missing' };
    thumbprint = x5tS256(presenter);
  } else if (typeof presenter.thumbprint === 'string' && /^[A-Za-z0-9_-]{43}$/.test(presenter.thumbprint)) return { thumbprint: presenter.thumbprint };
  else return { problem: 'the presenter thumbprint is not a base64url SHA-256' };
  thumbprints.set(presenter, thumbprint);
  return { thumbprint };
}

/** PEM: the first certificate (the leaf). PEM strings are values, not objects, so they are parsed each time (keep the X509Certificate instead). */
function pemThumbprint(pem: string): { thumbprint: string } | { problem: string } {
  try {
    return { thumbprint: x5tS256(new X509Certificate(pem).raw) };
  } catch {
    return { problem: 'the presenter certificate is not a PEM certificate' };
  }
}
