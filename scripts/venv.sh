#!/usr/bin/env bash
# Prints the path of the project's virtual environment, creating it first when needed.
#
# The environment lives outside the clone (torch from PyPI is a multi-GB CUDA build), keyed by
# the dependency specification: pyproject.toml's dependency tables (with the dev, bench, text, onnx, tracing,
# registry and mlflow extras), requirements/constraints.txt
# and the Python version. Clones and CI runs with the same specification share one environment.
# Only the dependencies are installed; the project itself runs from its checkout (PYTHONPATH).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "venv: $python not found: install Python 3.11+" >&2; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "venv: Python 3.11+ is needed, $python is $("$python" -V 2>&1)" >&2; exit 1; }

spec=$("$python" - "$root" <<'PY'
import hashlib, json, pathlib, sys, tomllib
root = pathlib.Path(sys.argv[1])
project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
extras = project["optional-dependencies"]
extras_used = ("dev", "bench", "text", "onnx", "tracing", "registry", "mlflow")
requirements = project["dependencies"] + [spec for extra in extras_used for spec in extras[extra]]
constraints = (root / "requirements" / "constraints.txt").read_text()
key = hashlib.sha256(json.dumps([requirements, constraints, sys.version_info[:2]]).encode()).hexdigest()[:16]
print(key)
print("\n".join(requirements))
PY
)
key=$(head -n1 <<<"$spec")
cache=${INFERENCE_WORKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/inference-worker}
venv="$cache/venv-$key"
if [ ! -f "$venv/.complete" ]; then
  mkdir -p "$cache"
  exec 9>"$cache/venv.lock"
  flock 9
  if [ ! -f "$venv/.complete" ]; then
    echo "venv: creating $venv (first run: torch is large, this takes a few minutes)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    tail -n +2 <<<"$spec" >"$venv/requirements.txt"
    started=$SECONDS
    "$venv/bin/python" -m pip install -q -r "$venv/requirements.txt" -c "$root/requirements/constraints.txt" >&2
    "$venv/bin/python" -m pip check >&2
    echo "venv: installed in $((SECONDS - started))s" >&2
    touch "$venv/.complete"
  fi
fi
echo "$venv"
