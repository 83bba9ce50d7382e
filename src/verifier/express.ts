/**
 * An Express middleware (typed structurally: express is not a dependency of the SDK). A valid
 * token's claims become `req.taskToken`; a refusal is 401 with a WWW-Authenticate challenge; a
 * verifier that cannot work (no keys from the broker) answers 503.
 */
import type { TaskTokenClaims } from '../tokens/task-token.js';
import { refusalBody, unavailableBody, verifyHttpRequest, type HttpRequestLike, type HttpVerifyOptions } from './http.js';
import type { TaskTokenVerifier } from './verifier.js';

export interface ExpressLikeRequest extends HttpRequestLike {
  taskToken?: TaskTokenClaims;
}

export interface ExpressLikeResponse {
  status(code: number): ExpressLikeResponse;
  setHeader(name: string, value: string): unknown;
  json(body: unknown): unknown;
}

export function expressMiddleware(
  verifier: TaskTokenVerifier,
  options: HttpVerifyOptions = {},
): (req: ExpressLikeRequest, res: ExpressLikeResponse, next: (error?: unknown) => void) => void {
  return (req, res, next) => {
    verifyHttpRequest(verifier, req, options).then(
      (result) => {
        if (result.valid && result.claims) {
          req.taskToken = result.claims;
          next();
          return;
        }
        res.setHeader('WWW-Authenticate', result.challenge ?? 'Bearer');
        res.status(401).json(refusalBody(result));
      },
      (error: unknown) => {
        res.status(503).json(unavailableBody(error, options));
      },
    );
  };
}
