// A stand-in for the host interface of wit/transform.wit, recording what the
// SDK does with it.
export const lines = [];
export const values = new Map();

export function log(level, message) {
  if (!["trace", "debug", "info", "warn", "error"].includes(level)) throw new TypeError(`not a level: ${level}`);
  if (typeof message !== "string") throw new TypeError("the message must be a string");
  lines.push([level, message]);
}

// The levels the stand-in host keeps: the tests set it (info and up by default).
export const kept = new Set(["info", "warn", "error"]);

export function logEnabled(level) {
  if (!["trace", "debug", "info", "warn", "error"].includes(level)) throw new TypeError(`not a level: ${level}`);
  return kept.has(level);
}

export function config(key) {
  return values.get(key);
}
