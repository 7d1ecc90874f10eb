#!/usr/bin/env bash
# Mutation testing of the numerical core and the GLUE arithmetic with mutmut (not part of CI).
# Each module runs in its own scratch copy under $WORK (default /tmp/messi-mutation), against
# the test files that guard it, so the repository is never touched and modules can be run
# one at a time (in separate sittings: a module's results stay until it is run again).
#
#   bash scripts/mutation.sh                       # all six modules (hours on 2 cores)
#   bash scripts/mutation.sh metrics report        # some of them
#   bash scripts/mutation.sh --survivors report    # after adding tests: rerun what survived
#   RERUN="messi.compress.x_load__*" bash scripts/mutation.sh --survivors compress  # and an edited function
#   bash scripts/mutation.sh --score               # the table of every module run so far
#
# docs/testing.md records the last runs, their score and every survivor.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-/tmp/messi-mutation}"
PY="$ROOT/.venv/bin/python"
MUTMUT="$ROOT/.venv/bin/mutmut"
[ -x "$PY" ] || { echo "error: run 'bash scripts/setup.sh' first" >&2; exit 2; }

# module -> "source file|the test files that guard it" (mutmut runs, per mutant, only those of
# these tests that execute the mutated function)
declare -A GUARD=(
  [clustering]="src/messi/clustering.py|tests/test_clustering.py tests/test_validation.py"
  [factorize]="src/messi/factorize.py|tests/test_factorize.py tests/test_layers.py tests/test_whole_model.py"
  [layers]="src/messi/layers.py|tests/test_layers.py tests/test_compress.py"
  [compress]="src/messi/compress.py|tests/test_compress.py tests/test_folder.py tests/test_whole_model.py"
  [metrics]="src/messi/glue/metrics.py|tests/glue/test_metrics.py"
  [report]="src/messi/glue/report.py|tests/glue/test_report.py"
  [linear]="src/messi/linear.py|tests/test_linear.py tests/test_whole_model.py"
  [allocate]="src/messi/allocate.py|tests/test_allocate.py"
  [tensorfile]="src/messi/tensorfile.py|tests/test_tensorfile.py"
  [calibration]="src/messi/calibration.py|tests/test_calibration.py"
)
ALL=(metrics report factorize layers clustering compress linear allocate tensorfile calibration)

score() {
  "$PY" "$ROOT/scripts/mutation_score.py" "$ROOT/scripts/mutation_equivalent.txt" "$WORK"/*/results.txt \
    | tee "$WORK/score.md"
}

survivors=0
case "${1:-}" in
  --score) score; exit 0 ;;
  --survivors) survivors=1; shift ;;
esac
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=("${ALL[@]}")
for m in "${modules[@]}"; do
  [ -n "${GUARD[$m]:-}" ] || { echo "error: unknown module '$m'; use: ${ALL[*]}" >&2; exit 2; }
done

"$PY" -m pip install -q "mutmut==3.8.1"
# the scratch copies are not beside ../shared: point the data readers at the real folders
export MESSI_GLUE_DIR="${MESSI_GLUE_DIR:-$(cd "$ROOT/../shared/data/glue" && pwd)}"
# mutmut forks one process per mutant; single-threaded torch keeps forked children from hanging
# in a copied OpenMP pool (and two mutants run at once anyway)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MESSI_TEST_THREADS=1
quote() { printf '"%s", ' "$@" | sed 's/, $//'; }
# config FILE SOURCE TESTS...: the project's pyproject.toml with mutmut's settings for one module
config() {
  local file="$1" src="$2"; shift 2
  cp "$ROOT/pyproject.toml" "$file"
  {
    echo
    echo "[tool.mutmut]"
    echo "source_paths = [\"src/messi\"]"
    echo "only_mutate = [\"$src\"]"
    echo "pytest_add_cli_args_test_selection = [$(quote "$@")]"
    # tests marked slow (the command line on the real model in a subprocess, minutes each) are
    # left out: a surviving mutant runs every test that covers it
    echo "pytest_add_cli_args = [\"-x\", \"-q\", \"-p\", \"no:cacheprovider\", \"-m\", \"not slow\"]"
    # the wording of error messages is not mutated (tests match the words that name the
    # problem, which an "XX" around them cannot break); the conditions that raise them are
    echo "do_not_mutate_patterns = [\"^\\\\s*raise MessiError\\\\(\"]"
  } >> "$file"
}

for m in "${modules[@]}"; do
  src="${GUARD[$m]%%|*}"
  read -r -a tests <<< "${GUARD[$m]#*|}"
  dir="$WORK/$m"
  module="$(echo "${src#src/}" | sed 's/\.py$//; s#/#.#g')"  # src/messi/glue/report.py -> messi.glue.report
  echo "== $m: mutating $src, guarded by ${tests[*]}"
  if [ "$survivors" = 1 ]; then
    # rerun what is not killed (survived, without tests, or not reached by an interrupted run)
    # against the current tests; the mutated source stays as it was
    [ -f "$dir/results.txt" ] || (cd "$dir" && "$MUTMUT" results --all true | grep -F "$module.") > "$dir/results.txt" || true
    [ -s "$dir/results.txt" ] || { echo "error: $m has not been run yet" >&2; exit 2; }
    rm -rf "$dir/tests" "$dir/mutants/tests" "$dir/src"
    cp -r "$ROOT/tests" "$dir/tests" && cp -r "$ROOT/tests" "$dir/mutants/tests" && cp -r "$ROOT/src" "$dir/src"
    config "$dir/pyproject.toml" "$src" "${tests[@]}" && cp "$dir/pyproject.toml" "$dir/mutants/pyproject.toml"
    cp "$dir/results.txt" "$dir/results.before.txt"
    # explained mutants (scripts/mutation_equivalent.txt) are not rerun
    mapfile -t names < <(grep -E ": (survived|no tests|not checked)$" "$dir/results.txt" | sed -E 's/^ *//; s/: .*//' \
                         | grep -vxFf <(grep -v '^#' "$ROOT/scripts/mutation_equivalent.txt" | cut -d' ' -f1))
    # functions edited since the last run: name their mutants in RERUN (e.g. RERUN="messi.compress.x_load__*")
    read -r -a extra <<< "${RERUN:-}"
    names+=("${extra[@]}")
    if [ ${#names[@]} -gt 0 ]; then (cd "$dir" && "$MUTMUT" run "${names[@]}") || true; fi
  else
    rm -rf "$dir" && mkdir -p "$dir"
    cp -r "$ROOT/src" "$ROOT/tests" "$dir/"
    config "$dir/pyproject.toml" "$src" "${tests[@]}"
    (cd "$dir" && "$MUTMUT" run) || true
  fi
  (cd "$dir" && "$MUTMUT" results --all true) | grep -F "$module." > "$dir/results.txt" || true
  if [ "$survivors" = 1 ]; then
    # mutmut forgets the verdicts of mutants it did not rerun (the tests changed): keep them
    "$PY" "$ROOT/scripts/mutation_score.py" --merge "$dir/results.before.txt" "$dir/results.txt"
  fi
done
score
