/**
 * Requests are decoded here rather than inside grpc-js, so a message that does not decode (a
 * params Struct nested past the decoder's depth limit, a truncated field, a wrong wire type) is
 * INVALID_ARGUMENT with the reason, recorded like any other call, instead of grpc-js's
 * INTERNAL "Error deserializing request".
 */
import * as grpc from '@grpc/grpc-js';
import { MAX_PARAMS_DEPTH } from '../protocol/struct.js';

type Decode = (bytes: Buffer) => unknown;

/** Method path -> the decoder proto-loader generated for its request type. */
export class RequestDecoders {
  readonly #decoders = new Map<string, { decode: Decode; type: string }>();

  /**
   * A copy of `definition` whose handlers receive the raw request bytes from grpc-js; the
   * interceptor() decodes them before any handler (or any other interceptor) sees the message.
   */
  undecoded(definition: grpc.ServiceDefinition): grpc.ServiceDefinition {
    const copy: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
    for (const [name, method] of Object.entries(definition) as Array<
      [string, grpc.MethodDefinition<unknown, unknown> & { requestType?: { type?: { name?: string } } }]
    >) {
      this.#decoders.set(method.path, { decode: method.requestDeserialize, type: method.requestType?.type?.name ?? 'request' });
      copy[name] = { ...method, requestDeserialize: (bytes: Buffer) => bytes };
    }
    return copy;
  }

  /** The interceptor that decodes: it must sit below the recorder and before the handlers. */
  interceptor(): grpc.ServerInterceptor {
    return (descriptor, call) => {
      const decoder = this.#decoders.get(descriptor.path);
      if (!decoder) return new grpc.ServerInterceptingCall(call);
      return new grpc.ServerInterceptingCall(call, {
        start: (next) => {
          next({
            onReceiveMessage: (message: Buffer, nextMessage) => {
              let decoded: unknown;
              try {
                decoded = decoder.decode(message);
              } catch (err) {
                const reason = err instanceof Error ? err.message : String(err);
                const hint = /nesting depth/i.test(reason) ? ` (google.protobuf.Struct params may nest at most ${MAX_PARAMS_DEPTH} levels)` : '';
                call.sendStatus({ code: grpc.status.INVALID_ARGUMENT, details: `request could not be decoded as ${decoder.type}: ${reason}${hint}` });
                return;
              }
              nextMessage(decoded);
            },
          });
        },
      });
    };
  }
}
