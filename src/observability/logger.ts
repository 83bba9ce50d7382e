/**
 * Structured JSON logs (pino). Tokens, keys and private material are never logged; the redact
 * list is a second line of defence for fields that should not carry them in the first place.
 */
import { destination as pinoDestination, pino, stdTimeFunctions, type DestinationStream, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

export interface LoggerOptions {
  level?: LevelWithSilent;
  /** Where lines go; stdout by default. Tests pass a stream to read the lines back. */
  destination?: DestinationStream;
  name?: string;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  return pino(
    {
      name: options.name ?? 'task-broker',
      level: options.level ?? 'info',
      base: { pid: process.pid },
      timestamp: stdTimeFunctions.isoTime,
      redact: {
        paths: [
          'token',
          '*.token',
          'privateKey',
          '*.privateKey',
          'key',
          '*.key',
          'keyPem',
          '*.keyPem',
          'kek',
          '*.kek',
          'authorization',
          '*.authorization',
          'password',
          '*.password',
        ],
        censor: '[redacted]',
      },
      formatters: { level: (label) => ({ level: label }) },
    },
    options.destination ?? pinoDestination({ fd: 1, sync: false }),
  );
}

/** A logger that drops everything, for library use without a configured sink. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
