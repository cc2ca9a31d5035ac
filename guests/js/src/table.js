// Name <-> code tables read from a route's configuration, e.g. the shop's
// status codes ({"CLIENT_ACTIVE": 70}): mappings look names up one way, the
// reverse mappings the other way, and both reject what is not there. The
// reasons are worded exactly as the Rust SDK's CodeTable words them.

import { decodeJson, mapOf } from "./decode.js";
import { reject } from "./failure.js";

export class CodeTable {
  /**
   * A table of names to integer codes, as if read from configuration `key`
   * (the key is named in every reject reason).
   * @param {string} key
   * @param {Record<string, number> | Map<string, number>} codes
   */
  constructor(key, codes) {
    this.key = key;
    this.codes = new Map(codes instanceof Map ? codes : Object.entries(codes));
  }

  /**
   * The table in configuration value `text` (a JSON object of names to
   * integers); `defaults` when there is no such value. A configured table
   * replaces the defaults whole (it is not merged with them).
   * @param {string} key
   * @param {string | null | undefined} text
   * @param {Record<string, number>} defaults
   */
  static parse(key, text, defaults = {}) {
    if (text === undefined || text === null) return new CodeTable(key, defaults);
    return new CodeTable(key, decodeJson(`config \`${key}\``, text, mapOf("integer")));
  }

  /**
   * The code of `name`, read from message field `field`; an unknown name is
   * a reject like `unknown Status__c "CLIENT_GONE": not in status_codes`.
   */
  code(field, name) {
    if (!this.codes.has(name)) throw reject(`unknown ${field} ${JSON.stringify(name)}: not in ${this.key}`);
    return this.codes.get(name);
  }

  /**
   * The one name of `code`, read from message field `field`; an unknown code
   * is a reject like `unknown status 71: not in status_codes`, and so is a
   * code that several names share (the reverse is ambiguous).
   */
  name(field, code) {
    const names = [...this.codes].filter(([, c]) => c === code).map(([n]) => n);
    names.sort(byCodeUnits);
    if (names.length === 1) return names[0];
    if (names.length === 0) throw reject(`unknown ${field} ${code}: not in ${this.key}`);
    throw reject(`ambiguous ${field} ${code}: ${this.key} maps ${quotedList(names)} to it`);
  }
}

/** The order of Rust's BTreeMap<String, _> for the names in use (ASCII). */
function byCodeUnits(a, b) {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** `"A", "B" and "C"`. */
function quotedList(names) {
  const quoted = names.map((n) => JSON.stringify(n));
  const last = quoted.pop();
  return quoted.length ? `${quoted.join(", ")} and ${last}` : last;
}
