/**
 * `google.protobuf.Struct` <-> plain JavaScript values.
 *
 * Step inputs and outputs, run input/output/metadata and event data are `Struct`s on the
 * wire. This library converts them at its edges, so callers and agent handlers only see
 * plain JSON values (objects, arrays, strings, numbers, booleans, `null`).
 *
 * Note: the well-known types bundled with protobufjs name the `Value` fields in
 * camelCase (`stringValue`, `structValue`) even with `keepCase: true`; these helpers are
 * the one place that knows it.
 *
 * @module
 */

/**
 * @typedef {null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue }} JsonValue
 * @typedef {{ [key: string]: JsonValue }} JsonObject
 * @typedef {{ fields: { [key: string]: ProtoValue } }} ProtoStruct
 * @typedef {{ kind?: string, nullValue?: string | number, numberValue?: number,
 *   stringValue?: string, boolValue?: boolean, structValue?: ProtoStruct | null,
 *   listValue?: { values: ProtoValue[] } | null }} ProtoValue
 */

/**
 * Convert a JSON-compatible value to a `google.protobuf.Value`.
 *
 * `undefined` and `null` become `null_value`; objects with a `toJSON` method (such as
 * `Date`) are converted through it. Non-finite numbers, bigints, functions and symbols
 * throw a `TypeError` naming the path.
 *
 * @param {unknown} value
 * @param {string} [path] where the value sits, for error messages
 * @returns {ProtoValue}
 */
export function toValue(value, path = 'value') {
  if (value === null || value === undefined) return { nullValue: 'NULL_VALUE' };
  switch (typeof value) {
    case 'string':
      return { stringValue: value };
    case 'boolean':
      return { boolValue: value };
    case 'number':
      if (!Number.isFinite(value)) throw new TypeError(`${path} is not a finite number`);
      return { numberValue: value };
    case 'object':
      if (Array.isArray(value)) {
        return { listValue: { values: value.map((item, i) => toValue(item, `${path}[${i}]`)) } };
      }
      if (typeof (/** @type {any} */ (value).toJSON) === 'function') {
        return toValue(/** @type {any} */ (value).toJSON(), path);
      }
      return { structValue: toStruct(/** @type {Record<string, unknown>} */ (value), path) };
    default:
      throw new TypeError(`${path} is a ${typeof value}, not a JSON value`);
  }
}

/**
 * Convert a plain object to a `google.protobuf.Struct` (`null`/`undefined` -> empty).
 *
 * @param {Record<string, unknown> | null | undefined} object
 * @param {string} [path]
 * @returns {ProtoStruct}
 */
export function toStruct(object, path = 'struct') {
  if (object === null || object === undefined) return { fields: {} };
  if (typeof object !== 'object' || Array.isArray(object)) {
    throw new TypeError(`${path} must be an object`);
  }
  /** @type {{ [key: string]: ProtoValue }} */
  const fields = {};
  for (const [key, item] of Object.entries(object)) {
    fields[key] = toValue(item, `${path}.${key}`);
  }
  return { fields };
}

/**
 * Convert a decoded `google.protobuf.Value` to a plain value.
 *
 * @param {ProtoValue | null | undefined} value
 * @returns {JsonValue}
 */
export function fromValue(value) {
  if (!value) return null;
  switch (value.kind) {
    case 'numberValue':
      return /** @type {number} */ (value.numberValue);
    case 'stringValue':
      return /** @type {string} */ (value.stringValue);
    case 'boolValue':
      return /** @type {boolean} */ (value.boolValue);
    case 'structValue':
      return fromStruct(value.structValue);
    case 'listValue':
      return (value.listValue?.values ?? []).map(fromValue);
    default:
      return null;
  }
}

/**
 * Convert a decoded `google.protobuf.Struct` to a plain object (`null` stays `null`:
 * an unset Struct field is not an empty object).
 *
 * @param {ProtoStruct | null | undefined} struct
 * @returns {JsonObject | null}
 */
export function fromStruct(struct) {
  if (!struct) return null;
  /** @type {JsonObject} */
  const object = {};
  for (const [key, item] of Object.entries(struct.fields ?? {})) object[key] = fromValue(item);
  return object;
}
