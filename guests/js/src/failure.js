// Failures: what a transform throws (or returns) when a message gets no
// actions. The SDK's own helpers throw them too, like `?` in the Rust SDK.

/** A message that cannot succeed as it is (`reject`) or may later (`retry`). */
export class Failure extends Error {
  /**
   * @param {"reject" | "retry"} kind
   * @param {string} reason
   */
  constructor(kind, reason) {
    super(reason);
    this.name = "Failure";
    this.kind = kind;
    this.reason = String(reason);
  }
}

/** A permanent failure: the message is dead-lettered with this reason. */
export function reject(reason) {
  return new Failure("reject", reason);
}

/** A temporary failure: the whole message is tried again later. */
export function retry(reason) {
  return new Failure("retry", reason);
}
