#!/usr/bin/env bash
# The whole benchmark in one command (issue #16): builds the release binary
# and the driver (bench/perf.rs), starts a throwaway PostgreSQL 15 (fsync on,
# pg_stat_statements) on a free port, runs every cell on both backends, and
# writes a Markdown table to bench/results/YYYY-MM-DD-HHMM.md (and stdout).
#
#   bench/perf.sh [--duration 60] [--warmup 10] [--runs 3] [--quick]
#                 [--cells SUBSTR,...] [--baseline PATH_TO_OLD_POSTGATE]
#                 [--drain 120] [--no-pg] [--no-build]
#
# --quick: 5 s runs, 2 s warm-up, 1 run (development). --cells: only cells
# whose name contains one of the strings (e.g. sqlite-c10-,pg-c100-2k-rsa;
# -http and -events: the issue #17 cells, HTTP submission and webhooks).
# --baseline: the same cells with an older binary, alternated run by run.
# --no-build: use the release binary and driver already built (each build
# takes minutes on a loaded 2-core machine; rebuild after changing src/).
# Needs root (PostgreSQL runs as user postgres via runuser) and psql.
set -euo pipefail
cd "$(dirname "$0")/.."
args=() pg=1 build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --no-pg) pg=0; shift ;;
    --no-build) build=0; shift ;;
    --baseline) [ -x "${2:-}" ] || { echo "perf.sh: --baseline needs an executable" >&2; exit 2; }
                args+=(--baseline "$(realpath "$2")"); shift 2 ;;
    --quick) args+=("$1"); shift ;;
    --duration|--warmup|--runs|--cells|--drain) args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    *) echo "perf.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
target=${CARGO_TARGET_DIR:-target}
if [ "$build" = 1 ]; then
  cargo build --release --bin postgate
  cargo bench --bench perf --no-run
  driver=$(cargo bench --bench perf --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -1)
else
  driver=$(ls -t "$target"/release/deps/perf-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
fi
[ -x "$driver" ] || { echo "perf.sh: no driver built from bench/perf.rs (run once without --no-build)" >&2; exit 1; }
[ -x "$target/release/postgate" ] || { echo "perf.sh: no $target/release/postgate (run once without --no-build)" >&2; exit 1; }
bin=$(realpath "$target/release/postgate")

tmp=$(mktemp -d /tmp/postgate-perf.XXXXXX)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
cleanup() {
  if [ -f "$tmp/data/postmaster.pid" ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$tmp/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$pg" = 1 ]; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  chown postgres "$tmp"
  runuser -u postgres -- "$PGBIN/initdb" -D "$tmp/data" -U postgres -A trust >/dev/null
  # initdb defaults otherwise: fsync, synchronous_commit and full_page_writes on.
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$tmp/data" -l "$tmp/pg.log" -w -o \
    "-p $port -k $tmp -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on -c shared_preload_libraries=pg_stat_statements" \
    start >/dev/null
  args+=(--pg "postgres://postgres@127.0.0.1:$port" --pg-data "$tmp/data")
fi

out=bench/results/$(date -u +%Y-%m-%d-%H%M).md
"$driver" --bench --bin "$bin" --out "$out" "${args[@]}"
