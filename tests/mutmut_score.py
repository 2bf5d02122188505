"""`make mutate`'s score table: mutants per module by outcome, and the survivors by name.

Reads what ``mutmut run`` left in ``mutants/`` (``*.py.meta``: exit code per mutant) for the
mutants matching the given patterns (the Makefile's ``MUTANTS``). ``mutmut results`` lists every
mutant not killed, including the thousands outside the patterns ("not checked"), and gives no
per-module counts; this is the table docs/testing.md records.

    python tests/mutmut_score.py 'calibrate.thresholds*' 'stage1.run.driver*' ...

Score = (killed + timeout) / (killed + timeout + survived): a timeout is a mutant the tests
stopped (a loop that no longer ends), as mutmut counts it; "no tests" (no selected test reaches
the function) are reported apart.
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

OUTCOME = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", None: "pending"}
OUTCOME |= {c: "timeout" for c in (36, 24, -24, 152, 255)}
COLUMNS = ("killed", "timeout", "survived", "no tests", "pending", "other")


def outcomes(root: Path, patterns: list[str]) -> dict[str, str]:
    """Mutant name -> outcome, for the mutants matching ``patterns``."""
    out = {}
    for meta in sorted(root.rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if any(fnmatch.fnmatch(name, p) for p in patterns):
                out[name] = OUTCOME.get(code, "other")
    return out


def main(argv: list[str]) -> None:
    res = outcomes(Path("mutants"), argv or ["*"])
    table: dict[str, Counter] = defaultdict(Counter)
    for name, outcome in res.items():
        table[re.sub(r"\.x[_ǁ].*", "", name)][outcome] += 1
    table["total"] = sum(table.values(), Counter())
    print(f"{'module':28s}" + "".join(f"{c:>10s}" for c in COLUMNS) + f"{'score':>8s}")
    for module, n in table.items():
        tested = n["killed"] + n["timeout"] + n["survived"]
        score = f"{100 * (n['killed'] + n['timeout']) / tested:7.1f}%" if tested else "       -"
        print(f"{module:28s}" + "".join(f"{n[c]:10d}" for c in COLUMNS) + score)
    survivors = sorted(k for k, v in res.items() if v == "survived")
    print(f"\nsurvived ({len(survivors)}; `mutmut show NAME` for the diff):")
    print("\n".join(f"  {k}" for k in survivors))


if __name__ == "__main__":
    main(sys.argv[1:])
