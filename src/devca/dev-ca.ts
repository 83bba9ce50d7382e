/**
 * A local trust domain on disk: a CA in DIR/ca.pem + DIR/ca.key and SVIDs minted from it, for
 * the demo, the tests and operators trying the broker without SPIRE. Not for production: the
 * CA key sits in a file.
 */
import 'reflect-metadata';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import * as x509 from '@peculiar/x509';
import { join } from 'node:path';
import { parsePemCertificates } from '../spiffe/certificate.js';
import { parseSpiffeId, parseTrustDomain } from '../spiffe/id.js';
import { checkKeyPair, SvidKeyPairError } from '../spiffe/key-pair.js';
import { chainPem, createRootCa, loadIssuedCertificate, mintX509Svid, privateKeyPem, type IssuedCertificate, type KeyAlgorithm } from './certificates.js';

export interface DevCaFiles {
  readonly dir: string;
  readonly certPath: string;
  readonly keyPath: string;
  readonly trustDomain: string;
}

export interface SvidFiles {
  readonly spiffeId: string;
  readonly certPath: string;
  readonly keyPath: string;
  readonly notAfter: Date;
}

function caPaths(dir: string) {
  return { certPath: join(dir, 'ca.pem'), keyPath: join(dir, 'ca.key') };
}

/** Writes a private key readable by its owner only. */
async function writeSecret(path: string, content: string): Promise<void> {
  await writeFile(path, content, { mode: 0o600 });
  await chmod(path, 0o600);
}

export async function initDevCa(dir: string, trustDomain: string, options: { key?: KeyAlgorithm; force?: boolean } = {}): Promise<DevCaFiles> {
  const td = parseTrustDomain(trustDomain);
  const { certPath, keyPath } = caPaths(dir);
  if (!options.force && (existsSync(certPath) || existsSync(keyPath))) {
    throw new Error(`a CA already exists in ${dir} (use --force to replace it)`);
  }
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const ca = await createRootCa(td, { key: options.key });
  await writeFile(certPath, ca.pem);
  await writeSecret(keyPath, await privateKeyPem(ca.keys));
  return { dir, certPath, keyPath, trustDomain: td };
}

export async function loadDevCa(dir: string): Promise<{ ca: IssuedCertificate; files: DevCaFiles }> {
  const { certPath, keyPath } = caPaths(dir);
  const [certPem, keyPem] = await Promise.all([readFile(certPath, 'utf8'), readFile(keyPath, 'utf8')]).catch((err: Error) => {
    throw new Error(`no dev CA in ${dir} (run 'task-broker dev-ca init' first): ${err.message}`);
  });
  checkDevCaPair(certPem, keyPem, certPath, keyPath);
  const ca = await loadIssuedCertificate(certPem, keyPem);
  const uri = ca.certificate.getExtension(x509.SubjectAlternativeNameExtension)?.names.items.find((n) => n.type === 'url')?.value;
  if (!uri) throw new Error(`dev CA certificate ${certPath} has no spiffe:// URI SAN naming its trust domain`);
  return { ca, files: { dir, certPath, keyPath, trustDomain: parseTrustDomain(uri) } };
}

/** A CA key that is not the CA certificate's would sign SVIDs nothing verifies: refuse it, naming both files. */
function checkDevCaPair(certPem: string, keyPem: string, certPath: string, keyPath: string): void {
  try {
    const [cert] = parsePemCertificates(certPem);
    if (cert) checkKeyPair(cert, keyPem);
  } catch (err) {
    if (!(err instanceof SvidKeyPairError)) return; // loadIssuedCertificate says what else is wrong
    const what = err.failure === 'mismatch' ? 'does not match the certificate in' : `is not a readable private key (${err.reason}) for`;
    throw new Error(
      `dev CA key ${keyPath} ${what} ${certPath}${err.failure === 'mismatch' ? ' (its public key differs)' : ''}: put back the ca.key written with this ca.pem, or make a new CA with 'task-broker dev-ca init --force'`,
    );
  }
}

/** A file-name stem for an SVID: the ID's path segments joined by '-'. */
export function svidFileStem(spiffeId: string): string {
  const id = parseSpiffeId(spiffeId);
  return id.segments.length ? id.segments.join('-') : id.trustDomain;
}

export async function mintDevSvid(
  dir: string,
  spiffeId: string,
  options: { name?: string; ttlMs?: number; dnsNames?: string[]; key?: KeyAlgorithm; outDir?: string } = {},
): Promise<SvidFiles> {
  const { ca, files } = await loadDevCa(dir);
  const id = parseSpiffeId(spiffeId);
  if (id.trustDomain !== files.trustDomain) {
    throw new Error(`${spiffeId} is not in this CA's trust domain ${files.trustDomain}`);
  }
  if (id.path === '') {
    // X509-SVID 3.1: a leaf's SPIFFE ID has a non-root path; the broker would refuse this SVID.
    throw new Error(`${spiffeId} has no path: an X509-SVID's SPIFFE ID must name a workload (e.g. ${id.toString()}/my-service)`);
  }
  const svid = await mintX509Svid(ca, id.toString(), { ttlMs: options.ttlMs, dnsNames: options.dnsNames, key: options.key });
  const outDir = options.outDir ?? dir;
  await mkdir(outDir, { recursive: true, mode: 0o700 });
  const stem = options.name ?? svidFileStem(spiffeId);
  const certPath = join(outDir, `${stem}.pem`);
  const keyPath = join(outDir, `${stem}.key`);
  await writeFile(certPath, chainPem(svid));
  await writeSecret(keyPath, await privateKeyPem(svid.keys));
  return { spiffeId: id.toString(), certPath, keyPath, notAfter: svid.certificate.notAfter };
}
