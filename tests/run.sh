#!/usr/bin/env bash
# The whole postgate test suite, from a clean clone on a fresh machine.
# Installs what the tests need (idempotent), starts a throwaway PostgreSQL
# as an unprivileged user on a free port unless DATABASE_URL is given, runs
# every test against SQLite and PostgreSQL, and stops PostgreSQL again.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*" >&2; }

# --- tools the tests drive (real clients nobody here wrote) -------------------
need_apt=()
command -v swaks >/dev/null || need_apt+=(swaks)
perl -MIO::Socket::SSL -MNet::SSLeay -e1 2>/dev/null || need_apt+=(libnet-ssleay-perl libio-socket-ssl-perl)
command -v curl >/dev/null || need_apt+=(curl)
[ -x /usr/sbin/smtp-sink ] || need_apt+=(postfix)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v c++ >/dev/null || need_apt+=(g++)   # libfuzzer-sys compiles libFuzzer (fuzz/)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # postfix asks questions at install time; answer "No configuration".
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
python3 -c 'import dkim, nacl, aiosmtpd, yaml' 2>/dev/null || {
  log "pip install dkimpy pynacl aiosmtpd pyyaml"
  python3 -m pip install -q --disable-pip-version-check dkimpy pynacl aiosmtpd pyyaml dnspython
}

# --- PostgreSQL ----------------------------------------------------------------
PGTMP=""
cleanup() {
  if [ -n "$PGTMP" ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGTMP/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$PGTMP"
  fi
}
trap cleanup EXIT

if [ -n "${DATABASE_URL:-}" ]; then
  export POSTGATE_TEST_PG_URL="$DATABASE_URL"
  log "using DATABASE_URL for PostgreSQL tests"
else
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -x "$PGBIN/initdb" ] || { echo "PostgreSQL server binaries not found under /usr/lib/postgresql" >&2; exit 1; }
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  PGTMP=$(mktemp -d /tmp/postgate-pg.XXXXXX)
  chown postgres "$PGTMP"; chmod 700 "$PGTMP"
  log "starting throwaway PostgreSQL on 127.0.0.1:$PGPORT"
  runuser -u postgres -- "$PGBIN/initdb" -D "$PGTMP/data" -U postgres -A trust -E UTF8 --no-locale --no-sync >/dev/null
  # fsync off: the functional suite measures behaviour, not durability (benchmarks keep it on).
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGTMP/data" -l "$PGTMP/log" -w \
    -o "-p $PGPORT -k $PGTMP -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off" start >/dev/null
  export POSTGATE_TEST_PG_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
fi

# --- the suite -----------------------------------------------------------------
log "cargo test (unit + integration, SQLite and PostgreSQL)"
cargo test --all-targets --locked 2>&1

# --- fuzzing -------------------------------------------------------------------
# Every parser's libFuzzer target for FUZZ_SECONDS (default 30) each, on the
# stable toolchain (see README "Fuzzing"); a crash fails the run.
log "fuzzing: every target for ${FUZZ_SECONDS:-30} s (fuzz/run.sh)"
fuzz/run.sh

# --- chaos, short version --------------------------------------------------------
# Faults under load through the real binary that cargo test just built, every
# message accounted for (bench/chaos/README.md; about two minutes). It runs a
# PostgreSQL of its own, since it stops and restarts it. Fails if a message
# answered 250 is lost.
log "chaos suite, short version (bench/chaos/run.sh --short)"
POSTGATE_BIN="${CARGO_TARGET_DIR:-target}/debug/postgate" bench/chaos/run.sh --short
