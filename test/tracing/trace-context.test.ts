/**
 * The pure parts of tracing: W3C traceparent parsing (a malformed header is ignored, never an
 * error), what in the OTEL_* environment turns tracing on, the peer attributes, and the
 * attribute names against the semantic-conventions package.
 */
import {
  ATTR_DB_COLLECTION_NAME,
  ATTR_DB_OPERATION_BATCH_SIZE,
  ATTR_DB_OPERATION_NAME,
  ATTR_DB_QUERY_SUMMARY,
  ATTR_DB_STORED_PROCEDURE_NAME,
  ATTR_DB_SYSTEM,
  ATTR_DB_SYSTEM_NAME,
  ATTR_NETWORK_PEER_ADDRESS,
  ATTR_NETWORK_PEER_PORT,
  ATTR_RPC_GRPC_STATUS_CODE,
  ATTR_RPC_METHOD,
  ATTR_RPC_SERVICE,
  ATTR_RPC_SYSTEM,
  DB_SYSTEM_NAME_VALUE_POSTGRESQL,
} from '@opentelemetry/semantic-conventions/incubating';
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { parseTraceparent, peerAttributes, traceContextFrom, tracingDecision } from '../../src/observability/tracing.js';

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const SPAN = '00f067aa0ba902b7';

describe('traceparent (W3C Trace Context)', () => {
  it('accepts a version 00 header and reads the sampled flag', () => {
    expect(parseTraceparent(`00-${TRACE}-${SPAN}-01`)).toEqual({ traceId: TRACE, spanId: SPAN, sampled: true });
    expect(parseTraceparent(`00-${TRACE}-${SPAN}-00`)).toEqual({ traceId: TRACE, spanId: SPAN, sampled: false });
    // Other flag bits are not the sampled bit.
    expect(parseTraceparent(`00-${TRACE}-${SPAN}-02`)?.sampled).toBe(false);
  });

  it('accepts a later version with more fields after a dash, as the spec asks', () => {
    expect(parseTraceparent(`01-${TRACE}-${SPAN}-01-what-comes-next`)).toEqual({ traceId: TRACE, spanId: SPAN, sampled: true });
    expect(parseTraceparent(`01-${TRACE}-${SPAN}-01`)).toEqual({ traceId: TRACE, spanId: SPAN, sampled: true });
  });

  it.each([
    ['empty', ''],
    ['upper-case hex', `00-${TRACE.toUpperCase()}-${SPAN}-01`],
    ['an all-zero trace id', `00-${'0'.repeat(32)}-${SPAN}-01`],
    ['an all-zero parent id', `00-${TRACE}-${'0'.repeat(16)}-01`],
    ['version ff', `ff-${TRACE}-${SPAN}-01`],
    ['a version 00 header with a fifth field', `00-${TRACE}-${SPAN}-01-extra`],
    ['a later version glued to more text', `01-${TRACE}-${SPAN}-01extra`],
    ['a short trace id', `00-${TRACE.slice(1)}-${SPAN}-01`],
    ['a long parent id', `00-${TRACE}-${SPAN}0-01`],
    ['one flag digit', `00-${TRACE}-${SPAN}-1`],
    ['not hex', `00-${TRACE.replace('4', 'g')}-${SPAN}-01`],
    ['a huge value', `00-${TRACE}-${SPAN}-01${'-x'.repeat(400)}`],
  ])('ignores %s', (_what, value) => {
    expect(parseTraceparent(value)).toBeUndefined();
  });

  it('takes exactly one traceparent, and the tracestate values as one list', () => {
    const header = `00-${TRACE}-${SPAN}-01`;
    expect(traceContextFrom([header], ['a=1', 'b=2'])).toEqual({ traceId: TRACE, spanId: SPAN, sampled: true, state: 'a=1,b=2' });
    expect(traceContextFrom([header])).toEqual({ traceId: TRACE, spanId: SPAN, sampled: true });
    expect(traceContextFrom([header, header])).toBeUndefined();
    expect(traceContextFrom([])).toBeUndefined();
    expect(traceContextFrom([Buffer.from(header)])).toBeUndefined();
    // A tracestate longer than 512 characters is dropped, the traceparent kept.
    expect(traceContextFrom([header], [`a=${'x'.repeat(600)}`])).toEqual({ traceId: TRACE, spanId: SPAN, sampled: true });
  });
});

describe('what turns tracing on (OTEL_* environment)', () => {
  it('is off with nothing set', () => {
    expect(tracingDecision({})).toMatchObject({ enabled: false });
  });

  it('is on with an exporter named, or with an OTLP endpoint', () => {
    expect(tracingDecision({ OTEL_TRACES_EXPORTER: 'otlp' })).toMatchObject({ enabled: true, reason: 'OTEL_TRACES_EXPORTER=otlp' });
    expect(tracingDecision({ OTEL_TRACES_EXPORTER: 'console, otlp' })).toMatchObject({ enabled: true });
    expect(tracingDecision({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' })).toMatchObject({
      enabled: true,
      reason: expect.stringMatching(/OTEL_EXPORTER_OTLP_ENDPOINT/),
    });
    expect(tracingDecision({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://collector:4318/v1/traces' })).toMatchObject({ enabled: true });
    expect(tracingDecision({ OTEL_EXPORTER_OTLP_ENDPOINT: '  ' })).toMatchObject({ enabled: false });
  });

  it('is off when the exporter is none or the SDK is disabled, whatever else is set', () => {
    expect(tracingDecision({ OTEL_TRACES_EXPORTER: 'none', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' })).toMatchObject({ enabled: false });
    expect(tracingDecision({ OTEL_SDK_DISABLED: 'TRUE', OTEL_TRACES_EXPORTER: 'otlp' })).toMatchObject({ enabled: false, reason: 'OTEL_SDK_DISABLED is true' });
    expect(tracingDecision({ OTEL_SDK_DISABLED: 'false', OTEL_TRACES_EXPORTER: 'otlp' })).toMatchObject({ enabled: true });
  });

  it('refuses an exporter or protocol it does not know, instead of tracing nothing', () => {
    expect(() => tracingDecision({ OTEL_TRACES_EXPORTER: 'otlpp' })).toThrow('OTEL_TRACES_EXPORTER: unknown exporter "otlpp" (otlp, console, zipkin or none)');
    expect(() => tracingDecision({ OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'http' })).toThrow(
      'OTEL_EXPORTER_OTLP_PROTOCOL: unknown protocol "http" (grpc, http/protobuf or http/json)',
    );
    expect(() => tracingDecision({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4317', OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'udp' })).toThrow(
      /OTEL_EXPORTER_OTLP_TRACES_PROTOCOL/,
    );
  });
});

describe('span attributes', () => {
  it('splits a grpc-js peer into address and port (IPv4, IPv6)', () => {
    expect(peerAttributes('127.0.0.1:50123')).toEqual({ 'network.peer.address': '127.0.0.1', 'network.peer.port': 50123 });
    expect(peerAttributes('[::1]:50123')).toEqual({ 'network.peer.address': '::1', 'network.peer.port': 50123 });
    expect(peerAttributes('unknown')).toEqual({});
  });

  it('uses the semantic-conventions names', async () => {
    const source = await readFile(new URL('../../src/observability/tracing.ts', import.meta.url), 'utf8');
    const access = await readFile(new URL('../../src/tasks/task-access.ts', import.meta.url), 'utf8');
    for (const name of [ATTR_RPC_SYSTEM, ATTR_RPC_SERVICE, ATTR_RPC_METHOD, ATTR_RPC_GRPC_STATUS_CODE, ATTR_NETWORK_PEER_ADDRESS, ATTR_NETWORK_PEER_PORT]) {
      expect(source).toContain(`'${name}'`);
    }
    for (const name of [ATTR_DB_SYSTEM, ATTR_DB_SYSTEM_NAME, ATTR_DB_OPERATION_BATCH_SIZE]) expect(source).toContain(`'${name}'`);
    for (const name of [ATTR_DB_OPERATION_NAME, ATTR_DB_STORED_PROCEDURE_NAME, ATTR_DB_COLLECTION_NAME, ATTR_DB_QUERY_SUMMARY])
      expect(access).toContain(`'${name}'`);
    expect(source).toContain(`'${DB_SYSTEM_NAME_VALUE_POSTGRESQL}'`);
  });
});
