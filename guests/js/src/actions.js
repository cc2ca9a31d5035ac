// Building actions: the values the WIT export returns, in the shape
// componentize-js expects for the `action` variant ({tag, val}).

import { reject } from "./failure.js";

/**
 * A call to `operation` of `endpoint` (both declared in the host's
 * configuration). `args` must be a plain object, one field per declared
 * parameter; anything else is a reject.
 * @param {string} endpoint
 * @param {string} operation
 * @param {Record<string, unknown>} args
 */
export function call(endpoint, operation, args) {
  const what = `call ${endpoint}.${operation}`;
  let text;
  try {
    text = JSON.stringify(args);
  } catch (error) {
    throw reject(`${what}: ${error.message}`);
  }
  if (args === null || typeof args !== "object" || Array.isArray(args)) {
    throw reject(`${what}: args must be a JSON object, not ${text}`);
  }
  return { tag: "call", val: { endpoint: String(endpoint), operation: String(operation), args: text } };
}

/**
 * A message to publish on `exchange` with `routingKey`. `body` is bytes
 * (Uint8Array), text (sent as UTF-8) or any other value (sent as JSON).
 * `headers` is an object of names to values, or a list of [name, value].
 */
export function publish(exchange, routingKey, body, headers = {}) {
  let bytes;
  // ArrayBuffer.isView, not instanceof: the message's body comes from the
  // generated glue, whose Uint8Array is another realm's.
  if (ArrayBuffer.isView(body)) bytes = new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  else if (body instanceof ArrayBuffer) bytes = new Uint8Array(body);
  else if (typeof body === "string") bytes = new TextEncoder().encode(body);
  else bytes = new TextEncoder().encode(JSON.stringify(body));
  const pairs = Array.isArray(headers) ? headers : Object.entries(headers);
  return {
    tag: "publish",
    val: {
      exchange: String(exchange),
      routingKey: String(routingKey),
      body: bytes,
      headers: pairs.map(([name, value]) => ({ name: String(name), value: String(value) })),
    },
  };
}

/**
 * Why `actions` (what a transform returned) is not a list of actions, or
 * null when it is: checked before it crosses to the host, so a mistake is a
 * crash with a clear reason rather than an error in the generated glue.
 */
export function actionsProblem(actions) {
  if (!Array.isArray(actions)) {
    return `the transform returned ${describe(actions)}, not a list of actions (return [] for "nothing to do")`;
  }
  for (let i = 0; i < actions.length; i++) {
    const action = actions[i];
    const ok =
      action !== null &&
      typeof action === "object" &&
      ((action.tag === "call" && isCall(action.val)) || (action.tag === "publish" && isPublish(action.val)));
    if (!ok) return `action ${i} is ${describe(action)}: build actions with call() or publish()`;
  }
  return null;
}

function isCall(val) {
  return val && ["endpoint", "operation", "args"].every((f) => typeof val[f] === "string");
}

function isPublish(val) {
  return (
    val &&
    typeof val.exchange === "string" &&
    typeof val.routingKey === "string" &&
    ArrayBuffer.isView(val.body) &&
    Array.isArray(val.headers)
  );
}

function describe(value) {
  if (value === undefined) return "undefined";
  try {
    const text = JSON.stringify(value);
    return text.length > 80 ? `${text.slice(0, 77)}...` : text;
  } catch {
    return String(value);
  }
}
