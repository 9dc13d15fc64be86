"""The mutation score of each pure module after `mutmut run` (make mutation), from mutmut's own result files.

Run in the folder mutmut ran in (build/mutation). Prints one Markdown row per module, then every mutant that
lived, and exits 1 when a module's score is under MINIMUM. A mutant of a pure function that no selected test
reached ("no tests") counts as living: the rule it changed is untested. Only the functions named in PURE count;
the rest of those files (timefmt.utcnow) read the clock.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

MUTANTS = Path("mutants/ansible_collections/ec2spot/pool/plugins/module_utils/_pool/domain")
MINIMUM = 95.0
# module -> the functions that hold its pure rules; None: every function of the module.
PURE = {
    "refill_plan": None,
    "entries": None,
    "end_plan": None,
    "identity": None,
    "claim": None,
    "timefmt": {"isoformat", "parse_time"},  # utcnow reads the clock
    "defaults": None,  # constants only: mutmut mutates function bodies, so it has no mutant
}
KILLED = {1, 3, 37}
NOT_RUN = {None, 2, 34}


def function_of(key: str) -> str:
    """x_decide__mutmut_12 -> decide; xǁClaimǁ__init____mutmut_3 -> Claim.__init__."""
    name = key.rsplit(".", 1)[-1].partition("__mutmut_")[0]
    return name[2:].replace("ǁ", ".") if name.startswith("x_") else name[1:].strip("ǁ").replace("ǁ", ".")


def score(module: str, functions):
    meta = json.loads((MUTANTS / f"{module}.py.meta").read_text())
    counts, living = Counter(), []
    for key, code in sorted(meta["exit_code_by_key"].items()):
        if functions is not None and function_of(key) not in functions:
            continue
        if code in NOT_RUN:
            counts["not run"] += 1
        elif code in KILLED:
            counts["killed"] += 1
        else:
            counts["lived"] += 1
            living.append(f"{key.rsplit('.', 1)[-1]} ({'no test reached it' if code in (5, 33) else f'exit {code}'})")
    return counts, living


def main() -> int:
    rows, living_all, low = [], [], []
    for module, functions in PURE.items():
        counts, living = score(module, functions)
        total = counts["killed"] + counts["lived"]
        percent = 100.0 * counts["killed"] / total if total else 100.0
        if counts["not run"] or percent < MINIMUM:
            low.append(module)
        rows.append(f"| {module}.py | {total} | {counts['killed']} | {counts['lived']} | {percent:.1f} % |")
        living_all += [f"{module}: {name}" for name in living]
    print("| module | mutants | killed | lived | score |\n| --- | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    print("\nLived (`mutmut show NAME` in build/mutation shows the change):")
    print("\n".join(living_all) or "none")
    if low:
        print(f"\nunder {MINIMUM} % or not all run: {', '.join(low)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
