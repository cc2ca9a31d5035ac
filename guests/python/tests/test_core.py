"""The pure helpers: reasons must read exactly as the Rust SDK's (and the JS SDK's)."""

import os
import sys
import unittest
from dataclasses import dataclass
from typing import Optional

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import fake_world  # noqa: E402

fake_world.install()  # the package imports the generated bindings

from passerelle_guest.core import CodeTable, call, decode_json, map_of, publish, reject, retry  # noqa: E402


@dataclass
class Owner:
    id: int


@dataclass
class Account:
    Name: str
    Status__c: str
    owner: Optional[Owner] = None


def decode(body):
    try:
        return decode_json("body", body.encode(), Account)
    except Exception as failure:
        return failure


class DecodeTest(unittest.TestCase):
    def test_errors_name_the_field_and_the_problem(self):
        self.assertEqual(
            decode('{"Name": "x", "Status__c": 3}'),
            reject("body: Status__c: invalid type: integer `3`, expected a string"),
        )
        self.assertEqual(decode('{"Status__c": "A"}'), reject("body: missing field `Name`"))
        self.assertEqual(
            decode('{"Name": "x", "Status__c": "A", "owner": {"id": "7"}}'),
            reject('body: owner.id: invalid type: string "7", expected an integer'),
        )

    def test_a_dataclass_is_filled(self):
        account = decode('{"Name": "x", "Status__c": "A", "owner": {"id": 7}, "extra": true}')
        self.assertEqual(account, Account("x", "A", Owner(7)))
        self.assertEqual(decode('{"Name": "x", "Status__c": "A"}'), Account("x", "A", None))

    def test_errors_say_when_it_is_not_json(self):
        self.assertEqual(decode("hello").reason, "body is not JSON: Expecting value: line 1 column 1 (char 0)")
        self.assertTrue(decode("").reason.startswith("body is not JSON: "))
        self.assertTrue(decode_failure(b"\xff").startswith("body is not JSON: invalid UTF-8"))

    def test_schemas_as_in_the_js_sdk(self):
        schema = {"Id": "string", "tags": ["string"], "score": "number?", "meta": "object?"}
        self.assertEqual(
            decode_json("body", '{"Id": "a", "tags": ["x"], "score": 1.5}', schema),
            {"Id": "a", "tags": ["x"], "score": 1.5},
        )
        self.assertEqual(
            decode_failure('{"Id": "a", "tags": ["x", 2]}', schema),
            "body: tags[1]: invalid type: integer `2`, expected a string",
        )
        self.assertEqual(
            decode_failure('{"Id": null, "tags": []}', schema), "body: Id: invalid type: null, expected a string"
        )
        self.assertEqual(decode_failure("[1]", schema), "body: invalid type: sequence, expected a map")
        self.assertEqual(
            decode_failure('{"Id": true}', {"Id": int}), "body: Id: invalid type: boolean `true`, expected an integer"
        )


def decode_failure(body, schema="any"):
    try:
        decode_json("body", body, schema)
    except Exception as failure:
        return failure.reason
    raise AssertionError("decoded")


class CodeTableTest(unittest.TestCase):
    STATUS = {"CLIENT_ACTIVE": 70}

    def test_absent_is_the_default(self):
        table = CodeTable.parse("status_codes", None, self.STATUS)
        self.assertEqual(table.code("Status__c", "CLIENT_ACTIVE"), 70)
        self.assertEqual(table.name("status", 70), "CLIENT_ACTIVE")

    def test_configured_replaces_the_default(self):
        table = CodeTable.parse("status_codes", '{"PROSPECT": 10}', self.STATUS)
        self.assertEqual(table.code("Status__c", "PROSPECT"), 10)
        with self.assertRaises(Exception) as raised:
            table.code("Status__c", "CLIENT_ACTIVE")
        self.assertEqual(raised.exception, reject('unknown Status__c "CLIENT_ACTIVE": not in status_codes'))

    def test_unknown_codes_are_rejected_naming_field_and_value(self):
        table = CodeTable.parse("status_codes", None, self.STATUS)
        with self.assertRaises(Exception) as raised:
            table.name("status", 71)
        self.assertEqual(raised.exception, reject("unknown status 71: not in status_codes"))

    def test_shared_codes_are_ambiguous_in_reverse(self):
        config = '{"LIVE": 70, "CLIENT_ACTIVE": 70, "ACTIVE": 70, "PROSPECT": 10}'
        table = CodeTable.parse("status_codes", config, self.STATUS)
        self.assertEqual(table.name("status", 10), "PROSPECT")
        with self.assertRaises(Exception) as raised:
            table.name("status", 70)
        self.assertEqual(
            raised.exception,
            reject('ambiguous status 70: status_codes maps "ACTIVE", "CLIENT_ACTIVE" and "LIVE" to it'),
        )

    def test_a_bad_table_is_rejected_naming_the_key(self):
        with self.assertRaises(Exception) as raised:
            CodeTable.parse("status_codes", '["CLIENT_ACTIVE"]', self.STATUS)
        self.assertEqual(raised.exception, reject("config `status_codes`: invalid type: sequence, expected a map"))
        with self.assertRaises(Exception) as raised:
            CodeTable.parse("ids", '{"DE": "80"}', {})
        self.assertEqual(raised.exception, reject('config `ids`: DE: invalid type: string "80", expected an integer'))
        with self.assertRaises(Exception) as raised:
            CodeTable.parse("ids", "DE=80", {})
        self.assertTrue(raised.exception.reason.startswith("config `ids` is not JSON: "))


class ActionsTest(unittest.TestCase):
    def test_call_carries_the_args_as_a_json_object(self):
        c = call("shop", "upsertBusiness", {"crmId": "gg-11", "name": "Élan"})
        self.assertEqual((c.endpoint, c.operation, c.args), ("shop", "upsertBusiness", '{"crmId":"gg-11","name":"Élan"}'))

    def test_call_args_must_be_an_object(self):
        with self.assertRaises(Exception) as raised:
            call("shop", "upsertBusiness", [1, 2])
        self.assertEqual(raised.exception, reject("call shop.upsertBusiness: args must be a JSON object, not [1,2]"))

    def test_publish_encodes_text_and_values(self):
        self.assertEqual(publish("ex", "k", "é").body, "é".encode())
        p = publish("ex", "k", {"a": 1}, {"x-a": "1"})
        self.assertEqual((p.body, p.headers), (b'{"a":1}', [("x-a", "1")]))

    def test_retry_is_a_failure_too(self):
        self.assertEqual((retry("later").kind, retry("later").reason), ("retry", "later"))
        self.assertEqual(map_of("integer").values, "integer")


if __name__ == "__main__":
    unittest.main()
