#!/usr/bin/env bash
# Mutation testing of the modules that carry the guarantees (README, "Mutation testing").
# mutmut (configured in pyproject.toml, [tool.mutmut]) mutates worker/{retry,sweeper,runner,
# saga,contract}.py one change at a time and runs the fast unit tests that cover each change.
#
#   bash ops/mutants.sh                  every mutant, from scratch
#   bash ops/mutants.sh 'worker.retry*'  only the mutants whose names match
#
# MUTANTS_CHILDREN (default 2) caps the parallel pytest processes; they run under `nice` so
# a shared machine stays usable. mutmut's progress goes to mutants/run.log; the per-module
# table and the surviving mutants are printed at the end and kept in mutants/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=.venv/bin
children="${MUTANTS_CHILDREN:-2}"

# mutmut keeps verdicts between runs and would not re-judge a survivor after a test was added:
# a recorded score must come from a clean run.
rm -rf mutants
mkdir mutants
# Hypothesis draws the same examples for every mutant (tests/worker/conftest.py).
export TRUNKLINE_HYPOTHESIS_PROFILE=mutants

started=$(date +%s)
nice -n 10 "$BIN/mutmut" run --max-children "$children" "$@" > mutants/run.log 2>&1 || {
    tail -n 40 mutants/run.log >&2
    exit 1
}
elapsed=$(( $(date +%s) - started ))

"$BIN/python" - "$elapsed" <<'EOF' | tee mutants/summary.txt
import json
import sys
from pathlib import Path

elapsed = int(sys.argv[1])
# mutmut's exit codes per mutant (mutmut/stats.py): 1 and 3 the tests failed, 0 they passed.
KILLED, SURVIVED = {1, 3}, {0}
TIMEOUT = {24, -24, 36, 152, 255}
survivors: list[str] = []
untested_names: list[str] = []
print(f"{'module':<20} {'mutants':>7} {'killed':>7} {'survived':>8} {'timeout':>7} "
      f"{'no tests':>8} {'other':>5}  score")
for meta in sorted(Path("mutants/worker").glob("*.py.meta")):
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    checked = {name: code for name, code in codes.items() if code is not None}
    if not checked:
        continue
    killed = sum(code in KILLED for code in checked.values())
    survived = [name for name, code in checked.items() if code in SURVIVED]
    timeout = sum(code in TIMEOUT for code in checked.values())
    untested = sum(code in {5, 33} for code in checked.values())
    other = len(checked) - killed - len(survived) - timeout - untested
    # A timeout is a mutant the tests noticed (it made them hang), so it counts as detected.
    score = (killed + timeout) / len(checked)
    module = meta.name.removesuffix(".py.meta")
    print(f"worker/{module + '.py':<13} {len(checked):>7} {killed:>7} {len(survived):>8} "
          f"{timeout:>7} {untested:>8} {other:>5}  {score:.1%}")
    survivors += sorted(survived)
    untested_names += sorted(name for name, code in checked.items() if code in {5, 33})
print(f"run time: {elapsed // 60} min {elapsed % 60} s")
print("survivors (inspect one with: .venv/bin/mutmut show NAME):")
for name in survivors:
    print(f"  {name}")
if untested_names:
    print("not covered by the selected tests:")
    for name in untested_names:
        print(f"  {name}")
EOF
