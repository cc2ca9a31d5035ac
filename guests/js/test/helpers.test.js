// The pure helpers: reasons must read exactly as the Rust SDK's (and the Python SDK's).
import assert from "node:assert/strict";
import { test } from "node:test";
import { runInNewContext } from "node:vm";

import { call, publish } from "../src/actions.js";
import { decodeJson, mapOf } from "../src/decode.js";
import { Failure, reject, retry } from "../src/failure.js";
import { CodeTable } from "../src/table.js";

const ACCOUNT = { Name: "string", Status__c: "string", owner: { id: "integer" } };

function failureOf(fn) {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof Failure, `not a Failure: ${error}`);
    return `${error.kind}: ${error.reason}`;
  }
  assert.fail("no failure");
}

const bytes = (text) => new TextEncoder().encode(text);
const decode = (body, schema = ACCOUNT) => failureOf(() => decodeJson("body", bytes(body), schema));

test("decode errors name the field and the problem", () => {
  assert.equal(decode('{"Name": "x", "Status__c": 3}'), "reject: body: Status__c: invalid type: integer `3`, expected a string");
  assert.equal(decode('{"Status__c": "A"}'), "reject: body: missing field `Name`");
  assert.equal(
    decode('{"Name": "x", "Status__c": "A", "owner": {"id": "7"}}'),
    'reject: body: owner.id: invalid type: string "7", expected an integer',
  );
  assert.equal(decode('{"a": [1, "x"]}', { a: ["integer"] }), 'reject: body: a[1]: invalid type: string "x", expected an integer');
  assert.equal(decode("[1]"), "reject: body: invalid type: sequence, expected a map");
  assert.equal(decode('{"Name": 1.5}', { Name: "string" }), "reject: body: Name: invalid type: floating point `1.5`, expected a string");
});

test("decode errors say when it is not JSON", () => {
  assert.match(decode("hello"), /^reject: body is not JSON: /);
  assert.match(decode(""), /^reject: body is not JSON: /);
  assert.equal(failureOf(() => decodeJson("body", new Uint8Array([0xff]))), "reject: body is not JSON: invalid UTF-8");
});

test("optional fields may be absent or null; other fields are kept", () => {
  const schema = { Id: "string", note: "string?" };
  assert.deepEqual(decodeJson("body", '{"Id": "a", "x": 1}', schema), { Id: "a", x: 1 });
  assert.deepEqual(decodeJson("body", '{"Id": "a", "note": null}', schema), { Id: "a", note: null });
});

const STATUS = { CLIENT_ACTIVE: 70 };

test("a code table: absent is the default, configured replaces it", () => {
  const table = CodeTable.parse("status_codes", undefined, STATUS);
  assert.equal(table.code("Status__c", "CLIENT_ACTIVE"), 70);
  assert.equal(table.name("status", 70), "CLIENT_ACTIVE");
  const configured = CodeTable.parse("status_codes", '{"PROSPECT": 10}', STATUS);
  assert.equal(configured.code("Status__c", "PROSPECT"), 10);
  assert.equal(
    failureOf(() => configured.code("Status__c", "CLIENT_ACTIVE")),
    'reject: unknown Status__c "CLIENT_ACTIVE": not in status_codes',
  );
  assert.equal(failureOf(() => table.code("Status__c", "constructor")), 'reject: unknown Status__c "constructor": not in status_codes');
});

test("unknown and shared codes are rejected in reverse", () => {
  const table = CodeTable.parse("status_codes", '{"LIVE": 70, "CLIENT_ACTIVE": 70, "ACTIVE": 70, "PROSPECT": 10}', STATUS);
  assert.equal(table.name("status", 10), "PROSPECT");
  assert.equal(failureOf(() => table.name("status", 71)), "reject: unknown status 71: not in status_codes");
  assert.equal(
    failureOf(() => table.name("status", 70)),
    'reject: ambiguous status 70: status_codes maps "ACTIVE", "CLIENT_ACTIVE" and "LIVE" to it',
  );
});

test("a bad table is rejected naming the key", () => {
  assert.equal(
    failureOf(() => CodeTable.parse("status_codes", '["CLIENT_ACTIVE"]', STATUS)),
    "reject: config `status_codes`: invalid type: sequence, expected a map",
  );
  assert.equal(
    failureOf(() => CodeTable.parse("ids", '{"DE": "80"}')),
    'reject: config `ids`: DE: invalid type: string "80", expected an integer',
  );
  assert.match(failureOf(() => CodeTable.parse("ids", "DE=80")), /^reject: config `ids` is not JSON: /);
});

test("call carries the args as a JSON object", () => {
  assert.deepEqual(call("shop", "upsertBusiness", { crmId: "gg-11" }), {
    tag: "call",
    val: { endpoint: "shop", operation: "upsertBusiness", args: '{"crmId":"gg-11"}' },
  });
  assert.equal(
    failureOf(() => call("shop", "upsertBusiness", [1, 2])),
    "reject: call shop.upsertBusiness: args must be a JSON object, not [1,2]",
  );
});

test("publish encodes text and values, headers as pairs", () => {
  const p = publish("ex", "k", { a: 1 }, { "x-a": "1" });
  assert.deepEqual([...p.val.body], [...bytes('{"a":1}')]);
  assert.deepEqual(p.val.headers, [{ name: "x-a", value: "1" }]);
  assert.deepEqual([...publish("ex", "k", "é").val.body], [...bytes("é")]);
  // The message body comes from the glue, another realm: still bytes, not JSON.
  const foreign = runInNewContext("new Uint8Array([104, 105])");
  assert.deepEqual([...publish("ex", "k", foreign).val.body], [104, 105]);
});

test("reject and retry are failures; mapOf is a schema", () => {
  assert.equal(reject("no").kind, "reject");
  assert.equal(retry("later").reason, "later");
  assert.deepEqual(decodeJson("c", '{"a": 1}', mapOf("integer")), { a: 1 });
});
