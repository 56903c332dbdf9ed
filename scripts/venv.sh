#!/usr/bin/env bash
# Prints the path of the project's virtual environment, creating it first when needed, with the
# extras named as arguments installed:
#   scripts/venv.sh                    the worker's dependencies only (make run)
#   scripts/venv.sh dev text onnx tracing registry mlflow   plus the tests' (make test, make lint)
#   scripts/venv.sh text onnx bench registry         plus the benchmark's (make bench)
#
# The environment lives outside the clone (torch from PyPI is a multi-GB CUDA build), keyed by
# pyproject.toml's base dependencies, requirements/constraints.txt, the Python version and
# TORCH_INDEX_URL. Extras are added to that one environment when a target first needs them, each
# recorded by a marker keyed by its own requirements, so `make run` then `make test` share one
# torch instead of installing it twice. Clones and CI runs with the same specification share it.
# Only the dependencies are installed; the project itself runs from its checkout (PYTHONPATH).
#
# TORCH_INDEX_URL: a package index to take torch from first, e.g. PyTorch's CPU-only wheels
# (https://download.pytorch.org/whl/cpu: ~0.2 GB and no CUDA libraries, against ~5 GB from PyPI).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "venv: $python not found: install Python 3.11+" >&2; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "venv: Python 3.11+ is needed, $python is $("$python" -V 2>&1)" >&2; exit 1; }
torch_index=${TORCH_INDEX_URL:-}

# Line 1: the environment's key; then one line per extra asked for: "<extra> <marker key> <requirement>...";
# a requirement with spaces in it is not used in pyproject.toml, so splitting on spaces is safe.
spec=$("$python" - "$root" "$torch_index" "$@" <<'PY'
import hashlib, json, pathlib, sys, tomllib
root, torch_index, wanted = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
extras = project["optional-dependencies"]
unknown = [extra for extra in wanted if extra not in extras]
if unknown:
    sys.exit(f"venv: no extra {', '.join(unknown)} in pyproject.toml (have: {', '.join(extras)})")
constraints = (root / "requirements" / "constraints.txt").read_text()
base = project["dependencies"]
print(hashlib.sha256(json.dumps([base, constraints, sys.version_info[:2], torch_index]).encode()).hexdigest()[:16])
print("base", hashlib.sha256(json.dumps(base).encode()).hexdigest()[:16], *base)
for extra in dict.fromkeys(wanted):
    print(extra, hashlib.sha256(json.dumps(extras[extra]).encode()).hexdigest()[:16], *extras[extra])
PY
)
key=$(head -n1 <<<"$spec")
cache=${INFERENCE_WORKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/inference-worker}
venv="$cache/venv-$key"

missing() {  # the lines of $spec whose marker is not in the environment yet
  tail -n +2 <<<"$spec" | while read -r extra marker _; do
    [ -f "$venv/.installed-$extra-$marker" ] || echo "$extra"
  done
}

if [ -n "$(missing)" ]; then
  mkdir -p "$cache"
  exec 9>"$venv.lock"  # one lock per environment: building one never waits for another
  flock 9
  if [ ! -f "$venv/.installed-base-$(awk 'NR == 2 {print $2}' <<<"$spec")" ]; then
    echo "venv: creating $venv (first run: torch is large, this takes a few minutes)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    if [ -n "$torch_index" ]; then
      torch_pin=$(grep -i '^torch==' "$root/requirements/constraints.txt")
      echo "venv: $torch_pin from $torch_index" >&2
      "$venv/bin/python" -m pip install -q --index-url "$torch_index" "$torch_pin" >&2
    fi
  fi
  todo=$(missing)
  if [ -n "$todo" ]; then
    requirements=$(tail -n +2 <<<"$spec" | while read -r extra _ specs; do
      if grep -qx "$extra" <<<"$todo"; then tr ' ' '\n' <<<"$specs"; fi
    done)
    echo "venv: installing $(tr '\n' ' ' <<<"$todo")into $venv" >&2
    started=$SECONDS
    printf '%s\n' "$requirements" >"$venv/requirements-$$.txt"
    "$venv/bin/python" -m pip install -q -r "$venv/requirements-$$.txt" -c "$root/requirements/constraints.txt" >&2
    rm -f "$venv/requirements-$$.txt"
    "$venv/bin/python" -m pip check >&2
    echo "venv: installed in $((SECONDS - started))s ($(du -sh "$venv" | cut -f1) in all)" >&2
    tail -n +2 <<<"$spec" | while read -r extra marker _; do
      if grep -qx "$extra" <<<"$todo"; then touch "$venv/.installed-$extra-$marker"; fi
    done
  fi
fi
echo "$venv"
