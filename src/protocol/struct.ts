/**
 * google.protobuf.Struct / Value <-> plain JSON, and Duration <-> whole seconds.
 */
import type { Duration, Duration__Output } from '../gen/google/protobuf/Duration.js';
import type { Struct, Struct__Output } from '../gen/google/protobuf/Struct.js';
import type { Value, Value__Output } from '../gen/google/protobuf/Value.js';
import { BrokerError } from '../errors.js';
import type { JsonObject, JsonValue } from '../model/task.js';

/** How deep params may nest (documented in the proto). */
export const MAX_PARAMS_DEPTH = 32;

function valueToJson(v: Value__Output, path: string, depth: number): JsonValue {
  if (depth > MAX_PARAMS_DEPTH) throw new BrokerError('invalid-argument', `${path}: nested deeper than ${MAX_PARAMS_DEPTH} levels`);
  switch (v.kind) {
    case 'nullValue':
    case undefined:
      return null;
    case 'numberValue': {
      const n = v.numberValue ?? 0;
      if (!Number.isFinite(n)) throw new BrokerError('invalid-argument', `${path}: numbers must be finite`);
      return n;
    }
    case 'stringValue': {
      const text = v.stringValue ?? '';
      if (text.includes('\u0000')) throw new BrokerError('invalid-argument', `${path}: the NUL character is not allowed`);
      return text;
    }
    case 'boolValue':
      return v.boolValue ?? false;
    case 'structValue':
      return structToJson(v.structValue, path, depth + 1);
    case 'listValue':
      return (v.listValue?.values ?? []).map((item, i) => valueToJson(item, `${path}[${i}]`, depth + 1));
  }
}

export function structToJson(s: Struct__Output | null | undefined, path = 'params', depth = 0): JsonObject {
  const out: JsonObject = {};
  for (const [k, v] of Object.entries(s?.fields ?? {})) {
    // Assigning "__proto__" would set the prototype and drop the key from the hashed spec.
    if (k === '__proto__') throw new BrokerError('invalid-argument', `${path}: the key "__proto__" is not allowed`);
    if (k.includes('\u0000')) throw new BrokerError('invalid-argument', `${path}: the NUL character is not allowed in keys`);
    out[k] = valueToJson(v, `${path}.${k}`, depth);
  }
  return out;
}

function jsonToValue(v: JsonValue): Value {
  if (v === null) return { nullValue: 'NULL_VALUE', kind: 'nullValue' };
  if (typeof v === 'number') return { numberValue: v, kind: 'numberValue' };
  if (typeof v === 'string') return { stringValue: v, kind: 'stringValue' };
  if (typeof v === 'boolean') return { boolValue: v, kind: 'boolValue' };
  if (Array.isArray(v)) return { listValue: { values: v.map(jsonToValue) }, kind: 'listValue' };
  return { structValue: jsonToStruct(v), kind: 'structValue' };
}

export function jsonToStruct(obj: JsonObject): Struct {
  return { fields: Object.fromEntries(Object.entries(obj).map(([k, v]) => [k, jsonToValue(v)])) };
}

/** A Duration as whole seconds; undefined when absent. Fractions and negatives are refused. */
export function durationSeconds(d: Duration__Output | null | undefined, field: string): number | undefined {
  if (!d) return undefined;
  const seconds = Number(d.seconds);
  if (d.nanos !== 0 || !Number.isSafeInteger(seconds)) throw new BrokerError('invalid-argument', `${field}: whole seconds only`);
  if (seconds <= 0) throw new BrokerError('invalid-argument', `${field} must be positive`);
  return seconds;
}

export function secondsToDuration(seconds: number): Duration {
  return { seconds: String(seconds), nanos: 0 };
}
