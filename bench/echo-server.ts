/**
 * The transport ceiling: a bare grpc-js server with mTLS (client certificate required and
 * verified against the bench CA by grpc-js itself), the broker's own SVID as its certificate,
 * and one unary method that answers with the bytes it got. No protobuf, no handler logic.
 *
 * Forked by run.ts: it gets a ServerConfig over IPC, answers { type: 'listening', port }, and
 * stops on SIGTERM or when the IPC channel closes.
 */
import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import { ECHO_PATH, errorMessage, send, type ServerConfig } from './common.js';

const identity = (b: Buffer) => b;

const echoService: grpc.ServiceDefinition = {
  Echo: {
    path: ECHO_PATH,
    requestStream: false,
    responseStream: false,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  },
};

function start(config: Extract<ServerConfig, { kind: 'echo' }>): void {
  const server = new grpc.Server();
  server.addService(echoService, {
    Echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => callback(null, call.request),
  });
  const credentials = grpc.ServerCredentials.createSsl(
    readFileSync(config.bundlePath),
    [{ cert_chain: readFileSync(config.certPath), private_key: readFileSync(config.keyPath) }],
    true,
  );
  server.bindAsync('127.0.0.1:0', credentials, (err, port) => {
    if (err) {
      send({ type: 'failed', message: err.message });
      process.exit(1);
    }
    send({ type: 'listening', port });
  });
  const stop = () => server.tryShutdown(() => process.exit(0));
  process.once('SIGTERM', stop);
  process.once('disconnect', stop);
}

if (process.send) {
  process.once('message', (message: ServerConfig) => {
    try {
      if (message.kind !== 'echo') throw new Error(`echo-server: unexpected config ${message.kind}`);
      start(message);
    } catch (err) {
      send({ type: 'failed', message: errorMessage(err) });
      process.exit(1);
    }
  });
}
