// Write Passerelle transforms in JavaScript.
//
// A transform is a WebAssembly component that turns one broker message into
// the actions the host performs (HTTP calls to declared operations, or
// publishes). This package holds the helpers every transform needs (decode
// the JSON body, read the route's configuration, build calls, log) and
// `asTransform`, which turns a function into the component's export:
//
//   import { asTransform, call, CodeTable } from "@passerelle/guest";
//
//   function map(msg) {
//     const account = msg.json({ Id: "string", Status__c: "string" }); // bad body: a reject naming the field
//     const statuses = CodeTable.fromConfig("status_codes", { CLIENT_ACTIVE: 70 });
//     return [call("shop", "upsertBusiness", { crmId: account.Id, status: statuses.code("Status__c", account.Status__c) })];
//   }
//
//   export const transform = asTransform(map);
//
// `throw reject(reason)` for a message that can never succeed as it is (it is
// dead-lettered with the reason), `throw retry(reason)` for a temporary
// problem, and `return []` when there is nothing to do. Any other exception
// crashes the transform: its name, message and place are logged at error
// level, and the host puts them in the dead-letter reason.

import * as host from "passerelle:transform/host@0.1.0";

import { actionsProblem } from "./actions.js";
import { lastWords } from "./crash.js";
import { decodeJson } from "./decode.js";
import { Failure } from "./failure.js";
import { DISABLED_FEATURES } from "./features.js";
import { installSandbox } from "./sandbox.js";
import { CodeTable as PureCodeTable } from "./table.js";

export { call, publish } from "./actions.js";
export { decodeJson, mapOf } from "./decode.js";
export { Failure, reject, retry } from "./failure.js";
export { lastWords } from "./crash.js";

/**
 * Logging through the host: lines go to its log, tagged with the route and the
 * transform's version. A line the host would drop (below its log level) is not
 * sent, and a function given instead of a message is not even called:
 * `log.debug(() => \`account ${JSON.stringify(account)}\`)`.
 */
export const log = {
  /** Whether the host keeps lines at `level` (always true for "error"). */
  enabled: (level) => host.logEnabled(level),
  trace: (message) => emit("trace", message),
  debug: (message) => emit("debug", message),
  info: (message) => emit("info", message),
  warn: (message) => emit("warn", message),
  error: (message) => emit("error", message),
};

function emit(level, message) {
  if (host.logEnabled(level)) host.log(level, String(typeof message === "function" ? message() : message));
}

/** This route's configuration value for `key`, as configured; undefined when absent. */
export function config(key) {
  return host.config(key) ?? undefined;
}

/**
 * This route's configuration value for `key`, decoded from JSON (and checked
 * against `schema`, see decodeJson); `defaultValue` when absent. A value that
 * is not JSON or does not fit is a reject naming the key and the problem.
 */
export function configJson(key, defaultValue, schema = "any") {
  const text = config(key);
  return text === undefined ? defaultValue : decodeJson(`config \`${key}\``, text, schema);
}

/** Name <-> code tables from the configuration (see table.js). */
export class CodeTable extends PureCodeTable {
  /**
   * Reads the table at configuration `key`: a JSON object of names to
   * integers. When the key is absent the table is `defaults`; a configured
   * table replaces the defaults whole.
   */
  static fromConfig(key, defaults = {}) {
    return PureCodeTable.parse(key, config(key), defaults);
  }
}

/** One message taken from the broker, as the transform sees it. */
export class Message {
  constructor(raw) {
    /** @type {Uint8Array} (copied: the glue's array is another realm's, so instanceof would fail) */
    this.body = new Uint8Array(raw.body);
    /** @type {string | undefined} */
    this.contentType = raw.contentType ?? undefined;
    /** @type {string} */
    this.routingKey = raw.routingKey;
    /** @type {{name: string, value: string}[]} */
    this.headers = raw.headers;
    /** @type {string | undefined} */
    this.messageId = raw.messageId ?? undefined;
    /** 1 on first delivery; grows with every retry of the whole message. */
    this.attempt = raw.attempt;
  }

  /**
   * The body decoded as JSON and checked against `schema` (see decodeJson);
   * a bad body is a reject whose reason names the field path and the problem.
   */
  json(schema = "any") {
    return decodeJson("body", this.body, schema);
  }

  /** The body as text (UTF-8). */
  text() {
    return new TextDecoder().decode(this.body);
  }

  /** The value of the first header with this name (names compare as given). */
  header(name) {
    return this.headers.find((h) => h.name === name)?.value;
  }
}

/**
 * The component's `transform` export, made of `fn(msg)` which returns a list
 * of actions (or a promise of one) or throws a failure:
 *   export const transform = asTransform(map);
 */
export function asTransform(fn) {
  return function transform(raw) {
    let result;
    try {
      result = fn(new Message(raw));
    } catch (error) {
      return settle(error);
    }
    if (result && typeof result.then === "function") return result.then(outcome, settle);
    return outcome(result);
  };
}

function outcome(result) {
  if (result instanceof Failure) return failure(result);
  const problem = actionsProblem(result);
  if (problem) crash(new TypeError(problem));
  return { tag: "ok", val: result };
}

function settle(error) {
  if (error instanceof Failure) return failure(error);
  crash(error);
}

function failure(f) {
  return { tag: "err", val: { tag: f.kind, val: f.reason } };
}

/**
 * The contract's last words (wit/transform.wit): log why at error level,
 * then trap. Throwing out of the export is what traps a componentize-js
 * component (an exception is never the `failure` variant); the host reports
 * "the transform failed: crashed (...): <this line>".
 */
function crash(error) {
  let words;
  try {
    words = lastWords(error);
  } catch {
    words = "uncaught exception (its description failed)";
  }
  host.log("error", words);
  throw new Error(`transform crashed: ${words}`);
}

// `console` writes to the host's log: the component has no stdio, so
// anything written there would otherwise be lost.
function line(args) {
  return args.map((a) => (typeof a === "string" ? a : describe(a))).join(" ");
}
function describe(value) {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}
// The arguments are described (JSON) only when the level is kept.
Object.assign(globalThis.console, {
  trace: (...args) => log.trace(() => line(args)),
  debug: (...args) => log.debug(() => line(args)),
  log: (...args) => log.info(() => line(args)),
  info: (...args) => log.info(() => line(args)),
  warn: (...args) => log.warn(() => line(args)),
  error: (...args) => log.error(() => line(args)),
});

installSandbox(DISABLED_FEATURES);
