#!/usr/bin/env bash
# bench/run.sh: dsql-pgx side by side with the tools users would use instead, in one run.
#
#   bench/run.sh                      # from anywhere; prints a Markdown report on stdout
#   DURATION=5s RUNS=1 bench/run.sh   # quicker, noisier
#
# What it does:
#   1. builds the release binary and the `bench_pg` example (examples/bench_pg.rs);
#   2. starts a private PostgreSQL with TLS and a password exactly as the test harness does
#      (`bench_pg`), and a local DSQL endpoint (`dsql-pgx local --port 0`), both in a temp dir;
#   3. measures, each figure the median of RUNS runs, runs interleaved (progress on stderr):
#      (1) `dsql-pgx bench` vs `pgbench -M prepared -f select1.sql` over TLS
#          (PGSSLMODE=require), 1 and 8 connections, direct to PostgreSQL; pgbench with its
#          default single thread, and at 8 connections also with one thread per core (`-j`)
#          against `bench --threads` with as many; and
#          `bench --pipeline 4` (tokio-postgres pipelining) at 8 connections;
#      (2) `dsql-pgx bench` through the local endpoint vs direct (endpoint overhead): the
#          endpoint as its own process (`dsql-pgx local`) and in-process (`bench --local`);
#          the cost of DSQL's dialect: `dsql-pgx local` (dialect dsql, the default) vs
#          `dsql-pgx local --dialect postgres`, both as their own process, run back to back
#          (which one first alternates run by run) so each pair sees the same machine;
#          and, when nginx with its stream module is installed, through nginx terminating TLS in
#          front of the same PostgreSQL's Unix socket: what any TLS-terminating hop costs;
#      (3) one-shot `dsql-pgx query "select 1"` (direct TLS, the default for the endpoint's
#          DSQL-shaped name, and --ssl-negotiation postgres) vs
#          `PGPASSWORD=$(dsql-pgx token) psql -c "select 1"` against the endpoint (hyperfine);
#      (4) `bench --refresh-every 1s` vs no refresh through the endpoint: errors, p99;
#      (5) peak RSS of `bench --clients 8` (/usr/bin/time -v);
#   4. prints the results and their ratios to the targets as Markdown, and stops everything;
#   5. runs bench/rtt.sh: round trips and wall time with 2 ms and 20 ms of RTT added, and
#      refresh under delay (its own table).
#
# Needs: cargo, PostgreSQL server binaries, pgbench, psql, hyperfine, GNU time, python3.
# Optional: nginx with the stream module (Debian: nginx-light libnginx-mod-stream) for the
# TLS-proxy baseline in (2); without it that row is left out.
# Environment: DURATION (10s) and WARMUP (2s) per bench run, RUNS (3), SHOTS (hyperfine
# runs, 50), PGBENCH (path; default: pgbench next to the server binaries, else on PATH).
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
RUNS=${RUNS:-3}
SHOTS=${SHOTS:-50}
secs=${DURATION%s}

need() { command -v "$1" >/dev/null 2>&1 || { echo "bench: $1 not found; $2" >&2; exit 2; }; }
need hyperfine "install it, e.g. apt-get install hyperfine"
need psql "install it, e.g. apt-get install postgresql-client"
need python3 "install python3"
[ -x /usr/bin/time ] || { echo "bench: /usr/bin/time not found; apt-get install time" >&2; exit 2; }
if [ -z "${PGBENCH:-}" ]; then
  PGBENCH=$(ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$PGBENCH" ] || PGBENCH=$(command -v pgbench || true)
fi
[ -x "$PGBENCH" ] || { echo "bench: pgbench not found; set PGBENCH" >&2; exit 2; }

log() { echo "bench: $*" >&2; }

log "building (release)"
cargo build --release --locked --quiet --bin dsql-pgx --example bench_pg
BIN=$PWD/target/release/dsql-pgx

work=$(mktemp -d /tmp/dsql-pgx-bench.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  [ -s "$work/nginx.pid" ] && kill -QUIT "$(cat "$work/nginx.pid")" 2>/dev/null || true
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

wait_for_line() { # file pid what
  for _ in $(seq 1 600); do
    [ -s "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || { echo "bench: $3 did not start:" >&2; cat "$work"/*.log >&2; exit 1; }
    sleep 0.1
  done
  echo "bench: $3 did not start within 60 s" >&2; exit 1
}

log "starting PostgreSQL with TLS"
target/release/examples/bench_pg "$work/pg" >"$work/pg.env" 2>"$work/pg.log" &
pids+=($!)
wait_for_line "$work/pg.env" "$!" "PostgreSQL"
eval "$(cat "$work/pg.env")"

log "starting the local endpoint"
"$BIN" local --port 0 --data-dir "$work/local" >"$work/endpoint.env" 2>"$work/endpoint.log" &
pids+=($!)
wait_for_line "$work/endpoint.env" "$!" "the local endpoint"
log "starting a local endpoint with --dialect postgres"
"$BIN" local --port 0 --data-dir "$work/local-pg" --dialect postgres >"$work/endpoint-pg.env" 2>"$work/endpoint-pg.log" &
pids+=($!)
wait_for_line "$work/endpoint-pg.env" "$!" "the local endpoint (--dialect postgres)"

# The TLS-proxy baseline: nginx terminating TLS (PostgreSQL 17 direct TLS, ALPN postgresql)
# and relaying to the PostgreSQL's Unix socket, as the endpoint relays to its own.
NGINX_PORT=
stream_module=$(ls /usr/lib/nginx/modules/ngx_stream_module.so 2>/dev/null || true)
if command -v nginx >/dev/null 2>&1 && { [ -n "$stream_module" ] || nginx -V 2>&1 | grep -q -- '--with-stream '; }; then
  NGINX_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  pgdata=$work/pg/data/pgdata
  {
    [ -n "$stream_module" ] && echo "load_module $stream_module;"
    [ "$(id -u)" = 0 ] && echo "user root;" # to reach the socket in the server's 0700 data dir
    cat <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.log;
events { worker_connections 1024; }
stream {
  server {
    listen 127.0.0.1:$NGINX_PORT ssl;
    ssl_certificate $pgdata/server.crt;
    ssl_certificate_key $pgdata/server.key;
    ssl_protocols TLSv1.3;
    ssl_alpn postgresql;
    proxy_pass unix:$pgdata/.s.PGSQL.$PG_PORT;
  }
}
NGINX
  } >"$work/nginx.conf"
  log "starting nginx as a TLS-terminating proxy"
  nginx -e "$work/nginx.log" -c "$work/nginx.conf" || { log "nginx did not start; its row is left out"; NGINX_PORT=; }
else
  log "nginx with the stream module not found; the TLS-proxy baseline is left out"
fi

# Commands against PostgreSQL directly, through nginx, and through the endpoint (its env in
# a subshell).
direct() { PGPASSWORD=$PG_PASSWORD "$@" --endpoint localhost --region us-east-1 --port "$PG_PORT" --no-iam --ca-file "$PG_CA"; }
via_nginx() { PGPASSWORD=$PG_PASSWORD "$@" --endpoint localhost --region us-east-1 --port "$NGINX_PORT" --no-iam --ca-file "$PG_CA" --ssl-negotiation direct; }
endpoint() { ( source "$work/endpoint.env"; "$@" ); }
endpoint_pg() { ( source "$work/endpoint-pg.env"; "$@" ); }
in_process() { "$@" --local; }
printf 'select 1;\n' >"$work/select1.sql"

sum() { python3 -c 'import sys; print(sum(float(x) for x in sys.argv[1:]))' "$@"; }
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# bench_once NAME RUN WHERE CLIENTS [extra flags]: one run, its JSON kept as NAME.RUN.json.
bench_once() {
  local name=$1 i=$2 where=$3 clients=$4; shift 4
  $where "$BIN" bench --clients "$clients" --duration "$DURATION" --warmup "$WARMUP" \
    --format json "$@" >"$work/$name.$i.json"
  log "$name run $i: $(field qps <"$work/$name.$i.json") q/s"
}

# pgbench_once NAME RUN CLIENTS THREADS: one run, its tps kept in NAME.RUN.tps.
pgbench_once() {
  PGSSLMODE=require PGPASSWORD=$PG_PASSWORD "$PGBENCH" -h localhost -p "$PG_PORT" -U admin \
    -n -M prepared -f "$work/select1.sql" -c "$3" -j "$4" -T "$secs" postgres 2>/dev/null |
    sed -n 's/^tps = \([0-9.]*\).*/\1/p' >"$work/$1.$2.tps"
  log "$1 run $2: $(cat "$work/$1.$2.tps") tps"
}

median_of() { # NAME KEY: the median of KEY over NAME's runs (KEY "tps" reads pgbench's files)
  local values=()
  for i in $(seq 1 "$RUNS"); do
    if [ "$2" = tps ]; then values+=("$(cat "$work/$1.$i.tps")")
    else values+=("$(field "$2" <"$work/$1.$i.json")"); fi
  done
  median "${values[@]}"
}

# (1), (2) and (4), interleaved run by run so that drift in the machine hits every column.
for i in $(seq 1 "$RUNS"); do
  pgbench_once pgbench1 "$i" 1 1
  bench_once direct1 "$i" direct 1
  bench_once endpoint1 "$i" endpoint 1
  pgbench_once pgbench8 "$i" 8 1
  # The dialect's cost: with and without it back to back, which first alternating, so that
  # the pair sees the same machine.
  if [ $((i % 2)) = 1 ]; then
    bench_once endpointpg1 "$i" endpoint_pg 1; bench_once dialect1 "$i" endpoint 1
    bench_once endpointpg8 "$i" endpoint_pg 8; bench_once dialect8 "$i" endpoint 8
  else
    bench_once dialect1 "$i" endpoint 1; bench_once endpointpg1 "$i" endpoint_pg 1
    bench_once dialect8 "$i" endpoint 8; bench_once endpointpg8 "$i" endpoint_pg 8
  fi
  pgbench_once pgbench8j "$i" 8 "$(nproc)"
  bench_once direct8 "$i" direct 8
  bench_once direct8j "$i" direct 8 --threads "$(nproc)"
  bench_once pipe8 "$i" direct 8 --pipeline 4
  bench_once endpoint8 "$i" endpoint 8
  bench_once inproc1 "$i" in_process 1
  bench_once inproc8 "$i" in_process 8
  if [ -n "$NGINX_PORT" ]; then
    bench_once nginx1 "$i" via_nginx 1
    bench_once nginx8 "$i" via_nginx 8
  fi
  # refresh under load, through the endpoint (an IAM token signed for every new connection)
  bench_once refresh "$i" endpoint 8 --refresh-every 1s
done
pgb1=$(median_of pgbench1 tps); pgb8=$(median_of pgbench8 tps); pgb8j=$(median_of pgbench8j tps)
dir1=$(median_of direct1 qps); dir8=$(median_of direct8 qps); pipe8=$(median_of pipe8 qps)
dir8j=$(median_of direct8j qps)
ep1=$(median_of endpoint1 qps); ep8=$(median_of endpoint8 qps)
eppg1=$(median_of endpointpg1 qps); eppg8=$(median_of endpointpg8 qps)
dial1=$(median_of dialect1 qps); dial8=$(median_of dialect8 qps)
inproc1=$(median_of inproc1 qps); inproc8=$(median_of inproc8 qps)
ngx1=0; ngx8=0
[ -n "$NGINX_PORT" ] && { ngx1=$(median_of nginx1 qps); ngx8=$(median_of nginx8 qps); }
ngxver=$(nginx -v 2>&1 | sed 's/.*nginx\///' || true)
p99_plain=$(median_of endpoint8 p99_ms); p99_refresh=$(median_of refresh p99_ms)
errors_refresh=$(sum $(for i in $(seq 1 "$RUNS"); do field failed <"$work/refresh.$i.json"; done))
errors_plain=$(sum $(for i in $(seq 1 "$RUNS"); do field failed <"$work/endpoint8.$i.json"; done))
refreshes=$(sum $(for i in $(seq 1 "$RUNS"); do field refreshes <"$work/refresh.$i.json"; done))

# (3) one-shot query vs the psql pipeline, against the endpoint
log "one-shot queries (hyperfine, $SHOTS runs each)"
endpoint hyperfine -N --style none --warmup 5 --runs "$SHOTS" --export-json "$work/oneshot.json" \
  -n query "$BIN query 'select 1'" \
  -n query-direct "$BIN query --ssl-negotiation postgres 'select 1'" \
  -n psql "bash -c 'PGPASSWORD=\$($BIN token) psql -X -Atq \"host=\$CLUSTER_ENDPOINT hostaddr=\$DB_HOST port=\$DB_PORT user=admin dbname=postgres sslmode=verify-full sslrootcert=\$PGSSLROOTCERT\" -c \"select 1\"'" \
  >&2
# The pipeline's shell is part of what a user runs; measure it alone too, for the record.
oneshot() { python3 -c 'import json,sys; r={x["command"]:x for x in json.load(open(sys.argv[1]))["results"]}; print(r[sys.argv[2]][sys.argv[3]]*1000)' "$work/oneshot.json" "$@"; }
q_mean=$(oneshot query mean); qd_mean=$(oneshot query-direct mean); psql_mean=$(oneshot psql mean)

# (5) peak RSS
log "peak RSS of bench --clients 8"
direct /usr/bin/time -v "$BIN" bench --clients 8 --duration "$DURATION" --warmup "$WARMUP" --format json \
  >"$work/rss.json" 2>"$work/rss.txt"
rss_kb=$(sed -n 's/.*Maximum resident set size (kbytes): *//p' "$work/rss.txt")

commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo "+dirty")
cpu=$(sed -n 's/^model name[^:]*: *//p' /proc/cpuinfo | head -1)
pgver=$("$PGBENCH" --version | awk '{print $3}')

python3 - "$pgb1" "$dir1" "$pgb8" "$dir8" "$ep1" "$ep8" "$p99_plain" "$p99_refresh" \
  "$errors_plain" "$errors_refresh" "$refreshes" "$q_mean" "$qd_mean" "$psql_mean" "$rss_kb" \
  "$pgb8j" "$pipe8" "$ngx1" "$ngx8" "$inproc1" "$inproc8" "$dir8j" "$commit" "$cpu" "$(nproc)" "$pgver" "$DURATION" "$RUNS" \
  "$SHOTS" "$ngxver" "$work" "$eppg1" "$eppg8" "$dial1" "$dial8" <<'EOF'
import sys, datetime, json, os, statistics
(pgb1, dir1, pgb8, dir8, ep1, ep8, p99_plain, p99_refresh, err_plain, err_refresh, refreshes,
 q, qd, psql, rss_kb, pgb8j, pipe8, ngx1, ngx8, inproc1, inproc8, dir8j) = map(float, sys.argv[1:23])
commit, cpu, cores, pgver, duration, runs, shots, ngxver, work = sys.argv[23:32]
eppg1, eppg8, dial1, dial8 = map(float, sys.argv[32:36])

def run_value(name, i, key):
    """One run's figure: pgbench's tps, or a key of dsql-pgx's JSON."""
    path = os.path.join(work, f"{name}.{i}")
    if os.path.exists(path + ".tps"):
        return float(open(path + ".tps").read())
    return float(json.load(open(path + ".json"))[key])

def paired(a, b, key="qps"):
    """The median of run-by-run ratios a/b: the runs are interleaved, so a drift of the
    machine during the run moves both sides of each pair and cancels out."""
    return statistics.median(run_value(a, i, key) / run_value(b, i, key)
                             for i in range(1, int(runs) + 1))
ok = lambda good: "✅" if good else "❌"
date = datetime.date.today().isoformat()
print(f"### Benchmarks ({date}, commit `{commit}`)\n")
print(f"{cpu}, {cores} cores; PostgreSQL {pgver}, server and clients on the same machine; "
      f"TLS everywhere; `select 1`; each throughput the median of {runs} runs of {duration} "
      f"(after a warm-up for `dsql-pgx bench`; pgbench excludes its connection time), runs interleaved, "
      f"each ratio the median of the run-by-run ratios; one-shot times the mean of {shots} runs. "
      "Run `bench/run.sh` to reproduce.\n")
print("| # | measure | dsql-pgx | baseline | ratio | target |")
print("|---|---|---|---|---|---|")
print(f"| 1 | throughput, 1 connection, vs `pgbench -M prepared` | {dir1:,.0f} q/s | {pgb1:,.0f} tps | {paired('direct1', 'pgbench1'):.2f}× | ≥ 1.0× {ok(paired('direct1', 'pgbench1') >= 1)} |")
print(f"| 1 | throughput, 8 connections, vs `pgbench -M prepared` | {dir8:,.0f} q/s | {pgb8:,.0f} tps | {paired('direct8', 'pgbench8'):.2f}× | ≥ 1.0× {ok(paired('direct8', 'pgbench8') >= 1)} |")
print(f"| 1 | throughput, 8 connections, `--threads {cores}` vs `pgbench -M prepared -j {cores}` | {dir8j:,.0f} q/s | {pgb8j:,.0f} tps | {paired('direct8j', 'pgbench8j'):.2f}× | ≥ 1.0× {ok(paired('direct8j', 'pgbench8j') >= 1)} |")
print(f"| 1 | the same, 4 queries in flight per connection (`--pipeline 4`) vs `-j {cores}` | {pipe8:,.0f} q/s | {pgb8j:,.0f} tps | {paired('pipe8', 'pgbench8j'):.2f}× | (pipelining) |")
o1, o8 = 1 - paired('endpoint1', 'direct1'), 1 - paired('endpoint8', 'direct8')
print(f"| 2 | through `dsql-pgx local` (own process) vs direct, 1 client | {ep1:,.0f} q/s | {dir1:,.0f} q/s | overhead {o1:.0%} | ≤ 10 % {ok(o1 <= 0.10)} |")
print(f"| 2 | through `dsql-pgx local` (own process) vs direct, 8 clients | {ep8:,.0f} q/s | {dir8:,.0f} q/s | overhead {o8:.0%} | ≤ 10 % {ok(o8 <= 0.10)} |")
d1, d8 = paired('dialect1', 'endpointpg1'), paired('dialect8', 'endpointpg8')
print(f"| 2 | DSQL's dialect: `local` vs `local --dialect postgres`, 1 client (back-to-back pairs) | {dial1:,.0f} q/s | {eppg1:,.0f} q/s | {d1:.2f}× | ≥ 0.95× {ok(d1 >= 0.95)} |")
print(f"| 2 | DSQL's dialect: `local` vs `local --dialect postgres`, 8 clients (back-to-back pairs) | {dial8:,.0f} q/s | {eppg8:,.0f} q/s | {d8:.2f}× | ≥ 0.95× {ok(d8 >= 0.95)} |")
i1, i8 = 1 - paired('inproc1', 'direct1'), 1 - paired('inproc8', 'direct8')
print(f"| 2 | through the in-process endpoint (`bench --local`) vs direct, 1 client | {inproc1:,.0f} q/s | {dir1:,.0f} q/s | overhead {i1:.0%} | ≤ 10 % {ok(i1 <= 0.10)} |")
print(f"| 2 | through the in-process endpoint (`bench --local`) vs direct, 8 clients | {inproc8:,.0f} q/s | {dir8:,.0f} q/s | overhead {i8:.0%} | ≤ 10 % {ok(i8 <= 0.10)} |")
if ngx8 > 0:
    n1, n8 = 1 - paired('nginx1', 'direct1'), 1 - paired('nginx8', 'direct8')
    print(f"| 2 | baseline: nginx {ngxver} terminating TLS vs direct, 1 client | {ngx1:,.0f} q/s | {dir1:,.0f} q/s | overhead {n1:.0%} | (any TLS proxy) |")
    print(f"| 2 | baseline: nginx {ngxver} terminating TLS vs direct, 8 clients | {ngx8:,.0f} q/s | {dir8:,.0f} q/s | overhead {n8:.0%} | (any TLS proxy) |")
    print(f"| 2 | the endpoint (verifying IAM, DSQL's limits) vs nginx, 8 clients | {ep8:,.0f} q/s | {ngx8:,.0f} q/s | {paired('endpoint8', 'nginx8'):.2f}× | (relay cost) |")
print(f"| 3 | one-shot `query \"select 1\"` vs `PGPASSWORD=$(dsql-pgx token) psql -c` | {q:.1f} ms | {psql:.1f} ms | {q/psql:.2f}× | ≤ 0.7× {ok(q <= 0.7 * psql)} |")
print(f"| 3 | the same with `--ssl-negotiation postgres` (SSLRequest; direct TLS is the default here) | {qd:.1f} ms | {psql:.1f} ms | {qd/psql:.2f}× | ≤ 0.7× {ok(qd <= 0.7 * psql)} |")
print(f"| 4 | p99 with `--refresh-every 1s` vs none (8 clients, endpoint) | {p99_refresh:.3f} ms | {p99_plain:.3f} ms | {paired('refresh', 'endpoint8', 'p99_ms'):.2f}× | ≤ 2× {ok(paired('refresh', 'endpoint8', 'p99_ms') <= 2)} |")
print(f"| 4 | failed queries with / without refreshes ({refreshes:.0f} refreshes) | {err_refresh:.0f} | {err_plain:.0f} | | 0 {ok(err_refresh == 0)} |")
print(f"| 5 | peak RSS of `bench --clients 8` | {rss_kb/1024:.1f} MB | | | ≤ 30 MB {ok(rss_kb <= 30 * 1024)} |")
EOF

echo
BIN=$BIN bench/rtt.sh
