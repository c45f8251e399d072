#!/usr/bin/env python3
"""Pass/fail gate over an Autobahn testsuite report (reports/*/index.json).

index.json layout: {agent: {case_id: {"behavior", "behaviorClose",
"duration", "reportfile", ...}}}.

Checks:
  * exactly one agent;
  * the number of cases equals --expected (default 517, the full set of
    autobahntestsuite 0.8 / 25.10.1: groups 1-10 = 301, 12 = 90, 13 = 126);
  * every case: behavior in {OK, NON-STRICT, INFORMATIONAL} and
    behaviorClose in {OK, INFORMATIONAL};
  * UNIMPLEMENTED is allowed only for the top-level groups listed in
    --unimplemented-ok (e.g. 12,13 = permessage-deflate); counted apart.
NON-STRICT cases are listed as a warning, not a failure.

Exit status: 0 pass, 1 fail or unreadable input (argparse usage errors: 2).
Stdlib only.
"""

import argparse
import json
import sys
from collections import Counter

FULL_CASE_COUNT = 517

GROUP_NAMES = {
    "1": "Framing",
    "2": "Pings/Pongs",
    "3": "Reserved Bits",
    "4": "Opcodes",
    "5": "Fragmentation",
    "6": "UTF-8 Handling",
    "7": "Close Handling",
    "8": "Misc",
    "9": "Limits/Performance",
    "10": "Misc",
    "12": "WebSocket Compression (different payloads)",
    "13": "WebSocket Compression (different parameters)",
}

OK_BEHAVIOR = {"OK", "NON-STRICT", "INFORMATIONAL"}
OK_CLOSE = {"OK", "INFORMATIONAL"}
UNIMPLEMENTED = "UNIMPLEMENTED"


def case_key(case_id):
    """Sort '9.10.2' after '9.2.1' (numeric, not lexicographic)."""
    out = []
    for part in str(case_id).split("."):
        try:
            out.append((0, int(part), ""))
        except ValueError:
            out.append((1, 0, part))
    return out


def group_of(case_id):
    return str(case_id).split(".", 1)[0]


def group_label(group):
    name = GROUP_NAMES.get(group)
    return "%s - %s" % (group, name) if name else group


def parse_groups(text):
    groups = set()
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        if not item.isdigit():
            raise argparse.ArgumentTypeError("not a group number: %r" % item)
        groups.add(str(int(item)))
    return groups


def fmt_table(rows, headers):
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(str(c))) for w, c in zip(widths, r)]
    line = "  ".join("%-*s" % (w, h) for w, h in zip(widths, headers))
    out = [line.rstrip(), "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join("%-*s" % (w, c) for w, c in zip(widths, r)).rstrip())
    return "\n".join(out)


def evaluate(index, expected=FULL_CASE_COUNT, unimplemented_ok=()):
    """Return (ok: bool, result: dict). Pure; does no printing."""
    allowed_groups = set(unimplemented_ok)
    errors = []
    res = {
        "agent": None,
        "cases": {},
        "by_behavior": Counter(),
        "by_close": Counter(),
        "by_group": Counter(),
        "unimplemented_by_group": Counter(),
        "non_strict": [],
        "failing": [],
        "duration_ms": 0,
        "errors": errors,
    }
    if not isinstance(index, dict):
        errors.append("index.json is not a JSON object")
        return False, res
    agents = sorted(index)
    if len(agents) != 1:
        errors.append("expected exactly one agent, found %d: %s"
                      % (len(agents), ", ".join(agents) or "(none)"))
        if not agents:
            return False, res
    agent = agents[0]
    res["agent"] = agent
    cases = index[agent] if isinstance(index[agent], dict) else {}
    res["cases"] = cases

    if len(cases) != expected:
        errors.append("expected %d cases for agent %r, found %d"
                      % (expected, agent, len(cases)))

    for cid in sorted(cases, key=case_key):
        c = cases[cid] if isinstance(cases[cid], dict) else {}
        b = c.get("behavior")
        bc = c.get("behaviorClose")
        g = group_of(cid)
        res["by_behavior"][str(b)] += 1
        res["by_close"][str(bc)] += 1
        res["by_group"][g] += 1
        dur = c.get("duration")
        if isinstance(dur, (int, float)):
            res["duration_ms"] += dur

        bad = []
        if b == UNIMPLEMENTED:
            if g in allowed_groups:
                res["unimplemented_by_group"][g] += 1
            else:
                bad.append("behavior UNIMPLEMENTED not allowed in group %s" % g)
        elif b not in OK_BEHAVIOR:
            bad.append("behavior %s" % b)
        if b == "NON-STRICT":
            res["non_strict"].append(cid)
        if bc not in OK_CLOSE:
            bad.append("behaviorClose %s" % bc)
        if bad:
            res["failing"].append((cid, b, bc, "; ".join(bad)))

    if res["failing"]:
        errors.append("%d case(s) failed" % len(res["failing"]))
    return not errors, res


def render_markdown(res):
    total = sum(res["by_behavior"].values())
    lines = ["| Behavior | Cases |", "|---|---:|"]
    for b, n in sorted(res["by_behavior"].items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append("| %s | %d |" % (b, n))
    lines.append("| **Total** | **%d** |" % total)
    return "\n".join(lines)


def render_summary(ok, res, path):
    out = []
    out.append("Autobahn gate: %s" % path)
    out.append("agent: %s   cases: %d   total duration: %d ms (%.1f s)"
               % (res["agent"], len(res["cases"]), res["duration_ms"],
                  res["duration_ms"] / 1000.0))
    out.append("")
    out.append(fmt_table(sorted(res["by_behavior"].items()), ["behavior", "cases"]))
    out.append("")
    out.append(fmt_table(sorted(res["by_close"].items()), ["behaviorClose", "cases"]))
    out.append("")
    rows = [(group_label(g), n, res["unimplemented_by_group"].get(g, 0))
            for g, n in sorted(res["by_group"].items(), key=lambda kv: case_key(kv[0]))]
    out.append(fmt_table(rows, ["group", "cases", "unimplemented (allowed)"]))
    if res["unimplemented_by_group"]:
        out.append("")
        out.append("UNIMPLEMENTED (allowed): " + ", ".join(
            "%s: %d" % (group_label(g), n)
            for g, n in sorted(res["unimplemented_by_group"].items(),
                               key=lambda kv: case_key(kv[0]))))
    if res["non_strict"]:
        out.append("")
        out.append("WARNING: %d NON-STRICT case(s): %s"
                   % (len(res["non_strict"]), ", ".join(res["non_strict"])))
    if res["failing"]:
        out.append("")
        out.append("FAILING cases (%d):" % len(res["failing"]))
        out.append(fmt_table(res["failing"],
                             ["case", "behavior", "behaviorClose", "reason"]))
    out.append("")
    for e in res["errors"]:
        out.append("ERROR: " + e)
    out.append("RESULT: %s" % ("PASS" if ok else "FAIL"))
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("index", help="path to an Autobahn reports/*/index.json")
    ap.add_argument("--expected", type=int, default=FULL_CASE_COUNT,
                    help="number of cases required (default %(default)s = full set)")
    ap.add_argument("--unimplemented-ok", type=parse_groups, default=set(),
                    metavar="G[,G...]",
                    help="top-level groups whose cases may be UNIMPLEMENTED, e.g. 12,13")
    ap.add_argument("--markdown", action="store_true",
                    help="also print a markdown table of counts by behavior")
    args = ap.parse_args(argv)

    try:
        with open(args.index, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        print("ERROR: cannot read %s: %s" % (args.index, e), file=sys.stderr)
        return 1

    ok, res = evaluate(index, args.expected, args.unimplemented_ok)
    print(render_summary(ok, res, args.index))
    if args.markdown:
        print()
        print(render_markdown(res))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
