#!/usr/bin/env bash
# Reconnecting logins per second (issue #6): every login is a new TCP + TLS
# (implicit, TLS 1.3) + EHLO + AUTH PLAIN against the SQLite store with the
# default argon2id parameters; the same run with the auth cache on and off.
#   bench/logins.sh [LOGINS=2000] [CLIENTS=32] [RUNS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}; C=${2:-32}; RUNS=${3:-3}
cargo build --release --example smtp_bench >/dev/null
BIN=target/release/examples/smtp_bench
for mode in cache nocache; do
  for run in $(seq "$RUNS"); do
    DIR=$(mktemp -d /tmp/postgate-login-bench.XXXXXX)
    "$BIN" server "$DIR" "$mode" >"$DIR/server.out" 2>"$DIR/server.err" &
    SERVER=$!
    for _ in $(seq 100); do grep -q '^PID' "$DIR/server.out" 2>/dev/null && break; sleep 0.1; done
    PORT=$(awk '/^PORT/ {print $2}' "$DIR/server.out")
    n=$N; [ "$mode" = nocache ] && n=$(( N / 10 ))
    printf '%s run %s: ' "$mode" "$run"
    "$BIN" relogin "$PORT" "$DIR" "$n" "$C"
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; rm -rf "$DIR"
  done
done
