"""as_transform: failures become the `failure` variant, exceptions are logged
at error level (the last words) and escape, actions are checked."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import fake_world  # noqa: E402

HOST = fake_world.install()

from passerelle_guest import CodeTable, as_transform, call, config_json, log, publish, reject, retry  # noqa: E402


def message(body: bytes):
    return fake_world.Message(body, "application/json", "crm.account", [fake_world.Header("a", "1")], None, 1)


def explode():
    raise ValueError("fixture exception: boom")


class TransformTest(unittest.TestCase):
    def setUp(self):
        HOST.lines.clear()
        HOST.values.clear()

    def run_transform(self, function, body=b"{}"):
        return as_transform(function)().transform(message(body))

    def test_actions_cross_as_wit_values(self):
        out = self.run_transform(lambda m: [call("shop", "op", {"h": m.header("a")}), publish("ex", "k", b"x")])
        self.assertEqual(out[0], fake_world.Action_Call(fake_world.Call("shop", "op", '{"h":"1"}')))
        self.assertEqual(out[1], fake_world.Action_Publish(fake_world.Publish("ex", "k", b"x", [])))

    def test_failures_are_the_failure_variant(self):
        def rejecting(m):
            raise reject("no")

        with self.assertRaises(fake_world.Err) as raised:
            self.run_transform(rejecting)
        self.assertEqual(raised.exception.value, fake_world.Failure_Reject("no"))
        with self.assertRaises(fake_world.Err) as raised:
            self.run_transform(lambda m: retry("later"))
        self.assertEqual(raised.exception.value, fake_world.Failure_Retry("later"))
        self.assertEqual(HOST.lines, [])

    def test_an_exception_is_logged_then_escapes(self):
        def run(m):
            explode()

        with self.assertRaises(ValueError):
            self.run_transform(run)
        level, line = HOST.lines[-1]
        self.assertEqual(level, "error")
        self.assertRegex(line, r"^ValueError: fixture exception: boom \(at .*test_transform.py:\d+ in explode, .*in run\)$")

    def test_a_chained_exception_names_its_cause(self):
        def run(m):
            try:
                {}["Name"]
            except KeyError as e:
                raise RuntimeError("lookup failed") from e

        with self.assertRaises(RuntimeError):
            self.run_transform(run)
        self.assertRegex(HOST.lines[-1][1], r"^RuntimeError: lookup failed \(at .*\); while handling KeyError: 'Name' \(at ")

    def test_returning_something_else_is_a_crash(self):
        with self.assertRaises(TypeError):
            self.run_transform(lambda m: None)
        self.assertIn("not a list of actions", HOST.lines[-1][1])
        with self.assertRaises(TypeError):
            self.run_transform(lambda m: [{"endpoint": "shop"}])
        self.assertIn("action 0 is {'endpoint': 'shop'}: build actions with call() or publish()", HOST.lines[-1][1])

    def test_print_goes_to_the_log(self):
        def run(m):
            print("hello", "world")
            print("partial", end="")
            return []

        self.assertEqual(self.run_transform(run), [])
        self.assertEqual(HOST.lines, [("info", "hello world"), ("info", "partial")])

    def test_a_level_the_host_drops_is_neither_sent_nor_formatted(self):
        formatted = []

        def message():
            formatted.append(1)
            return "account gg-11"

        log.debug(message)
        self.assertEqual((HOST.lines, formatted), ([], []))
        self.assertFalse(log.enabled(fake_world.Level.DEBUG))
        HOST.kept.add(fake_world.Level.DEBUG)
        try:
            log.debug(message)
            log.debug("plain")
            self.assertEqual(HOST.lines, [("debug", "account gg-11"), ("debug", "plain")])
            self.assertEqual(len(formatted), 1)
        finally:
            HOST.kept.discard(fake_world.Level.DEBUG)

    def test_config_tables_and_values(self):
        HOST.values["status_codes"] = '{"PROSPECT": 10}'
        self.assertEqual(CodeTable.from_config("status_codes", {"A": 1}).codes, {"PROSPECT": 10})
        self.assertEqual(CodeTable.from_config("country_ids", {"FR": 76}).codes, {"FR": 76})
        self.assertEqual(config_json("missing", [1]), [1])
        HOST.values["bad"] = "{"
        with self.assertRaises(Exception) as raised:
            config_json("bad")
        self.assertTrue(raised.exception.reason.startswith("config `bad` is not JSON"))


if __name__ == "__main__":
    unittest.main()
