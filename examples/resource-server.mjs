// A resource server guarded by the verifier SDK: an Express app over HTTPS with client
// certificates (mTLS), whose routes accept a request only with a task token that is valid,
// addressed to this server's SPIFFE ID, bound to the certificate the caller presents and not
// revoked (revocations pushed by the broker's WatchRevocations stream). Every verification is
// reported back to the broker as a token.used event on the task's audit chain.
//
// Environment: BROKER_ADDRESS, BROKER_ID, SVID_CERT, SVID_KEY, BUNDLE, PORT (0: any free port).
// Prints {"listening": PORT} once it serves.
import { createServer } from 'node:https';
import express from 'express';
import { BrokerClient, bundleRootsPem, fileX509Source, svidChannelOptions, x509SourceCredentials } from 'task-broker/client';
import { createTaskTokenVerifier, expressMiddleware } from 'task-broker/verifier';

const env = (name) =>
  process.env[name] ??
  (() => {
    throw new Error(`${name} is not set`);
  })();

// Our SVID and the bundle, reloaded when the files change (use workloadApiX509Source() under SPIRE).
const source = await fileX509Source({ certFile: env('SVID_CERT'), keyFile: env('SVID_KEY'), bundleFile: env('BUNDLE') });
const broker = new BrokerClient({
  address: env('BROKER_ADDRESS'),
  credentials: x509SourceCredentials(source, { serverId: env('BROKER_ID') }),
  channelOptions: svidChannelOptions(),
});
const verifier = createTaskTokenVerifier({ broker, revocations: 'stream' });
await verifier.ready();

const app = express();
app.get('/invoices/:month', expressMiddleware(verifier, { operation: 'invoices.read' }), (req, res) => {
  res.json({ month: req.params.month, invoices: 3, task_id: req.taskToken.task_id, for: req.taskToken.sub });
});

const tlsOptions = () => {
  const svid = source.current();
  const ca = bundleRootsPem(source.bundles.getX509Bundle(svid.spiffeId.trustDomain));
  return { cert: svid.certChainPem, key: svid.keyPem, ca, requestCert: true, rejectUnauthorized: true };
};
const server = createServer(tlsOptions(), app);
// A rotated SVID or a changed bundle serves new connections; open ones carry on.
source.onChange(() => server.setSecureContext(tlsOptions()));
source.bundles.onChange(() => server.setSecureContext(tlsOptions()));
server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => console.log(JSON.stringify({ listening: server.address().port })));

const stop = async () => {
  server.close();
  await verifier.close();
  broker.close();
  source.close();
};
process.once('SIGTERM', () => void stop());
process.once('SIGINT', () => void stop());
