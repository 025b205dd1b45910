#!/usr/bin/env bash
# Runs quern_client_smoke.py, a Python gRPC client with default channel
# options, against a real quernd on a fresh socket. Installs grpcio in a
# virtualenv under target/ (not committed), generates the stubs from proto/
# into a temp dir, and kills the daemon however the test ends.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
venv=$target/py-venv
reqs=$root/tests/python/requirements.txt

# The venv is reused while the requirements are unchanged.
if ! cmp -s "$reqs" "$venv/requirements.txt" 2>/dev/null; then
    echo "== python venv: installing $(grep -v '^#' "$reqs" | tr '\n' ' ')"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$reqs"
    cp "$reqs" "$venv/requirements.txt"
fi
py=$venv/bin/python

cargo build --quiet -p quern-daemon --bin quernd
quernd=$target/debug/quernd

tmp=$(mktemp -d -t quern-py-XXXXXX)
daemon=
cleanup() {
    if [[ -n $daemon ]]; then
        kill "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

mkdir "$tmp/stubs" "$tmp/state"
"$py" -m grpc_tools.protoc -I proto --python_out="$tmp/stubs" --grpc_python_out="$tmp/stubs" \
    proto/quern/v1/jobs.proto

# Nothing from the caller's environment may point the daemon elsewhere or
# make it signal a service manager.
env -u QUERN_SOCKET -u QUERN_STATE_DIR -u NOTIFY_SOCKET \
    "$quernd" --socket "$tmp/quernd.sock" --state-dir "$tmp/state" >"$tmp/quernd.log" 2>&1 &
daemon=$!

# The client waits for the health check to say SERVING before anything else.
if ! "$py" tests/python/quern_client_smoke.py "$tmp/stubs" "$tmp/quernd.sock"; then
    echo "--- quernd output:" >&2
    tail -n 50 "$tmp/quernd.log" >&2
    exit 1
fi
