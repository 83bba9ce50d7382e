/**
 * LISTEN on a PostgreSQL notification channel, on a connection of its own that is re-opened with
 * backoff whenever it is lost (a database restart, a failover, a network cut). Notifications
 * sent while no connection listens are lost, so `onReady` is told each time listening
 * (re)starts: the caller then reads whatever it may have missed (the log table is the truth,
 * the notification only the signal).
 *
 * PGlite has no separate connection to lose: it delivers notifications to in-process callbacks.
 */
import pg from 'pg';

export interface ListenHandlers {
  /** A notification on the channel, with its payload. */
  onNotify(payload: string): void;
  /** Listening started or started again: notifications may have been missed before this. */
  onReady?(): void;
  /** The connection failed; listening resumes after a backoff. */
  onProblem?(message: string, retryInMs: number): void;
}

export interface Listener {
  /** Listening now. */
  readonly connected: boolean;
  close(): Promise<void>;
}

const CHANNEL = /^[a-z_][a-z0-9_]{0,62}$/;

function checkedChannel(channel: string): string {
  if (!CHANNEL.test(channel)) throw new Error(`not a notification channel name: ${JSON.stringify(channel)}`);
  return channel;
}

/** A listener on its own pg client, re-opened with backoff (250 ms doubling to 5 s, with jitter). */
export function listenOnPostgres(config: pg.ClientConfig, channel: string, handlers: ListenHandlers): Listener {
  checkedChannel(channel);
  let client: pg.Client | undefined;
  let connected = false;
  let closed = false;
  let backoff = 250;
  let retry: NodeJS.Timeout | undefined;

  const lost = (current: pg.Client, message: string) => {
    if (client !== current) return;
    client = undefined;
    connected = false;
    current.removeAllListeners('notification');
    current.on('error', () => undefined);
    void current.end().catch(() => undefined);
    if (closed) return;
    const retryInMs = Math.round(backoff * (0.5 + Math.random() / 2));
    backoff = Math.min(backoff * 2, 5_000);
    handlers.onProblem?.(message, retryInMs);
    retry = setTimeout(open, retryInMs);
    retry.unref();
  };

  const open = () => {
    retry = undefined;
    if (closed) return;
    const current = new pg.Client({ ...config, application_name: 'task-broker-listener' });
    client = current;
    current.on('error', (err) => lost(current, err.message));
    current.on('end', () => lost(current, 'connection ended'));
    current.on('notification', (msg) => {
      if (msg.channel === channel) handlers.onNotify(msg.payload ?? '');
    });
    current
      .connect()
      .then(() => current.query(`LISTEN ${channel}`))
      .then(
        () => {
          if (client !== current) return;
          connected = true;
          backoff = 250;
          handlers.onReady?.();
        },
        (err: Error) => lost(current, err.message),
      );
  };

  open();
  return {
    get connected() {
      return connected;
    },
    close: async () => {
      closed = true;
      if (retry) clearTimeout(retry);
      const current = client;
      client = undefined;
      connected = false;
      if (current) {
        current.removeAllListeners('notification');
        current.on('error', () => undefined);
        await current.end().catch(() => undefined);
      }
    },
  };
}

/** PGlite's in-process LISTEN: never lost while the instance is open. */
export function listenOnPglite(
  pglite: { listen(channel: string, callback: (payload: string) => void): Promise<() => Promise<void>> },
  channel: string,
  handlers: ListenHandlers,
): Listener {
  checkedChannel(channel);
  let connected = false;
  let closed = false;
  const unlisten = pglite
    .listen(channel, (payload) => handlers.onNotify(payload))
    .then(
      (stop) => {
        if (!closed) {
          connected = true;
          handlers.onReady?.();
        }
        return stop;
      },
      (err: Error) => {
        handlers.onProblem?.(err.message, 0);
        return undefined;
      },
    );
  return {
    get connected() {
      return connected;
    },
    close: async () => {
      closed = true;
      connected = false;
      const stop = await unlisten;
      await stop?.().catch(() => undefined);
    },
  };
}
