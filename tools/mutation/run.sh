#!/usr/bin/env bash
# Mutation testing of the core files with mutmut 3.8.1.
#
#   bash tools/mutation/run.sh [--fresh] [--add-config] [--report FILE] [MUTANT_GLOB ...]
#
# Which files are mutated and which tests run is the [tool.mutmut] table of pyproject.toml
# (its source: tools/mutation/pyproject-snippet.toml). Results are cached in mutants/
# (gitignored): a second run only retests mutants of functions whose code changed.
#
#   --fresh        delete mutants/ first (do this after changing non-mutated code the
#                  tests depend on, or the test list: cached verdicts would be stale)
#   --add-config   append tools/mutation/pyproject-snippet.toml to pyproject.toml when it
#                  has no [tool.mutmut] table yet (otherwise the script stops and says so)
#   --report FILE  also write every surviving mutant's diff to FILE, grouped by file
#   MUTANT_GLOB    only (re)test these mutants, e.g. 'x2core.boxes.*' or one full name
#
# Environment: MUTMUT_CHILDREN (parallel mutants, default 2), OMP_NUM_THREADS (default 1).
# Afterwards: `mutmut show NAME` prints one mutant's diff, `mutmut browse` is the TUI.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$(pwd)
fresh=0 add_config=0 report=""
names=()
while (($#)); do
    case "$1" in
        --fresh) fresh=1 ;;
        --add-config) add_config=1 ;;
        --report) report="$2"; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) names+=("$1") ;;
    esac
    shift
done

want=3.8.1
have=$(python -c 'import importlib.metadata as m; print(m.version("mutmut"))' 2>/dev/null || true)
if [[ "$have" != "$want" ]]; then
    echo "installing mutmut==$want (found: ${have:-none})"
    python -m pip install -q "mutmut==$want"
fi

if ! grep -q '^\[tool\.mutmut\]' pyproject.toml; then
    if ((add_config)); then
        printf '\n' >>pyproject.toml
        cat tools/mutation/pyproject-snippet.toml >>pyproject.toml
        echo "appended tools/mutation/pyproject-snippet.toml to pyproject.toml"
    else
        echo "pyproject.toml has no [tool.mutmut] table: merge tools/mutation/pyproject-snippet.toml" \
             "into it, or rerun with --add-config" >&2
        exit 2
    fi
fi

((fresh)) && rm -rf mutants
mkdir -p mutants
# mutmut copies tests/ over mutants/tests/ each run but never deletes there: start clean so a
# removed or renamed test module cannot linger.
rm -rf mutants/tests
# The tests import x2plugins / x2datasets / x2adapters through the editable install, which may
# point at another checkout. Copies under their import names in mutants/ (first on sys.path in
# mutmut's processes) make the run use this checkout's code, whichever checkout is installed.
for pair in plugins:x2plugins datasets:x2datasets adapters:x2adapters; do
    rm -rf "mutants/${pair#*:}"
    cp -r "${pair%%:*}" "mutants/${pair#*:}"
    find "mutants/${pair#*:}" -name __pycache__ -prune -exec rm -rf {} +
done

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export TOKENIZERS_PARALLELISM=false
start=$(date +%s)
status=0
mutmut run --max-children "${MUTMUT_CHILDREN:-2}" "${names[@]}" || status=$?
echo
echo "mutmut run: exit $status, $(( $(date +%s) - start )) s wall"

# Guard against the run silently testing the installed, unmutated x2core: the stats
# collection only records calls that went through mutants/x2core's trampolines.
python - <<'EOF'
import json, sys
try:
    stats = json.load(open("mutants/mutmut-stats.json"))
except FileNotFoundError:
    sys.exit("no mutants/mutmut-stats.json: mutmut did not get as far as running the tests")
hits = stats.get("tests_by_mangled_function_name", {})
if not any(k.startswith("x2core.") for k in hits):
    sys.exit("no test called a mutated x2core function: the tests did not import mutants/x2core")
EOF

args=(--names)
[[ -n "$report" ]] && args+=(--diffs "$report")
python tools/mutation/report.py "${args[@]}"
exit "$status"
