// Decoding JSON with a small schema, so that a bad body is a reject that
// names the field and the problem, worded like the Rust SDK's (serde):
//   body: missing field `Name`
//   body: Status__c: invalid type: integer `3`, expected a string
//   body is not JSON: unexpected end of data at line 1 column 10
//
// A schema is one of:
//   "string" "number" "integer" "boolean" "object" "array" "any"
//   any of those with a trailing "?": may be absent or null
//   { field: schema, ... }   an object with at least these fields (others are kept)
//   [schema]                 an array whose items match schema
//   mapOf(schema)            an object of any keys whose values match schema

import { reject } from "./failure.js";

const MAP_OF = Symbol("passerelle.mapOf");

/** A schema for an object of any keys whose values all match `schema`. */
export function mapOf(schema) {
  return { [MAP_OF]: schema };
}

/**
 * Parses `input` (bytes or text) as JSON and checks it against `schema`
 * (none: any JSON). A problem throws a reject whose reason starts with `what`.
 */
export function decodeJson(what, input, schema = "any") {
  const value = parseJson(what, input);
  const problem = check(value, schema, []);
  if (problem) {
    const [path, text] = problem;
    throw reject(path.length ? `${what}: ${formatPath(path)}: ${text}` : `${what}: ${text}`);
  }
  return value;
}

function parseJson(what, input) {
  let text = input;
  if (typeof input !== "string") {
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(input);
    } catch {
      throw reject(`${what} is not JSON: invalid UTF-8`);
    }
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw reject(`${what} is not JSON: ${syntaxProblem(error)}`);
  }
}

/** SpiderMonkey's "JSON.parse: X at line L column C of the JSON data" as "X at line L column C". */
function syntaxProblem(error) {
  return String(error.message)
    .replace(/^JSON\.parse: /, "")
    .replace(/ of the JSON data$/, "");
}

/** serde_path_to_error's way: `owner.id`, `items[0].id`. */
function formatPath(path) {
  return path.map((p, i) => (typeof p === "number" ? `[${p}]` : i === 0 ? p : `.${p}`)).join("");
}

const EXPECTED = {
  string: "a string",
  number: "a number",
  integer: "an integer",
  boolean: "a boolean",
  object: "a map",
  array: "a sequence",
};

/** The first problem of `value` against `schema`, as [path, text], or null. */
function check(value, schema, path) {
  if (typeof schema === "string") {
    const optional = schema.endsWith("?");
    const type = optional ? schema.slice(0, -1) : schema;
    if (optional && (value === undefined || value === null)) return null;
    if (type === "any") return null;
    if (!(type in EXPECTED)) throw new TypeError(`unknown schema type ${JSON.stringify(schema)}`);
    return fits(value, type) ? null : [path, invalidType(value, EXPECTED[type])];
  }
  if (Array.isArray(schema)) {
    if (schema.length !== 1) throw new TypeError("an array schema has exactly one item schema");
    if (!Array.isArray(value)) return [path, invalidType(value, "a sequence")];
    for (let i = 0; i < value.length; i++) {
      const problem = check(value[i], schema[0], [...path, i]);
      if (problem) return problem;
    }
    return null;
  }
  if (schema && typeof schema === "object") {
    if (!isObject(value)) return [path, invalidType(value, "a map")];
    if (MAP_OF in schema) {
      for (const key of Object.keys(value)) {
        const problem = check(value[key], schema[MAP_OF], [...path, key]);
        if (problem) return problem;
      }
      return null;
    }
    for (const [field, fieldSchema] of Object.entries(schema)) {
      const present = Object.hasOwn(value, field);
      if (!present && !isOptional(fieldSchema)) return [path, `missing field \`${field}\``];
      const problem = check(present ? value[field] : undefined, fieldSchema, [...path, field]);
      if (problem) return problem;
    }
    return null;
  }
  throw new TypeError(`not a schema: ${String(schema)}`);
}

function isOptional(schema) {
  return typeof schema === "string" && schema.endsWith("?");
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function fits(value, type) {
  switch (type) {
    case "string":
      return typeof value === "string";
    case "number":
      return typeof value === "number";
    case "integer":
      return Number.isInteger(value);
    case "boolean":
      return typeof value === "boolean";
    case "object":
      return isObject(value);
    case "array":
      return Array.isArray(value);
  }
  return false;
}

/** serde's wording: "invalid type: integer `3`, expected a string". */
function invalidType(value, expected) {
  return `invalid type: ${unexpected(value)}, expected ${expected}`;
}

function unexpected(value) {
  if (value === undefined || value === null) return "null";
  if (typeof value === "boolean") return `boolean \`${value}\``;
  if (typeof value === "number") return Number.isInteger(value) ? `integer \`${value}\`` : `floating point \`${value}\``;
  if (typeof value === "string") return `string ${JSON.stringify(value)}`;
  if (Array.isArray(value)) return "sequence";
  return "map";
}
