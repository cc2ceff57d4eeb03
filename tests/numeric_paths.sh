#!/usr/bin/env bash
# The numeric tests (all but notebooks, plugins, training and bench) on several numeric paths: torch's thread
# count, bf16 training of the trained fixtures, the seed of fixtures and probes (tests/conftest.py), and,
# on x86, the kernels of a CPU without AVX-512 (ATen's and oneDNN's). Every tolerance of the suite is
# derived from the quantity's own error, so every path must pass; the script fails if any fails.
#
#   tests/numeric_paths.sh [pytest args...]       PYTHON=... to choose the interpreter (default .venv/bin/python)
#
# The single-thread paths run side by side, then the two-thread path; logs go to a temporary folder.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
TESTS=(tests --ignore=tests/test_notebooks.py --ignore=tests/test_training.py --ignore=tests/test_bench.py
       --ignore=tests/test_plugin_prior.py --ignore=tests/test_plugin_sampler_dataset.py
       --ignore=tests/test_browser.py --ignore=tests/test_plan.py --ignore=tests/test_input_errors.py
       --ignore=tests/test_package.py --ignore=tests/test_readme.py --ignore=tests/test_contributing.py
       --ignore=tests/test_readme_results.py --ignore=tests/test_notebook_style.py)  # pipelines, not numerics
       # (make test runs them once)
OTHER_CPU=""
[ "$(uname -m)" = x86_64 ] && OTHER_CPU="ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2"
PATHS=(
  "GEN_LIB_TEST_THREADS=1 GEN_LIB_TEST_BF16=1 GEN_LIB_TEST_SEED=1"
  "GEN_LIB_TEST_THREADS=1 GEN_LIB_TEST_BF16=0 GEN_LIB_TEST_SEED=0 $OTHER_CPU"
  "GEN_LIB_TEST_THREADS=2 GEN_LIB_TEST_BF16=0 GEN_LIB_TEST_SEED=2"
)
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/numeric_paths.XXXXXX")
start=$(date +%s)

run() {  # run PATH_INDEX: pytest on that path, log and exit status in $LOGS
  local i=$1
  env ${PATHS[$i]} OMP_NUM_THREADS="$(sed -n 's/.*GEN_LIB_TEST_THREADS=\([0-9]*\).*/\1/p' <<<"${PATHS[$i]}")" \
    "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" "${EXTRA[@]}" >"$LOGS/$i.log" 2>&1
  echo $? >"$LOGS/$i.rc"
}

EXTRA=("$@")
if [ "$(nproc)" -ge 4 ]; then
  run 0 & run 1 & run 2 & wait
else
  run 0 & run 1 & wait
  run 2
fi

status=0
for i in "${!PATHS[@]}"; do
  rc=$(cat "$LOGS/$i.rc")
  echo "== path: ${PATHS[$i]}"
  if [ "$rc" = 0 ]; then
    tail -n 1 "$LOGS/$i.log"
  else
    status=1
    tail -n 40 "$LOGS/$i.log"
  fi
done
echo "numeric paths: $([ $status = 0 ] && echo all passed || echo FAILED) in $(( $(date +%s) - start )) s (logs: $LOGS)"
exit $status
