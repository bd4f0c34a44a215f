"""Fail CI on any skipped test that .ci/expected-skips does not list.

Usage: python .ci/check_skips.py JUNIT_XML [EXPECTED_FILE]. EXPECTED_FILE lists one test id
(`path::name`, as pytest's -rs names it) per line, `#` starts a comment giving its reason.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def skipped_tests(junit: Path) -> dict[str, str]:
    """test id -> skip reason, from a pytest junit XML file."""
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        skip = case.find("skipped")
        if skip is not None:
            path = case.get("classname", "").replace(".", "/") + ".py"
            out[f"{path}::{case.get('name')}"] = skip.get("message", "")
    return out


def expected_skips(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {line for line in lines if line}


def main(argv: list[str]) -> int:
    junit = Path(argv[0])
    expected = expected_skips(Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name(
        "expected-skips"))
    unexpected = {t: r for t, r in skipped_tests(junit).items() if t not in expected}
    for test, reason in sorted(unexpected.items()):
        print(f"[ci] unexpected skip: {test}: {reason}", file=sys.stderr)
    if unexpected:
        print(f"[ci] {len(unexpected)} test(s) skipped that CI must run; fix the cause or list "
              "them with a reason in .ci/expected-skips.", file=sys.stderr)
        return 1
    print("[ci] no unexpected skips")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
