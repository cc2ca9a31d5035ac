// asTransform: failures become the `failure` variant, exceptions are logged
// at error level (the last words) and thrown on (which traps the component),
// actions are checked before they cross.
import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";

import { kept, lines, values } from "./fake-host.js";
import { asTransform, call, CodeTable, configJson, log, reject, retry } from "../src/index.js";
import { lastWords } from "../src/crash.js";

const raw = (body) => ({
  body: new TextEncoder().encode(body),
  contentType: "application/json",
  routingKey: "crm.account",
  headers: [{ name: "a", value: "1" }],
  messageId: undefined,
  attempt: 1,
});

beforeEach(() => {
  lines.length = 0;
  values.clear();
});

test("actions are returned as the ok variant", async () => {
  const transform = asTransform((msg) => [call("shop", "op", { h: msg.header("a"), body: msg.json() })]);
  assert.deepEqual(transform(raw('{"x": 1}')), {
    tag: "ok",
    val: [{ tag: "call", val: { endpoint: "shop", operation: "op", args: '{"h":"1","body":{"x":1}}' } }],
  });
  const asynchronous = asTransform(async () => []);
  assert.deepEqual(await asynchronous(raw("{}")), { tag: "ok", val: [] });
});

test("failures are the failure variant, thrown or returned", async () => {
  const thrown = asTransform(() => {
    throw reject("no");
  });
  assert.deepEqual(thrown(raw("{}")), { tag: "err", val: { tag: "reject", val: "no" } });
  assert.deepEqual(asTransform(() => retry("later"))(raw("{}")), { tag: "err", val: { tag: "retry", val: "later" } });
  const rejecting = asTransform(async (msg) => msg.json({ Name: "string" }));
  assert.deepEqual(await rejecting(raw("{}")), { tag: "err", val: { tag: "reject", val: "body: missing field `Name`" } });
  assert.deepEqual(lines, []);
});

function explode() {
  throw new RangeError("fixture exception: boom");
}

test("an exception is logged at error level, then thrown on", () => {
  const transform = asTransform(function run() {
    explode();
  });
  assert.throws(() => transform(raw("{}")), /transform crashed: RangeError: fixture exception: boom/);
  const [level, line] = lines.at(-1);
  assert.equal(level, "error");
  // Node's stack frames are not SpiderMonkey's: only the head is checked here
  // (the frames are checked against a real component by the build's fixtures).
  assert.match(line, /^RangeError: fixture exception: boom/);
});

test("an async exception crashes too", async () => {
  const transform = asTransform(async () => {
    throw new TypeError("late");
  });
  await assert.rejects(async () => transform(raw("{}")), /transform crashed: TypeError: late/);
  assert.equal(lines.at(-1)[0], "error");
});

test("returning something other than actions is a crash", () => {
  assert.throws(() => asTransform(() => undefined)(raw("{}")), /not a list of actions/);
  assert.throws(() => asTransform(() => [{ endpoint: "shop" }])(raw("{}")), /action 0 is \{"endpoint":"shop"\}/);
});

test("SpiderMonkey frames are mapped through the line table, SDK frames left out", () => {
  const table = {
    bundle: "t.bundle.js",
    sources: ["guests/js/src/index.js", "transforms/t/index.js"],
    sdk: [0],
    renames: { check2: "check" },
    lines: [[0, 0, 10, 0], [0, 1, 4, 2, 6, 1, 5, 8], [0, 1, 20, 0]],
  };
  const error = new TypeError("x is undefined");
  error.stack = [
    "wrapper@t.bundle.js:1:3",
    "check2@t.bundle.js:2:9",
    "run@t.bundle.js:3:1",
    "export_transform@/tmp/x/sources/initializer.js:246:28",
    "",
  ].join("\n");
  assert.equal(
    lastWords(error, table),
    "TypeError: x is undefined (at transforms/t/index.js:6:9 in check, transforms/t/index.js:21:1 in run)",
  );
  assert.equal(lastWords("oops", table), 'uncaught "oops" (a thrown value that is not an Error has no stack)');
});

test("console goes to the host's log", () => {
  console.log("hello", { a: 1 });
  console.error("bad");
  assert.deepEqual(lines, [
    ["info", 'hello {"a":1}'],
    ["error", "bad"],
  ]);
});

test("a level the host drops is neither sent nor formatted", () => {
  let formatted = 0;
  const message = () => {
    formatted += 1;
    return "account gg-11";
  };
  log.debug(message);
  console.debug("seen", { a: 1 });
  assert.deepEqual([lines, formatted], [[], 0]);
  assert.equal(log.enabled("debug"), false);
  kept.add("debug");
  try {
    log.debug(message);
    console.debug("seen", { a: 1 });
    assert.deepEqual(lines, [
      ["debug", "account gg-11"],
      ["debug", 'seen {"a":1}'],
    ]);
    assert.equal(formatted, 1);
  } finally {
    kept.delete("debug");
  }
});

test("config tables and values", () => {
  values.set("status_codes", '{"PROSPECT": 10}');
  assert.equal(CodeTable.fromConfig("status_codes", { A: 1 }).code("s", "PROSPECT"), 10);
  assert.equal(CodeTable.fromConfig("country_ids", { FR: 76 }).code("c", "FR"), 76);
  assert.deepEqual(configJson("missing", [1]), [1]);
});

test("the clock and the network are exceptions, not traps", () => {
  assert.throws(() => Date.now(), /Date.now\(\): a transform has no clock/);
  assert.throws(() => new Date(), /new Date\(\): a transform has no clock/);
  assert.equal(new Date(0).toISOString(), "1970-01-01T00:00:00.000Z");
  assert.ok(new Date(0) instanceof Date);
  assert.throws(() => fetch("http://127.0.0.1/"), /a transform has no network or files/);
});
