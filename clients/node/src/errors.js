/**
 * Typed errors of the Podium client, mapped from gRPC status codes and the `google.rpc`
 * details Podium packs in the `grpc-status-details-bin` trailer.
 *
 * Every failed call of {@link import('./client.js').PodiumClient} rejects with a
 * {@link PodiumError} subclass chosen by the status code (the same classes as the Python
 * client's `podium.client.errors`). The trailer holds a `google.rpc.Status` whose
 * `details` are unpacked onto the error: `google.rpc.ErrorInfo` as `reason` (a stable
 * UPPER_SNAKE code such as `RUN_NOT_FOUND`), `domain` and `metadata`, and
 * `google.rpc.BadRequest` as `fieldViolations`. The grpc-js `ServiceError` it was made
 * from is the error's `cause` (its `metadata` holds the raw trailers).
 *
 * | status code           | class                       |
 * | --------------------- | --------------------------- |
 * | INVALID_ARGUMENT      | {@link ValidationError}         |
 * | NOT_FOUND             | {@link NotFoundError}           |
 * | ALREADY_EXISTS        | {@link AlreadyExistsError}      |
 * | FAILED_PRECONDITION   | {@link FailedPreconditionError} |
 * | RESOURCE_EXHAUSTED    | {@link ResourceExhaustedError}  |
 * | PERMISSION_DENIED     | {@link PermissionDeniedError}   |
 * | UNAUTHENTICATED       | {@link UnauthenticatedError}    |
 * | UNIMPLEMENTED         | {@link UnimplementedError}      |
 * | UNAVAILABLE           | {@link UnavailableError}        |
 * | DEADLINE_EXCEEDED     | {@link DeadlineExceededError}   |
 * | anything else         | {@link PodiumError}             |
 *
 * The three `google.rpc` messages and `google.protobuf.Any` are decoded with protobufjs
 * from the small JSON descriptor below: no `.proto` file is copied for them.
 *
 * @module
 */

import * as grpc from '@grpc/grpc-js';
import protobuf from 'protobufjs';

/** The trailer carrying a serialized `google.rpc.Status`. */
export const STATUS_DETAILS_KEY = 'grpc-status-details-bin';

/**
 * `google.rpc.Status`, `ErrorInfo`, `BadRequest` (from googleapis'
 * `google/rpc/status.proto` and `error_details.proto`) and `google.protobuf.Any`, as a
 * protobufjs JSON descriptor. Fields this client does not read
 * (`FieldViolation.localized_message`) are left out: protobufjs skips unknown fields.
 */
const DESCRIPTOR = {
  nested: {
    google: {
      nested: {
        protobuf: {
          nested: {
            Any: {
              fields: {
                type_url: { type: 'string', id: 1 },
                value: { type: 'bytes', id: 2 },
              },
            },
          },
        },
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 },
              },
            },
            ErrorInfo: {
              fields: {
                reason: { type: 'string', id: 1 },
                domain: { type: 'string', id: 2 },
                metadata: { keyType: 'string', type: 'string', id: 3 },
              },
            },
            BadRequest: {
              fields: {
                field_violations: { rule: 'repeated', type: 'FieldViolation', id: 1 },
              },
              nested: {
                FieldViolation: {
                  fields: {
                    field: { type: 'string', id: 1 },
                    description: { type: 'string', id: 2 },
                    reason: { type: 'string', id: 3 },
                  },
                },
              },
            },
          },
        },
      },
    },
  },
};

const root = protobuf.Root.fromJSON(DESCRIPTOR);
const StatusType = root.lookupType('google.rpc.Status');
const ErrorInfoType = root.lookupType('google.rpc.ErrorInfo');
const BadRequestType = root.lookupType('google.rpc.BadRequest');
const TO_OBJECT = Object.freeze({ defaults: true, arrays: true, objects: true });

/** `grpc.status` number -> name (`3` -> `"INVALID_ARGUMENT"`). */
const CODE_NAMES = Object.freeze(
  Object.fromEntries(
    Object.entries(grpc.status)
      .filter(([, value]) => typeof value === 'number')
      .map(([name, value]) => [value, name]),
  ),
);

/**
 * One problem of a request, from a `google.rpc.BadRequest` detail.
 *
 * @typedef {object} FieldViolation
 * @property {string} field path of the field in the request, built from proto field
 *   names and indices, e.g. `steps[1].depends_on[0]`
 * @property {string} description what is wrong with it
 * @property {string} reason a stable UPPER_SNAKE code of the problem (`REQUIRED`,
 *   `UNKNOWN_STEP`, ...), `""` when the server sent none
 */

/**
 * What a {@link PodiumError} is made of.
 *
 * @typedef {object} PodiumErrorFields
 * @property {string} [reason] `ErrorInfo.reason`
 * @property {string} [domain] `ErrorInfo.domain`
 * @property {Record<string, string>} [metadata] `ErrorInfo.metadata`
 * @property {FieldViolation[]} [fieldViolations] every `BadRequest` field violation
 * @property {unknown} [cause] the original error (a grpc-js `ServiceError`)
 */

/**
 * A call to Podium failed. Subclasses name the status code; test with `instanceof`
 * (`error instanceof NotFoundError`) or with `error.reason`.
 */
export class PodiumError extends Error {
  /**
   * @param {number} code a `grpc.status` value
   * @param {string} message the status message
   * @param {PodiumErrorFields} [fields]
   */
  constructor(code, message, fields = {}) {
    super(message, fields.cause === undefined ? undefined : { cause: fields.cause });
    this.name = new.target.name;
    /** The gRPC status code, a `grpc.status` value (`grpc.status.NOT_FOUND` is 5). */
    this.code = code;
    /** The status code's name: `"NOT_FOUND"`, `"INVALID_ARGUMENT"`, ... */
    this.codeName = CODE_NAMES[code] ?? `CODE_${code}`;
    /** `ErrorInfo.reason`: a stable UPPER_SNAKE code (`RUN_NOT_FOUND`), `""` when absent. */
    this.reason = fields.reason ?? '';
    /** `ErrorInfo.domain`: `"podium.orchestration.v1"` for Podium's errors, `""` when absent. */
    this.domain = fields.domain ?? '';
    /**
     * `ErrorInfo.metadata` (e.g. `{ run_id }`), frozen. The raw gRPC trailers are
     * `error.cause.metadata`.
     *
     * @type {Readonly<Record<string, string>>}
     */
    this.metadata = Object.freeze({ ...fields.metadata });
    /**
     * Every `BadRequest` field violation, in the server's order (frozen).
     *
     * @type {ReadonlyArray<Readonly<FieldViolation>>}
     */
    this.fieldViolations = Object.freeze(
      (fields.fieldViolations ?? []).map((v) =>
        Object.freeze({ field: v.field ?? '', description: v.description ?? '', reason: v.reason ?? '' }),
      ),
    );
  }

  /**
   * The status message, under the name grpc-js `ServiceError`s use (code that read
   * `error.details` keeps working).
   */
  get details() {
    return this.message;
  }

  /**
   * The error on several lines: `CODE: message [REASON]`, then one line per violation.
   *
   * @returns {string}
   */
  describe() {
    let head = `${this.codeName}: ${this.message}`;
    if (this.reason) head += ` [${this.reason}]`;
    const lines = this.fieldViolations.map((v) => `  - ${v.field ? `${v.field}: ` : ''}${v.description}`);
    return [head, ...lines].join('\n');
  }
}

/** INVALID_ARGUMENT: the request (often a definition) was refused; see `fieldViolations`. */
export class ValidationError extends PodiumError {}

/** NOT_FOUND: the named resource does not exist in the caller's organization. */
export class NotFoundError extends PodiumError {}

/** ALREADY_EXISTS: the resource exists already. */
export class AlreadyExistsError extends PodiumError {}

/**
 * FAILED_PRECONDITION: the resource is not in a state that allows the call (e.g. resuming
 * a running run, deciding an approval twice).
 */
export class FailedPreconditionError extends PodiumError {}

/** RESOURCE_EXHAUSTED: a quota or budget was reached. */
export class ResourceExhaustedError extends PodiumError {}

/** PERMISSION_DENIED: the caller may not do this. */
export class PermissionDeniedError extends PodiumError {}

/** UNAUTHENTICATED: the call carried no valid credentials. */
export class UnauthenticatedError extends PodiumError {}

/**
 * UNIMPLEMENTED: the server does not implement this RPC (an older Podium, or a part of
 * the contract that has not landed yet).
 */
export class UnimplementedError extends PodiumError {}

/**
 * UNAVAILABLE: the server cannot be reached, is starting, or is shutting down. Unary
 * calls are not retried by this client; `watchRun` reconnects and throws it only after
 * `maxReconnects` attempts in a row.
 */
export class UnavailableError extends PodiumError {}

/** DEADLINE_EXCEEDED: the call did not finish within its deadline (`timeoutMs`). */
export class DeadlineExceededError extends PodiumError {}

/** @type {ReadonlyMap<number, typeof PodiumError>} */
const CLASSES = new Map([
  [grpc.status.INVALID_ARGUMENT, ValidationError],
  [grpc.status.NOT_FOUND, NotFoundError],
  [grpc.status.ALREADY_EXISTS, AlreadyExistsError],
  [grpc.status.FAILED_PRECONDITION, FailedPreconditionError],
  [grpc.status.RESOURCE_EXHAUSTED, ResourceExhaustedError],
  [grpc.status.PERMISSION_DENIED, PermissionDeniedError],
  [grpc.status.UNAUTHENTICATED, UnauthenticatedError],
  [grpc.status.UNIMPLEMENTED, UnimplementedError],
  [grpc.status.UNAVAILABLE, UnavailableError],
  [grpc.status.DEADLINE_EXCEEDED, DeadlineExceededError],
]);

/**
 * Decode a serialized `google.rpc.Status` into its code, message and unpacked details.
 * Details of other types (`RetryInfo`, ...) are ignored.
 *
 * @param {Uint8Array} bytes the value of the `grpc-status-details-bin` trailer
 * @returns {{ code: number, message: string } & Required<Omit<PodiumErrorFields, 'cause'>>}
 * @throws {Error} when `bytes` is not a Status (or a detail of a known type is corrupt)
 */
export function decodeStatus(bytes) {
  const status = /** @type {any} */ (StatusType.toObject(StatusType.decode(bytes), TO_OBJECT));
  const result = {
    code: status.code,
    message: status.message,
    reason: '',
    domain: '',
    /** @type {Record<string, string>} */
    metadata: {},
    /** @type {FieldViolation[]} */
    fieldViolations: [],
  };
  for (const detail of status.details) {
    const typeName = detail.type_url.slice(detail.type_url.lastIndexOf('/') + 1);
    if (typeName === 'google.rpc.ErrorInfo') {
      const info = /** @type {any} */ (ErrorInfoType.toObject(ErrorInfoType.decode(detail.value), TO_OBJECT));
      result.reason = info.reason;
      result.domain = info.domain;
      result.metadata = info.metadata;
    } else if (typeName === 'google.rpc.BadRequest') {
      const bad = /** @type {any} */ (BadRequestType.toObject(BadRequestType.decode(detail.value), TO_OBJECT));
      result.fieldViolations.push(...bad.field_violations);
    }
  }
  return result;
}

/**
 * The {@link PodiumError} of a status code, message and rich-status fields.
 *
 * @param {number} code a `grpc.status` value
 * @param {string} message
 * @param {PodiumErrorFields} [fields]
 * @returns {PodiumError}
 */
export function fromStatus(code, message, fields) {
  const Class = CLASSES.get(code) ?? PodiumError;
  return new Class(code, message, fields);
}

/**
 * The {@link PodiumError} of a failed grpc-js call (a `ServiceError`, or the `error`
 * of a stream), with the `google.rpc` details of its `grpc-status-details-bin` trailer
 * and the original error as `cause`. A PodiumError is returned as it is; anything
 * without a numeric `code` becomes a PodiumError with code UNKNOWN. A trailer that
 * cannot be decoded, or whose code contradicts the call's, is ignored (the error keeps
 * its code and message, without details).
 *
 * @param {unknown} error
 * @returns {PodiumError}
 */
export function fromServiceError(error) {
  if (error instanceof PodiumError) return error;
  const serviceError = /** @type {Partial<grpc.ServiceError>} */ (error ?? {});
  if (typeof serviceError.code !== 'number') {
    const message = error instanceof Error ? error.message : String(error);
    return new PodiumError(grpc.status.UNKNOWN, message, { cause: error });
  }
  const code = serviceError.code;
  const message = serviceError.details ?? serviceError.message ?? '';
  /** @type {PodiumErrorFields} */
  let fields = {};
  const trailer = serviceError.metadata?.get?.(STATUS_DETAILS_KEY)?.[0];
  if (trailer instanceof Uint8Array) {
    try {
      const status = decodeStatus(trailer);
      if (status.code === code) fields = status;
    } catch {
      // A corrupt trailer: keep the code and message.
    }
  }
  return fromStatus(code, message, {
    reason: fields.reason,
    domain: fields.domain,
    metadata: fields.metadata,
    fieldViolations: fields.fieldViolations,
    cause: error,
  });
}
