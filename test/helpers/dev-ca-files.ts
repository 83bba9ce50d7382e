/**
 * The files `task-broker dev-ca init|mint` writes into a directory (ca.pem, NAME.pem, NAME.key),
 * read back the two ways the tests of the real binary use them: as a client's credentials, and as
 * the environment of a `serve` whose own SVID was minted as `broker`.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { SvidCredentialsOptions } from '../../src/client/credentials.js';

/** The SVID minted as `name` in `pki`, trusting the CA there, for a broker whose ID is `serverId`. */
export async function devCaSvid(pki: string, name: string, serverId: string): Promise<SvidCredentialsOptions> {
  return {
    certChainPem: await readFile(join(pki, `${name}.pem`), 'utf8'),
    keyPem: await readFile(join(pki, `${name}.key`), 'utf8'),
    bundle: await readFile(join(pki, 'ca.pem'), 'utf8'),
    serverId,
  };
}

/**
 * `serve`'s environment, as a Deployment would set it: the SVID minted as `broker` in `pki`, the
 * CA there as the bundle of `trustDomain`, both listeners on free ports of 127.0.0.1, a random
 * KEK; then `env` (the database, the policy, migrations), over those.
 */
export function devCaServeEnv(pki: string, trustDomain: string, env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return {
    TASK_BROKER_LISTEN: '127.0.0.1:0',
    TASK_BROKER_HTTP_LISTEN: '127.0.0.1:0',
    TASK_BROKER_SVID_CERT: join(pki, 'broker.pem'),
    TASK_BROKER_SVID_KEY: join(pki, 'broker.key'),
    TASK_BROKER_BUNDLES: `${trustDomain}=${join(pki, 'ca.pem')}`,
    TASK_BROKER_KEK: randomBytes(32).toString('base64'),
    ...env,
  };
}
