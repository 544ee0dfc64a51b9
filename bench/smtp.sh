#!/usr/bin/env bash
# Submission front-end benchmark (issue #3): idle TLS sessions vs RSS, and
# NOOP latency on an authenticated session during a login storm.
#   bench/smtp.sh [IDLE_SESSIONS=10000] [LOGINS=200]
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE=${1:-10000}
LOGINS=${2:-200}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --example smtp_bench >/dev/null
BIN=target/release/examples/smtp_bench
DIR=$(mktemp -d /tmp/postgate-smtp-bench.XXXXXX)
"$BIN" server "$DIR" >"$DIR/server.out" 2>"$DIR/server.err" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; rm -rf "$DIR"' EXIT
for _ in $(seq 100); do grep -q '^PID' "$DIR/server.out" 2>/dev/null && break; sleep 0.1; done
PORT=$(awk '/^PORT/ {print $2}' "$DIR/server.out")
PID=$(awk '/^PID/ {print $2}' "$DIR/server.out")
echo "== login storm: $LOGINS concurrent AUTH PLAIN (argon2id 19 MiB, t=2) while one session sends NOOP"
"$BIN" storm "$PORT" "$DIR" "$LOGINS"
echo "== $IDLE concurrent idle TLS sessions"
"$BIN" idle "$PORT" "$DIR" "$IDLE" "$PID"
