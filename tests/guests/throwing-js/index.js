// Test fixture, not shipped: a transform that throws an exception when the
// body is {"boom": true}, two calls deep, and otherwise returns one call
// (fixture.echo with the body as args). The SDK logs the exception at error
// level and traps, so the host reports
//   the transform failed: crashed (...): RangeError: fixture exception: boom (at tests/guests/throwing-js/index.js:...)

import { asTransform, call } from "@passerelle/guest";

function explode() {
  throw new RangeError("fixture exception: boom");
}

function check(body) {
  if (body.boom === true) explode();
}

function run(msg) {
  const body = msg.json({ boom: "boolean?" });
  check(body);
  return [call("fixture", "echo", body)];
}

export const transform = asTransform(run);
