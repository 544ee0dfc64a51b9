#!/usr/bin/env bash
# Queue + delivery benchmark: every run on a fresh database.
#   bench/run.sh PG_SERVER_URL MODE SIZE COUNT [RUNS]
# e.g. bench/run.sh postgres://postgres@127.0.0.1:55512 both 2048 10000 3
# PG_SERVER_URL without a database name; "sqlite" instead benchmarks SQLite
# (a file in /tmp). PostgreSQL should run with fsync on (the default).
# MODE is sink|enqueue|deliver|both|rss (bench/delivery.rs) or e2e (bench/e2e.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
server=$1 mode=$2 size=$3 count=$4 runs=${5:-3}
bench=delivery; [ "$mode" = e2e ] && bench=e2e
cargo bench --bench "$bench" --no-run 2>/dev/null
bin=$(ls -t target/release/deps/"$bench"-* | grep -v '\.d$' | head -1)
for i in $(seq "$runs"); do
  if [ "$server" = sqlite ]; then
    db=/tmp/postgate-bench-$$.db; rm -f "$db"*
    url="sqlite://$db"
  else
    name=bench_$$_$i
    psql "$server/postgres" -qc "CREATE DATABASE $name" >/dev/null
    url="$server/$name"
  fi
  "$bin" --bench --store "$url" --mode "$mode" --size "$size" --count "$count" ${EXTRA:-} 2>/dev/null | grep -v '^{' 
  if [ "$server" = sqlite ]; then rm -f "$db"*; else psql "$server/postgres" -qc "DROP DATABASE $name" >/dev/null; fi
done
