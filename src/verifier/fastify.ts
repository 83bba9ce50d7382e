/**
 * A Fastify hook (onRequest or preHandler; typed structurally: fastify is not a dependency of
 * the SDK). A valid token's claims become `request.taskToken` (decorate the request with
 * `taskToken` first); a refusal is 401 with a WWW-Authenticate challenge, a verifier that
 * cannot work 503.
 */
import type { TaskTokenClaims } from '../tokens/task-token.js';
import { refusalBody, unavailableBody, verifyHttpRequest, type HttpRequestLike, type HttpVerifyOptions } from './http.js';
import type { TaskTokenVerifier } from './verifier.js';

export interface FastifyLikeRequest {
  raw: HttpRequestLike;
  taskToken?: TaskTokenClaims | null;
}

export interface FastifyLikeReply {
  code(statusCode: number): FastifyLikeReply;
  header(name: string, value: string): FastifyLikeReply;
  send(payload?: unknown): FastifyLikeReply;
}

export function fastifyHook(
  verifier: TaskTokenVerifier,
  options: HttpVerifyOptions = {},
): (request: FastifyLikeRequest, reply: FastifyLikeReply) => Promise<void> {
  return async (request, reply) => {
    let result;
    try {
      result = await verifyHttpRequest(verifier, request.raw, options);
    } catch (error) {
      reply.code(503).send(unavailableBody(error, options));
      return;
    }
    if (result.valid && result.claims) {
      request.taskToken = result.claims;
      return;
    }
    reply
      .code(401)
      .header('www-authenticate', result.challenge ?? 'Bearer')
      .send(refusalBody(result));
  };
}
