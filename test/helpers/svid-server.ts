/**
 * A real SvidServer serving WhoAmI, whose handler counts its invocations so tests can show a
 * refused call never reached one. Transport tests need no tasks, hence no database: WhoAmI
 * answers from the verified caller alone.
 */
import * as grpc from '@grpc/grpc-js';
import { createSecureContext } from 'node:tls';
import { whoAmIHandler } from '../../src/api/task-broker-service.js';
import { BrokerClient } from '../../src/client/broker-client.js';
import { svidChannelOptions } from '../../src/client/credentials.js';
import { brokerProto } from '../../src/protocol/proto.js';
import type { X509BundleSource } from '../../src/spiffe/bundle.js';
import { StaticX509SvidSource, type TlsIdentity } from '../../src/spiffe/x509-source.js';
import { SvidServer } from '../../src/transport/svid-server.js';
import type { Logger } from '../../src/observability/logger.js';
import type { PemSvid } from './pki.js';

export interface TestSvidServer {
  server: SvidServer;
  identity: StaticX509SvidSource;
  port: number;
  handlerCalls: () => number;
  close(): Promise<void>;
}

export async function startTestSvidServer(options: {
  identity: TlsIdentity;
  bundles: X509BundleSource;
  logger: Logger;
  clock?: () => Date;
}): Promise<TestSvidServer> {
  const identity = new StaticX509SvidSource(options.identity);
  const server = new SvidServer({ bundles: options.bundles, identity, logger: options.logger, clock: options.clock, refusedConnectionLingerMs: 2_000 });
  let calls = 0;
  const whoAmI = whoAmIHandler({ logger: options.logger });
  server.grpc.addService(brokerProto().taskbroker.v1.TaskBroker.service, {
    WhoAmI: (call: Parameters<typeof whoAmI>[0], cb: Parameters<typeof whoAmI>[1]) => {
      calls += 1;
      whoAmI(call, cb);
    },
  });
  const port = await server.listen('127.0.0.1', 0);
  return { server, identity, port, handlerCalls: () => calls, close: () => server.shutdown(1_000) };
}

/**
 * Raw credentials: present exactly `svid` (or nothing), trust `serverRootPem`, skip server ID
 * checks. `weakCrypto` lowers the client's OpenSSL security level so it will present
 * certificates it would otherwise refuse to send (SHA-1 signatures), to test the server's rules.
 */
export function rawCredentials(serverRootPem: string, svid?: PemSvid, weakCrypto = false): grpc.ChannelCredentials {
  if (weakCrypto && svid) {
    const context = createSecureContext({ ca: serverRootPem, cert: svid.certChainPem, key: svid.keyPem, ciphers: 'DEFAULT@SECLEVEL=0' });
    return grpc.credentials.createFromSecureContext(context, { checkServerIdentity: () => undefined });
  }
  if (!svid) return grpc.credentials.createSsl(Buffer.from(serverRootPem), null, null, { checkServerIdentity: () => undefined });
  return grpc.credentials.createSsl(Buffer.from(serverRootPem), Buffer.from(svid.keyPem), Buffer.from(svid.certChainPem), {
    checkServerIdentity: () => undefined,
  });
}

export function clientFor(port: number, credentials: grpc.ChannelCredentials): BrokerClient {
  return new BrokerClient({ address: `127.0.0.1:${port}`, credentials, channelOptions: svidChannelOptions() });
}
