#!/usr/bin/env bash
# The postgate chaos suite (issue #13 item 7): faults under continuous load
# on SQLite and PostgreSQL, every message accounted for by Message-ID.
#
#   bench/chaos/run.sh            # the long version (about 25 minutes)
#   bench/chaos/run.sh --short    # the quick version tests/run.sh runs (about 2 minutes)
#   bench/chaos/run.sh --backend sqlite --scenario sigkill   # one scenario
#
# Uses the postgate binary in $POSTGATE_BIN (default: target/release/postgate,
# else target/debug/postgate; build it first), python3, and a throwaway
# PostgreSQL of its own (it stops and restarts it: never the one of your
# tests). SQLite "disk full" mounts a 20 MB tmpfs, so it needs root (skipped
# otherwise). Everything listens on 127.0.0.1 only. Any other argument goes
# to bench/chaos/chaos.py (--help lists them). Exits non-zero if a message
# answered 250 was lost.
set -euo pipefail
cd "$(dirname "$0")/../.."

target="${CARGO_TARGET_DIR:-target}"
BIN="${POSTGATE_BIN:-}"
if [ -z "$BIN" ]; then
  for b in "$target/release/postgate" "$target/debug/postgate"; do
    [ -x "$b" ] && { BIN="$b"; break; }
  done
fi
[ -x "${BIN:-}" ] || { echo "no postgate binary: cargo build first, or set POSTGATE_BIN" >&2; exit 2; }

PGTMP=""
cleanup() {
  if [ -n "$PGTMP" ]; then
    $PGCTL stop -m immediate >/dev/null 2>&1 || true
    rm -rf "$PGTMP"
  fi
}
trap cleanup EXIT

want_pg=1
case " $* " in
  *" --backend sqlite "*) case " $* " in *" --backend postgres "*) ;; *) want_pg=0 ;; esac ;;
esac

if [ "$want_pg" = 1 ]; then
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -x "$PGBIN/initdb" ] || { echo "PostgreSQL server binaries not found under /usr/lib/postgresql" >&2; exit 2; }
  as_pg=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    as_pg=(runuser -u postgres --)
  fi
  PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  PGTMP=$(mktemp -d /tmp/postgate-chaos-pg.XXXXXX)
  [ "$(id -u)" = 0 ] && chown postgres "$PGTMP"
  chmod 700 "$PGTMP"
  "${as_pg[@]}" "$PGBIN/initdb" -D "$PGTMP/data" -U postgres -A trust -E UTF8 --no-locale >/dev/null
  # Settings in the data directory, so that a plain `pg_ctl start` after a
  # stop brings back the same server. fsync stays on: durability is measured.
  cat >>"$PGTMP/data/postgresql.conf" <<EOF
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGTMP'
max_connections = 200
EOF
  PGCTL="${as_pg[*]} $PGBIN/pg_ctl -D $PGTMP/data -l $PGTMP/log -w"
  $PGCTL start >/dev/null
  export CHAOS_PG_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
  export CHAOS_PG_CTL="$PGCTL"
  export CHAOS_PSQL="$PGBIN/psql"
  [ -x "$CHAOS_PSQL" ] || CHAOS_PSQL=psql
fi

echo "# chaos: $BIN ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg))"
python3 bench/chaos/chaos.py --bin "$BIN" "$@"
