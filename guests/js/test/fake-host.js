// A stand-in for the host interface of wit/transform.wit, recording what the
// SDK does with it.
export const lines = [];
export const values = new Map();

export function log(level, message) {
  if (!["trace", "debug", "info", "warn", "error"].includes(level)) throw new TypeError(`not a level: ${level}`);
  if (typeof message !== "string") throw new TypeError("the message must be a string");
  lines.push([level, message]);
}

export function config(key) {
  return values.get(key);
}
