/**
 * The proto3 JSON mapping (https://protobuf.dev/programming-guides/json/) of the messages
 * proto-loader hands out, by reflection over their protobufjs types.
 *
 * protobufjs's own toObject({ json: true }) maps the scalars but knows no well-known type other
 * than Any: a Timestamp would stay {seconds, nanos} and a Struct {fields: {k: {numberValue}}},
 * hence this walker. It reads messages in the form LOADER_OPTIONS gives them (enum names, 64-bit
 * integers as strings, bytes as Buffers, an unset oneof member undefined) and writes defaults
 * too: every field appears, an unset message field as null; of a oneof only the member that is
 * set appears.
 */
import { Long } from '@grpc/proto-loader';
import protobuf from 'protobufjs';
import type { JsonObject, JsonValue } from '../model/task.js';
import { brokerProtoRoot } from './proto.js';

type Message = Record<string, unknown>;

// The range the mapping allows: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z, ±10,000 years.
const MIN_TIMESTAMP_SECONDS = -62_135_596_800;
const MAX_TIMESTAMP_SECONDS = 253_402_300_799;
const MAX_DURATION_SECONDS = 315_576_000_000n;

const WRAPPERS = ['DoubleValue', 'FloatValue', 'Int64Value', 'UInt64Value', 'Int32Value', 'UInt32Value', 'BoolValue', 'StringValue', 'BytesValue'];

/** The response message type of a method of the broker's services, e.g. ('taskbroker.v1.TaskBrokerAdmin', 'ListTasks'). */
export function responseType(service: string, method: string): protobuf.Type {
  const type = brokerProtoRoot().lookupService(service).methods[method]?.resolvedResponseType;
  if (!type) throw new Error(`${service} has no method ${method}`);
  return type;
}

/** `message` (of `type`, as proto-loader gives it) in the proto3 JSON mapping. */
export function toProto3Json(type: protobuf.Type, message: object): JsonValue {
  return messageJson(type, message);
}

function messageJson(type: protobuf.Type, value: unknown): JsonValue {
  if (value === null || value === undefined) return null;
  const message = value as Message;
  switch (type.fullName) {
    case '.google.protobuf.Timestamp':
      return timestampJson(message);
    case '.google.protobuf.Duration':
      return durationJson(message);
    case '.google.protobuf.Struct':
      return mapJson(field(type, 'fields'), message.fields);
    case '.google.protobuf.ListValue':
      return repeatedJson(field(type, 'values'), message.values);
    case '.google.protobuf.Value': {
      const member = setMember(type.oneofs.kind, message);
      // No kind set: null, as the mapping reads it back.
      return member ? singleJson(member, message[member.name]) : null;
    }
    case '.google.protobuf.Any':
    case '.google.protobuf.FieldMask':
      throw new Error(`the proto3 JSON mapping of ${type.fullName.slice(1)} is not implemented`);
  }
  if (type.fullName.startsWith('.google.protobuf.') && WRAPPERS.includes(type.name)) return singleJson(field(type, 'value'), message.value);
  const out: JsonObject = {};
  for (const f of type.fieldsArray) {
    const v = message[f.name];
    if (f.partOf && (v === undefined || v === null)) continue;
    out[jsonName(f)] = fieldJson(f, v);
  }
  return out;
}

function field(type: protobuf.Type, name: string): protobuf.Field {
  const f = type.fields[name];
  if (!f) throw new Error(`${type.fullName} has no field ${name}`);
  return f;
}

/** The member of a oneof that is set: the one proto-loader names (oneofs: true), or the one with a value. */
function setMember(oneof: protobuf.OneOf | undefined, message: Message): protobuf.Field | undefined {
  if (!oneof) return undefined;
  const named = message[oneof.name];
  return oneof.fieldsArray.find((f) => (typeof named === 'string' ? f.name === named : message[f.name] !== undefined && message[f.name] !== null));
}

function jsonName(f: protobuf.Field): string {
  const explicit: unknown = f.options?.json_name;
  return typeof explicit === 'string' ? explicit : protobuf.util.camelCase(f.name);
}

function fieldJson(f: protobuf.Field, value: unknown): JsonValue {
  if (f.map) return mapJson(f, value);
  if (f.repeated) return repeatedJson(f, value);
  return singleJson(f, value);
}

function mapJson(f: protobuf.Field, value: unknown): JsonObject {
  // fromEntries defines each key as an own property, so a key "__proto__" stays a key.
  return Object.fromEntries(Object.entries((value ?? {}) as Message).map(([k, v]) => [k, singleJson(f, v)]));
}

function repeatedJson(f: protobuf.Field, value: unknown): JsonValue[] {
  return ((value ?? []) as unknown[]).map((v) => singleJson(f, v));
}

/** One value of a field (an element, for a repeated or map field). */
function singleJson(f: protobuf.Field, value: unknown): JsonValue {
  const resolved = f.resolvedType;
  if (resolved instanceof protobuf.Type) return messageJson(resolved, value);
  if (resolved instanceof protobuf.Enum) return enumJson(resolved, value);
  switch (f.type) {
    case 'string':
      return typeof value === 'string' ? value : '';
    case 'bool':
      return value === true;
    case 'double':
    case 'float': {
      if (typeof value === 'string') return value;
      const n = typeof value === 'number' ? value : 0;
      return Number.isFinite(n) ? n : String(n);
    }
    case 'int32':
    case 'uint32':
    case 'sint32':
    case 'fixed32':
    case 'sfixed32':
      return Number(value ?? 0);
    case 'int64':
    case 'uint64':
    case 'sint64':
    case 'fixed64':
    case 'sfixed64':
      return int64Text(value);
    case 'bytes':
      if (typeof value === 'string') return value;
      if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64');
      if (Array.isArray(value)) return Buffer.from(value as number[]).toString('base64');
      return '';
  }
  throw new Error(`field ${f.fullName} has unknown type ${f.type}`);
}

/** A 64-bit integer as its decimal digits: a string (longs: String), a number, a bigint or a Long. */
function int64Text(value: unknown): string {
  if (value === undefined || value === null) return '0';
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'bigint' || Long.isLong(value)) return value.toString();
  throw new Error(`not a 64-bit integer: ${typeof value}`);
}

function enumJson(e: protobuf.Enum, value: unknown): JsonValue {
  if (e.fullName === '.google.protobuf.NullValue') return null;
  if (typeof value === 'string') return value;
  const number = typeof value === 'number' ? value : 0;
  // A number this build does not know stays a number, as the mapping says.
  return e.valuesById[number] ?? number;
}

/** 3, 6 or 9 digits after the point, as few as the nanoseconds need (at least `min`: 0 or 3). */
function fraction(nanos: number, min: 0 | 3): string {
  if (nanos === 0 && min === 0) return '';
  const digits = String(nanos).padStart(9, '0');
  return `.${nanos % 1_000_000 === 0 ? digits.slice(0, 3) : nanos % 1000 === 0 ? digits.slice(0, 6) : digits}`;
}

/**
 * RFC 3339 in UTC. Always with milliseconds at least, as Date.toISOString writes them (the
 * mapping allows 0, 3, 6 or 9 digits), so whole seconds look like every other time.
 */
function timestampJson(message: Message): string {
  const seconds = Number(message.seconds ?? 0);
  const nanos = Number(message.nanos ?? 0);
  if (
    !Number.isInteger(seconds) ||
    seconds < MIN_TIMESTAMP_SECONDS ||
    seconds > MAX_TIMESTAMP_SECONDS ||
    !Number.isInteger(nanos) ||
    nanos < 0 ||
    nanos > 999_999_999
  ) {
    throw new Error(`Timestamp ${String(message.seconds)}s ${String(message.nanos)}ns is outside what RFC 3339 can write`);
  }
  return `${new Date(seconds * 1000).toISOString().slice(0, 19)}${fraction(nanos, 3)}Z`;
}

/** "600s", "1.500s", "-0.000001s". */
function durationJson(message: Message): string {
  const raw = int64Text(message.seconds);
  const nanos = Number(message.nanos ?? 0);
  const seconds = /^-?\d+$/.test(raw) ? BigInt(raw) : undefined;
  if (
    seconds === undefined ||
    seconds > MAX_DURATION_SECONDS ||
    seconds < -MAX_DURATION_SECONDS ||
    !Number.isInteger(nanos) ||
    Math.abs(nanos) > 999_999_999 ||
    (seconds > 0n && nanos < 0) ||
    (seconds < 0n && nanos > 0)
  ) {
    throw new Error(`Duration ${raw}s ${String(message.nanos)}ns is not a valid duration`);
  }
  const negative = seconds < 0n || nanos < 0;
  return `${negative ? '-' : ''}${seconds < 0n ? -seconds : seconds}${fraction(Math.abs(nanos), 0)}s`;
}
