#!/usr/bin/env bash
# Side by side: alternate runs of two (or more) built bench binaries, each on
# a fresh database, so machine load hits both alike.
#   bench/compare.sh PG_SERVER_URL|sqlite MODE SIZE COUNT RUNS BIN...
# e.g. (BIN from `cargo bench --bench e2e --no-run`, copied out per revision)
#   bench/compare.sh postgres://postgres@127.0.0.1:55512 e2e 2048 5000 3 /tmp/e2e-old /tmp/e2e-new
# Prints every run's line prefixed by the binary's name, then `uptime`.
set -euo pipefail
server=$1 mode=$2 size=$3 count=$4 runs=$5; shift 5
uptime
for i in $(seq "$runs"); do
  for bin in "$@"; do
    if [ "$server" = sqlite ]; then
      db=/tmp/postgate-compare-$$.db; rm -f "$db"*; url="sqlite://$db"
    else
      name=compare_$$_$i; psql "$server/postgres" -qc "CREATE DATABASE $name" >/dev/null
      url="$server/$name"
    fi
    "$bin" --bench --store "$url" --mode "$mode" --size "$size" --count "$count" ${EXTRA:-} 2>/dev/null \
      | grep -v '^{' | sed "s|^|$(basename "$bin"): |"
    if [ "$server" = sqlite ]; then rm -f "$db"*; else psql "$server/postgres" -qc "DROP DATABASE $name" >/dev/null; fi
  done
done
uptime
