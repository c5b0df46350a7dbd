"""Sum the matrix's JUnit reports into one closing line; fail when a set ran no test."""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

totals = {"passed": 0, "failed": 0, "skipped": 0}
empty = []
reports = sorted(Path(sys.argv[1]).glob("*.xml"))
for report in reports:
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, skipped = int(suite.get("tests")), int(suite.get("skipped"))
    failed = int(suite.get("failures")) + int(suite.get("errors"))
    passed = tests - skipped - failed
    print(f"{report.stem}: {passed} passed, {failed} failed, {skipped} skipped")
    totals["passed"] += passed
    totals["failed"] += failed
    totals["skipped"] += skipped
    if passed == 0:
        empty.append(report.stem)
if not reports:
    print("no test report found: the matrix ran no test")
    sys.exit(1)
if empty:
    print(f"sets that passed no test: {', '.join(empty)}")
print(f"matrix: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped")
sys.exit(1 if totals["failed"] or empty else 0)
