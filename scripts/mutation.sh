#!/usr/bin/env bash
# Mutation testing of the numerical core and the GLUE arithmetic with mutmut (not part of CI:
# about an hour on 2 cores). Runs in a scratch copy, so the repository is never touched.
#
#   bash scripts/mutation.sh                       # all six modules
#   bash scripts/mutation.sh "messi.glue.metrics*" # mutmut's mutant-name globs: one module
#   bash scripts/mutation.sh --survivors           # after adding tests: rerun what survived
#
# Prints mutmut's per-mutant results and writes the score table to $WORK/score.md
# (WORK defaults to /tmp/messi-mutation). docs/testing.md records the last full run.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-/tmp/messi-mutation}"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || { echo "error: run 'bash scripts/setup.sh' first" >&2; exit 2; }
"$PY" -m pip install -q "mutmut==3.8.1"

# the modules mutated and the tests that guard each (mutmut runs, per mutant, only the tests
# among these that execute the mutated function)
MODULES=(src/messi/clustering.py src/messi/factorize.py src/messi/layers.py src/messi/compress.py
         src/messi/glue/metrics.py src/messi/glue/report.py)
TESTS=(tests/test_clustering.py tests/test_factorize.py tests/test_layers.py tests/test_compress.py
       tests/test_folder.py tests/test_auto.py tests/test_models.py tests/test_validation.py
       tests/glue/test_metrics.py tests/glue/test_report.py)

if [ "${1:-}" = "--survivors" ]; then
  # rerun only the mutants that survived the last run, against the current tests (after adding
  # tests for them); the mutated source is left as it was
  [ -f "$WORK/results.txt" ] || { echo "error: no earlier run in $WORK" >&2; exit 2; }
  rm -rf "$WORK/tests" "$WORK/mutants/tests" && cp -r "$ROOT/tests" "$WORK/tests" && cp -r "$ROOT/tests" "$WORK/mutants/tests"
  cd "$WORK"
  export MESSI_GLUE_DIR="${MESSI_GLUE_DIR:-$(cd "$ROOT/../shared/data/glue" && pwd)}"
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MESSI_TEST_THREADS=1
  mapfile -t names < <(grep -E ": (survived|no tests)$" results.txt | sed -E 's/^ *//; s/: .*//')
  "$ROOT/.venv/bin/mutmut" run "${names[@]}" || true
  "$ROOT/.venv/bin/mutmut" results --all true > results.txt
  "$PY" "$ROOT/scripts/mutation_score.py" results.txt "$ROOT/scripts/mutation_equivalent.txt" | tee score.md
  exit 0
fi

rm -rf "$WORK" && mkdir -p "$WORK"
cp -r "$ROOT/src" "$ROOT/tests" "$ROOT/pyproject.toml" "$WORK/"
# the scratch copy is not beside ../shared: point the data readers at the real folders
export MESSI_GLUE_DIR="${MESSI_GLUE_DIR:-$(cd "$ROOT/../shared/data/glue" && pwd)}"
# mutmut forks one process per mutant; single-threaded torch keeps forked children from hanging
# in a copied OpenMP pool (and 2 mutants run at once anyway)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MESSI_TEST_THREADS=1
quote() { printf '"%s", ' "$@" | sed 's/, $//'; }
{
  echo
  echo "[tool.mutmut]"
  echo "source_paths = [\"src/messi\"]"
  echo "only_mutate = [$(quote "${MODULES[@]}")]"
  echo "pytest_add_cli_args_test_selection = [$(quote "${TESTS[@]}")]"
  echo "pytest_add_cli_args = [\"-x\", \"-q\", \"-p\", \"no:cacheprovider\"]"
  # the wording of error messages is not mutated (tests match the words that name the problem,
  # which an "XX" prefix cannot break); the conditions that raise them are
  echo "do_not_mutate_patterns = [\"^\\\\s*raise MessiError\\\\(\"]"
  echo "process_isolation = \"${ISOLATION:-fork}\""
} >> "$WORK/pyproject.toml"

cd "$WORK"
"$ROOT/.venv/bin/mutmut" run "$@" || true
"$ROOT/.venv/bin/mutmut" results --all true > results.txt
echo "per-mutant results: $WORK/results.txt; show one with: cd $WORK && $ROOT/.venv/bin/mutmut show NAME"
"$PY" "$ROOT/scripts/mutation_score.py" results.txt "$ROOT/scripts/mutation_equivalent.txt" | tee score.md
