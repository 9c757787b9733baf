#!/usr/bin/env bash
# bench/rtt.sh: round trips and wall time with network delay added, the rows of issue 14.
#
#   bench/rtt.sh            # prints a Markdown table on stdout (about 4 minutes)
#   bench/run.sh            # runs this too, after its own rows
#
# Delay comes from bench/rtt-relay.py (a TCP relay holding each chunk for DELAY ms each way,
# so RTT = 2 x DELAY, with --emulate-connect for the TCP handshake's round trip); it also
# counts the round trips each connection waited for. At 2 ms and 20 ms RTT, against the
# local endpoint (IAM, its DSQL-shaped name, so direct TLS by default) and against plain
# PostgreSQL (password, SSLRequest), it measures:
#   - round trips of `dsql-pgx query -q "select 1"` and of `psql -c "select 1"`;
#   - wall time of the same (mean of SHOTS interleaved runs, each started from bash, so
#     both pay the same shell), psql given a token signed
#     beforehand (PGPASSWORD=<token>), so only the connection is compared;
#   - `dsql-pgx bench --clients 8` through the relay with and without `--refresh-every 1s`:
#     throughput and p99 (latency counted from before the checkout), BENCH_RUNS pairs of
#     runs interleaved (the order alternating, so drift hits both), the medians compared.
# Needs what bench/run.sh needs. Environment: SHOTS (20), BENCH_FOR (10s), BENCH_RUNS (3),
# BIN and PG env when run.sh calls it (it reuses run.sh's servers).
set -euo pipefail

cd "$(dirname "$0")/.."
SHOTS=${SHOTS:-20}
BENCH_FOR=${BENCH_FOR:-10s}
BENCH_RUNS=${BENCH_RUNS:-3}
RELAY=$PWD/bench/rtt-relay.py
log() { echo "rtt: $*" >&2; }

if [ -z "${BIN:-}" ]; then
  log "building (release)"
  cargo build --release --locked --quiet --bin dsql-pgx --example bench_pg
  BIN=$PWD/target/release/dsql-pgx
fi

work=$(mktemp -d /tmp/dsql-pgx-rtt.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
wait_for() { # file pid what
  for _ in $(seq 1 600); do
    [ -s "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || { log "$3 did not start"; cat "$work"/*.log >&2; exit 1; }
    sleep 0.1
  done
  log "$3 did not start within 60 s"; exit 1
}

log "starting PostgreSQL with TLS and the local endpoint"
target/release/examples/bench_pg "$work/pg" >"$work/pg.env" 2>"$work/pg.log" &
pids+=($!); wait_for "$work/pg.env" "$!" "PostgreSQL"
eval "$(cat "$work/pg.env")"
"$BIN" local --port 0 --data-dir "$work/local" >"$work/endpoint.env" 2>"$work/endpoint.log" &
pids+=($!); wait_for "$work/endpoint.env" "$!" "the local endpoint"
# shellcheck disable=SC1091
source "$work/endpoint.env"
EP_PORT=$DB_PORT
TOKEN=$("$BIN" token)

# relay NAME DELAY_MS PORT: starts a relay to PORT; sets RPORT and RPID.
relay() {
  python3 "$RELAY" --listen 127.0.0.1:0 --to "127.0.0.1:$3" --delay-ms "$2" --emulate-connect \
    --report "$work/$1.json" >"$work/$1.port" 2>"$work/$1.log" &
  RPID=$!; pids+=("$RPID")
  wait_for "$work/$1.port" "$RPID" "the relay"
  RPORT=$(awk '/^port/ {print $2}' "$work/$1.port")
}
stop_relay() { kill -TERM "$RPID"; wait "$RPID" 2>/dev/null || true; }
trips() { python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["connections"]; print(c[0]["round_trips"] if len(c)==1 else "/".join(str(x["round_trips"]) for x in c))' "$work/$1.json"; }

ours_iam() { "$BIN" query -q "select 1" --port "$1" >/dev/null; }
psql_iam() { PGPASSWORD=$TOKEN psql -X -Atq "host=$CLUSTER_ENDPOINT hostaddr=127.0.0.1 port=$1 user=admin dbname=postgres sslmode=verify-full sslrootcert=$PGSSLROOTCERT" -c "select 1" >/dev/null; }
ours_pg() { PGPASSWORD=$PG_PASSWORD "$BIN" query -q "select 1" --endpoint localhost --host 127.0.0.1 --port "$1" --no-iam --ca-file "$PG_CA" >/dev/null; }
psql_pg() { PGPASSWORD=$PG_PASSWORD psql -X -Atq "host=localhost hostaddr=127.0.0.1 port=$1 user=admin dbname=postgres sslmode=verify-full sslrootcert=$PG_CA" -c "select 1" >/dev/null; }
export -f ours_iam psql_iam ours_pg psql_pg
export BIN TOKEN CLUSTER_ENDPOINT PGSSLROOTCERT PG_PASSWORD PG_CA
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY REGION CLUSTER_ENDPOINT DB_HOST

rows=()
for delay in 1 10; do
  rtt=$((2 * delay))
  for side in iam pg; do
    upstream=$EP_PORT; [ "$side" = pg ] && upstream=$PG_PORT
    for tool in ours psql; do
      relay "$tool-$side-$rtt" "$delay" "$upstream"
      "${tool}_$side" "$RPORT"
      stop_relay
      printf '%s\n' "$(trips "$tool-$side-$rtt")" >"$work/$tool-$side-$rtt.trips"
    done
    relay "wall-$side-$rtt" "$delay" "$upstream"
    log "$side at $rtt ms RTT: $SHOTS runs each, interleaved"
    # The mean wall time of each, runs interleaved (so drift hits both), after 2 warm-ups.
    python3 - "$work/wall-$side-$rtt.hf" "$SHOTS" "ours_$side $RPORT" "psql_$side $RPORT" <<'PY'
import json, subprocess, sys, time
out, shots, cmds = sys.argv[1], int(sys.argv[2]), {"ours": sys.argv[3], "psql": sys.argv[4]}
times = {name: [] for name in cmds}
for i in range(shots + 2):
    for name, cmd in cmds.items():
        start = time.perf_counter()
        subprocess.run(["bash", "-c", cmd], check=True)
        if i >= 2:
            times[name].append(time.perf_counter() - start)
json.dump({"results": [{"command": n, "mean": sum(t) / len(t)} for n, t in times.items()]}, open(out, "w"))
PY
    stop_relay
  done
  if [ "$delay" = 10 ] || [ "${BENCH_ALL:-}" = 1 ]; then
    for run in $(seq 1 "$BENCH_RUNS"); do
      order="none 1s"; [ $((run % 2)) = 0 ] && order="1s none"
      for refresh in $order; do
        relay "bench-$refresh-$rtt-$run" "$delay" "$EP_PORT"
        extra=(); [ "$refresh" = 1s ] && extra=(--refresh-every 1s)
        log "bench at $rtt ms RTT, refresh $refresh, run $run of $BENCH_RUNS"
        "$BIN" bench --clients 8 --max-conns 10 --duration "$BENCH_FOR" --warmup 2s --port "$RPORT" \
          --format json "${extra[@]}" >"$work/bench-$refresh-$rtt-$run.out"
        stop_relay
      done
    done
  fi
done

python3 - "$work" "$BENCH_RUNS" <<'PY'
import json, statistics, sys
work, runs = sys.argv[1], int(sys.argv[2])
def hf(side, rtt):
    r = {x["command"]: x["mean"] * 1000 for x in json.load(open(f"{work}/wall-{side}-{rtt}.hf"))["results"]}
    return r["ours"], r["psql"]
def trips(tool, side, rtt):
    return open(f"{work}/{tool}-{side}-{rtt}.trips").read().strip()
ok = lambda good: "✅" if good else "❌"
print("| RTT | server | measure | dsql-pgx | baseline | ratio | target |")
print("|---|---|---|---|---|---|---|")
for rtt in (2, 20):
    for side, name, base in (("iam", "local endpoint, IAM, DSQL-shaped name", "`PGPASSWORD=<token> psql -c`"),
                             ("pg", "plain PostgreSQL 15, password", "`PGPASSWORD=... psql -c`")):
        ours_t, psql_t = trips("ours", side, rtt), trips("psql", side, rtt)
        target = f"4 {ok(ours_t == '4')}" if side == "iam" else ""
        print(f"| {rtt} ms | {name} | round trips of `query -q \"select 1\"` vs {base} | {ours_t} | {psql_t} | | {target} |")
        ours, psql = hf(side, rtt)
        target = f"≤ 0.6× {ok(ours <= 0.6 * psql)}" if side == "iam" and rtt == 20 else ""
        print(f"| {rtt} ms | {name} | wall time of the same | {ours:.1f} ms | {psql:.1f} ms | {ours/psql:.2f}× | {target} |")
for rtt in (2, 20):
    try:
        plain = [json.load(open(f"{work}/bench-none-{rtt}-{r}.out")) for r in range(1, runs + 1)]
        fresh = [json.load(open(f"{work}/bench-1s-{rtt}-{r}.out")) for r in range(1, runs + 1)]
    except FileNotFoundError:
        continue
    med = lambda xs, key: statistics.median(x[key] for x in xs)
    q = med(fresh, "qps") / med(plain, "qps")
    p = med(fresh, "p99_ms") / med(plain, "p99_ms")
    each = lambda key: ", ".join(f"{f[key] / n[key]:.2f}" for f, n in zip(fresh, plain))
    refreshes = sum(f["refreshes"] for f in fresh)
    failed = sum(f["failed"] + f["failed_refreshes"] for f in fresh)
    waits = sum(f["pool"]["waits"] for f in fresh)
    runs_text = f"median of {runs} interleaved pairs" if runs > 1 else "one pair"
    print(f"| {rtt} ms | local endpoint | `bench --clients 8` throughput, `--refresh-every 1s` vs none, {runs_text} (each pair: {each('qps')}; {refreshes} refreshes, {failed} failed, {waits} checkouts waited) | {med(fresh, 'qps'):.0f} q/s | {med(plain, 'qps'):.0f} q/s | {q:.2f}× | ≥ 0.97× {ok(q >= 0.97)} |")
    print(f"| {rtt} ms | local endpoint | p99 latency (from before the checkout), the same (each pair: {each('p99_ms')}) | {med(fresh, 'p99_ms'):.1f} ms | {med(plain, 'p99_ms'):.1f} ms | {p:.2f}× | ≤ 1.2× {ok(p <= 1.2)} |")
PY
