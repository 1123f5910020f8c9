"""Deterministic gate: parameter and FLOP counts of every registered model equal the committed values.

A difference is either a regression (a model lost or gained a layer) or an intended change, in
which case regenerate bench/counting/expected_counts.json (command in the failure message) and commit it.
"""

from __future__ import annotations

import json

from bench.counting.flops import EXPECTED_COUNTS, expected_counts

REGENERATE = 'python -c "from bench.counting.flops import write_expected_counts; write_expected_counts()"'


def test_counts_equal_the_committed_expected_values() -> None:
    expected = json.loads(EXPECTED_COUNTS.read_text())
    current = expected_counts()
    problems = []
    for key in sorted(expected.keys() | current.keys()):
        old, new = expected.get(key), current.get(key)
        if old is None:
            problems.append(f"{key}: newly registered, not in {EXPECTED_COUNTS.name}: {new}")
        elif new is None:
            problems.append(f"{key}: in {EXPECTED_COUNTS.name} but no longer registered")
        else:
            changed = [field for field in old if old[field] != new.get(field)]
            problems += [f"{key} {field}: expected {old[field]:,}, now {new[field]:,}" for field in changed]
    assert not problems, (
        "model counts changed:\n  " + "\n  ".join(problems)
        + f"\nIf this change is intended, regenerate the file with\n  {REGENERATE}\nand commit it."
    )
