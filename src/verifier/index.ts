/**
 * task-broker/verifier: the SDK for resource servers. Task tokens verified offline (signature,
 * claims, certificate binding), revocations pushed by the broker, offline accesses reported back
 * as evidence, and plug-ins for node:https/http2, Express and Fastify. README.verifier.md has the guide.
 */
export { createTaskTokenVerifier, TaskTokenVerifier } from './verifier.js';
export { verifyHttpRequest, bearerToken, peerCertificate, type HttpRequestLike, type HttpVerification, type HttpVerifyOptions } from './http.js';
export { expressMiddleware, type ExpressLikeRequest, type ExpressLikeResponse } from './express.js';
export { fastifyHook, type FastifyLikeReply, type FastifyLikeRequest } from './fastify.js';
export {
  VERIFIER_REASONS,
  type PresenterCertificate,
  type RevocationStream,
  type ReportingOptions,
  type VerificationResult,
  type VerifierBroker,
  type VerifierClock,
  type VerifierLogger,
  type VerifierOptions,
  type VerifierReason,
  type VerifierStats,
  type VerifyOptions,
} from './types.js';
export type { ActorClaim, PrincipalClaim, TaskTokenClaims } from '../tokens/task-token.js';
