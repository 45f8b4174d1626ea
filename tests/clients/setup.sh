#!/usr/bin/env bash
# Installs the dependencies of the real-client test drivers:
#   js/node_modules  (npm ci from js/package-lock.json)
#   py/.venv         (python3 -m venv + pip install -r py/requirements.txt)
# Idempotent (a second run is a quick no-op) and safe to run concurrently
# (serialised with flock). Prints nothing to stdout; progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
js_dir="$here/js"
py_dir="$here/py"
venv="$py_dir/.venv"
stamp="$venv/.requirements.stamp"

die() {
  echo "tests/clients/setup.sh: $*" >&2
  exit 1
}

need() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH: $2"
}

need flock "install util-linux"
need node "install Node.js >= 18 (e.g. apt-get install nodejs npm)"
need npm "install npm (e.g. apt-get install npm)"
need python3 "install Python >= 3.11 with the venv module (e.g. apt-get install python3 python3-venv)"

node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 18 ] || die "Node.js >= 18 is required (found $(node --version))"
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || die "Python >= 3.11 is required by realtime 2.34.1 (found $(python3 --version 2>&1))"

exec 9>"$here/.setup.lock"
flock 9

# ---- JavaScript: @supabase/realtime-js + ws
hidden_lock="$js_dir/node_modules/.package-lock.json"
if [ ! -f "$hidden_lock" ] \
  || [ "$js_dir/package-lock.json" -nt "$hidden_lock" ] \
  || [ "$js_dir/package.json" -nt "$hidden_lock" ]; then
  echo "tests/clients/setup.sh: installing JS driver dependencies (npm ci)" >&2
  (cd "$js_dir" && npm ci --no-audit --no-fund --loglevel=error >&2) \
    || die "npm ci failed in $js_dir"
  # npm ci (re)writes the hidden lockfile; make sure it is newer than the inputs.
  touch "$hidden_lock"
fi

# ---- Python: realtime (realtime-py)
want="$(
  {
    sha256sum "$py_dir/requirements.txt" | cut -d' ' -f1
    python3 -c 'import os, sys; print(sys.version, os.path.realpath(sys.executable))'
  } | sha256sum | cut -d' ' -f1
)"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "tests/clients/setup.sh: creating Python venv for the realtime-py driver" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" >&2 \
    || die "'python3 -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r "$py_dir/requirements.txt" >&2 \
    || die "pip install -r $py_dir/requirements.txt failed"
  echo "$want" >"$stamp"
fi
