#!/usr/bin/env python3
"""Unit tests for gate.py on small synthetic index.json files.

Run: python3 -m unittest -v autobahn/test_gate.py   (or: cd autobahn && python3 test_gate.py)
"""

import contextlib
import io
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gate  # noqa: E402


def case(behavior="OK", close="OK", duration=2):
    return {"behavior": behavior, "behaviorClose": close,
            "duration": duration, "remoteCloseCode": 1000,
            "reportfile": "x.json"}


def index(cases, agent="stratus"):
    return {agent: cases}


BASE_IDS = ["1.1.1", "1.1.2", "2.1", "9.1.1", "12.1.1", "13.1.1"]


class GateTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def run_gate(self, idx, *args):
        path = os.path.join(self.tmp.name, "index.json")
        with open(path, "w") as f:
            json.dump(idx, f)
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            rc = gate.main([path] + list(args))
        return rc, out.getvalue()

    def all_ok(self):
        return {cid: case() for cid in BASE_IDS}

    def test_all_ok_passes(self):
        rc, out = self.run_gate(index(self.all_ok()), "--expected", "6")
        self.assertEqual(rc, 0, out)
        self.assertIn("RESULT: PASS", out)
        self.assertIn("total duration: 12 ms", out)

    def test_failed_case_fails(self):
        cases = self.all_ok()
        cases["2.1"] = case(behavior="FAILED")
        rc, out = self.run_gate(index(cases), "--expected", "6")
        self.assertEqual(rc, 1)
        self.assertIn("2.1", out)
        self.assertIn("behavior FAILED", out)

    def test_wrong_count_fails(self):
        rc, out = self.run_gate(index(self.all_ok()), "--expected", "7")
        self.assertEqual(rc, 1)
        self.assertIn("expected 7 cases", out)

    def test_default_expected_is_full_set(self):
        rc, out = self.run_gate(index(self.all_ok()))
        self.assertEqual(rc, 1)
        self.assertIn("expected 517 cases", out)

    def test_unimplemented_outside_allowed_groups_fails(self):
        cases = self.all_ok()
        cases["9.1.1"] = case(behavior="UNIMPLEMENTED")
        rc, out = self.run_gate(index(cases), "--expected", "6",
                                "--unimplemented-ok", "12,13")
        self.assertEqual(rc, 1)
        self.assertIn("9.1.1", out)

    def test_unimplemented_without_option_fails(self):
        cases = self.all_ok()
        cases["12.1.1"] = case(behavior="UNIMPLEMENTED")
        rc, out = self.run_gate(index(cases), "--expected", "6")
        self.assertEqual(rc, 1)
        self.assertIn("12.1.1", out)

    def test_unimplemented_inside_allowed_groups_passes_and_is_counted(self):
        cases = self.all_ok()
        cases["12.1.1"] = case(behavior="UNIMPLEMENTED")
        cases["13.1.1"] = case(behavior="UNIMPLEMENTED")
        cases["13.1.2"] = case(behavior="UNIMPLEMENTED")
        rc, out = self.run_gate(index(cases), "--expected", "7",
                                "--unimplemented-ok", "12,13")
        self.assertEqual(rc, 0, out)
        self.assertIn("WebSocket Compression (different payloads): 1", out)
        self.assertIn("WebSocket Compression (different parameters): 2", out)
        ok, res = gate.evaluate(index(cases), 7, {"12", "13"})
        self.assertTrue(ok)
        self.assertEqual(res["unimplemented_by_group"], {"12": 1, "13": 2})

    def test_behavior_close_failed_fails(self):
        cases = self.all_ok()
        cases["1.1.2"] = case(close="FAILED")
        rc, out = self.run_gate(index(cases), "--expected", "6")
        self.assertEqual(rc, 1)
        self.assertIn("behaviorClose FAILED", out)

    def test_non_strict_and_informational_pass_with_warning(self):
        cases = self.all_ok()
        cases["1.1.1"] = case(behavior="NON-STRICT")
        cases["1.1.2"] = case(behavior="INFORMATIONAL", close="INFORMATIONAL")
        rc, out = self.run_gate(index(cases), "--expected", "6")
        self.assertEqual(rc, 0, out)
        self.assertIn("WARNING: 1 NON-STRICT case(s): 1.1.1", out)

    def test_two_agents_fail(self):
        idx = {"a": self.all_ok(), "b": self.all_ok()}
        rc, out = self.run_gate(idx, "--expected", "6")
        self.assertEqual(rc, 1)
        self.assertIn("exactly one agent", out)

    def test_markdown(self):
        cases = self.all_ok()
        cases["1.1.1"] = case(behavior="NON-STRICT")
        rc, out = self.run_gate(index(cases), "--expected", "6", "--markdown")
        self.assertEqual(rc, 0, out)
        self.assertIn("| Behavior | Cases |", out)
        self.assertIn("| OK | 5 |", out)
        self.assertIn("| NON-STRICT | 1 |", out)

    def test_missing_file_fails(self):
        out = io.StringIO()
        with contextlib.redirect_stderr(out):
            rc = gate.main([os.path.join(self.tmp.name, "nope.json")])
        self.assertEqual(rc, 1)

    def test_case_sort_is_numeric(self):
        ids = ["9.10.1", "9.2.1", "10.1.1", "1.1.10", "1.1.2"]
        self.assertEqual(sorted(ids, key=gate.case_key),
                         ["1.1.2", "1.1.10", "9.2.1", "9.10.1", "10.1.1"])


if __name__ == "__main__":
    unittest.main()
