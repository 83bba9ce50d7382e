/**
 * One Workload API stream kept open for as long as its client lives: a stream that ends or fails
 * is opened again after an exponential backoff with jitter, slowly when the endpoint refused it
 * for good (INVALID_ARGUMENT, UNIMPLEMENTED). Each disconnect and reconnect is logged with its
 * reason; messages never are, since they carry private keys.
 *
 * Apart from workload-api.ts (the endpoint, its address and the RPCs) because this is the part
 * with state and timing: the reconnect loop is what the Workload API tests exercise on their own.
 */
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../observability/logger.js';

export interface BackoffOptions {
  /** First delay (default 100 ms). */
  initialMs?: number;
  /** Longest delay (default 30 s). */
  maxMs?: number;
}

/**
 * Exponential backoff with "equal jitter": the n-th delay is between half and all of
 * min(max, initial * 2^n), so retries spread out but never collapse to zero.
 */
export class Backoff {
  readonly initialMs: number;
  readonly maxMs: number;
  #attempt = 0;

  readonly #random: () => number;

  constructor(options: BackoffOptions = {}, random: () => number = Math.random) {
    this.#random = random;
    this.initialMs = Math.max(1, options.initialMs ?? 100);
    this.maxMs = Math.max(this.initialMs, options.maxMs ?? 30_000);
  }

  /** The delay before the next attempt; each call doubles the next one, up to the maximum. */
  next(): number {
    const ceiling = Math.min(this.maxMs, this.initialMs * 2 ** Math.min(this.#attempt, 40));
    this.#attempt += 1;
    return Math.round(ceiling / 2 + this.#random() * (ceiling / 2));
  }

  /** Back to the first delay (after a success). */
  reset(): void {
    this.#attempt = 0;
  }
}

/** One Workload API stream, kept open by the client. */
export interface StreamWatch {
  /** True while the stream is open and has delivered a message on its current call. */
  readonly connected: boolean;
  /** Why the stream last ended or failed; undefined until it has. */
  readonly lastError: string | undefined;
  /** Stops the stream for good. */
  close(): void;
}

export interface StreamHandlers<T> {
  /** Each message, complete (never a delta). An exception thrown here is logged; the stream carries on. */
  onMessage(message: T): void;
  /** The stream ended or failed and will be opened again after a backoff. */
  onDisconnect?(reason: string): void;
}

/** Codes the spec says not to retry (a client bug or a missing RPC): retried only at the longest backoff. */
const PERMANENT_CODES = new Set<grpc.status>([grpc.status.INVALID_ARGUMENT, grpc.status.UNIMPLEMENTED]);

function describeStatus(status: grpc.StatusObject): string {
  if (status.code === grpc.status.OK) return 'the server ended the stream';
  return `${grpc.status[status.code] ?? status.code}: ${status.details}`;
}

export class ReconnectingStream<T> implements StreamWatch {
  #call: grpc.ClientReadableStream<T> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  #connected = false;
  #failures = 0;
  #lastError: string | undefined;
  readonly #backoff: Backoff;

  readonly #name: string;
  /** Starts the call, with the metadata every Workload API call carries. */
  readonly #open: () => grpc.ClientReadableStream<T>;
  readonly #handlers: StreamHandlers<T>;
  readonly #logger: Logger;

  constructor(name: string, open: () => grpc.ClientReadableStream<T>, handlers: StreamHandlers<T>, logger: Logger, backoff: BackoffOptions | undefined) {
    this.#name = name;
    this.#open = open;
    this.#handlers = handlers;
    this.#logger = logger;
    this.#backoff = new Backoff(backoff);
    this.#start();
  }

  get connected(): boolean {
    return this.#connected;
  }

  get lastError(): string | undefined {
    return this.#lastError;
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const call = this.#call;
    this.#call = undefined;
    this.#connected = false;
    call?.cancel();
  }

  #start(): void {
    if (this.#closed) return;
    let call: grpc.ClientReadableStream<T>;
    try {
      call = this.#open();
    } catch (err) {
      this.#ended(`cannot start the call: ${(err as Error).message}`, undefined);
      return;
    }
    this.#call = call;
    call.on('data', (message: T) => {
      if (call !== this.#call) return;
      if (!this.#connected) {
        this.#connected = true;
        this.#backoff.reset();
        if (this.#failures > 0) {
          this.#logger.info({ stream: this.#name, failedAttempts: this.#failures, lastError: this.#lastError }, 'Workload API stream reconnected');
        } else {
          this.#logger.debug({ stream: this.#name }, 'Workload API stream open');
        }
        this.#failures = 0;
      }
      try {
        this.#handlers.onMessage(message);
      } catch (err) {
        this.#logger.error({ stream: this.#name, err: (err as Error).message }, 'Workload API message handler failed');
      }
    });
    // The status event carries the same information; without a listener 'error' would throw.
    call.on('error', () => undefined);
    call.on('status', (status: grpc.StatusObject) => {
      if (call !== this.#call) return;
      this.#ended(describeStatus(status), status.code);
    });
  }

  #ended(reason: string, code: grpc.status | undefined): void {
    const wasConnected = this.#connected;
    this.#call = undefined;
    this.#connected = false;
    if (this.#closed) return;
    this.#lastError = reason;
    this.#failures += 1;
    const permanent = code !== undefined && PERMANENT_CODES.has(code);
    const delay = permanent ? this.#backoff.maxMs : this.#backoff.next();
    const fields = { stream: this.#name, reason, attempt: this.#failures, retryInMs: delay };
    if (permanent) {
      this.#logger.error(fields, 'Workload API refused the stream; this is not expected to heal by itself, retrying slowly');
    } else {
      this.#logger.warn(fields, wasConnected ? 'Workload API stream disconnected; reconnecting' : 'Workload API stream could not be opened; retrying');
    }
    try {
      this.#handlers.onDisconnect?.(reason);
    } catch (err) {
      this.#logger.error({ stream: this.#name, err: (err as Error).message }, 'Workload API disconnect handler failed');
    }
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#start();
    }, delay);
    this.#timer.unref();
  }
}
