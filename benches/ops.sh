#!/usr/bin/env bash
# benches/ops.sh: what `--listen` costs a run that is being scraped (issue 16's target:
# throughput within 3% of the same run without it).
#
# What it does
#   1. Builds pipe and the plugins (release) and generates $RECORDS orders (CSV, seed 42)
#      into $DATA.
#   2. Runs the shipped `default` pipeline (filter -> dedup -> compute -> mask -> select)
#      over them $RUNS times in each of three ways, interleaved so that machine noise hits
#      all alike: without `--listen`; with `--listen 127.0.0.1:0` and nobody scraping (the
#      server's own cost); with `--listen` while curl scrapes /metrics every 100 ms (the
#      server's and the scraper's: on 2 cores the curl processes compete with the run's
#      threads for the CPU). Output goes to /dev/null.
#   3. Also takes each run's CPU time (user + system, from getrusage of the child): on a
#      shared 2-core machine wall-clock throughput moves with whatever else runs, while
#      the CPU time the run spends is what the server and its scrapes add to it.
#   4. Reads each run's own clock (`--stats=json`: elapsed_ms starts once the stages are
#      loaded, so plugin loading is not in the figure), and prints the median
#      records/s of each, their ratio, the number of scrapes that answered, and whether
#      the 3% target holds.
#
# Usage: bash benches/ops.sh          (RECORDS=2000000 RUNS=7 DATA=target/ops-bench)
set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS=${RECORDS:-2000000}
RUNS=${RUNS:-7}
DATA=${DATA:-target/ops-bench}
command -v curl >/dev/null || { echo "ops.sh needs curl (apt-get install -y curl)" >&2; exit 2; }

cargo build --release --quiet
PIPE=target/release/pipe
mkdir -p "$DATA"
IN="$DATA/orders-$RECORDS.csv"
[ -s "$IN" ] || "$PIPE" generate orders-csv --records "$RECORDS" >"$IN"

# Runs a command; writes its CPU seconds (user + system) to $DATA/cpu.
cpu() {
    python3 -c 'import resource, subprocess, sys
subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=open(sys.argv[1] + "/stderr", "w"))
r = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1] + "/cpu", "w").write(str(r.ru_utime + r.ru_stime))' "$DATA" "$@"
}

# One run; prints its records/s and CPU seconds (and, scraped, the number of scrapes on
# fd 3).
run() {
    local listen=$1 err="$DATA/stderr"
    # A stale file would hand the scraper the last run's address.
    rm -f "$err"
    if [ "$listen" = no ]; then
        cpu "$PIPE" run --no-watch --no-progress --stats=json "$IN"
    elif [ "$listen" = idle ]; then
        cpu "$PIPE" run --no-watch --no-progress --stats=json --listen 127.0.0.1:0 "$IN"
    else
        cpu "$PIPE" run --no-watch --no-progress --stats=json --listen 127.0.0.1:0 "$IN" &
        local pid=$! addr="" scrapes=0
        # The address is logged once the server is up; scrape until the run ends.
        while kill -0 "$pid" 2>/dev/null; do
            [ -n "$addr" ] || addr=$(grep -o 'http://[0-9.:]*' "$err" 2>/dev/null | head -1 || true)
            if [ -n "$addr" ] && curl -sf --max-time 1 "$addr/metrics" >/dev/null; then
                scrapes=$((scrapes + 1))
            fi
            sleep 0.1
        done
        wait "$pid"
        echo "$scrapes" >&3
    fi
    # The last line of stderr is the --stats=json object.
    tail -1 "$err" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["read"]/(s["elapsed_ms"]/1e3), open(sys.argv[1]).read())' "$DATA/cpu"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

plain=() idle=() scraped=() total_scrapes=0
: >"$DATA/scrapes"
for i in $(seq "$RUNS"); do
    plain+=("$(run no)")
    idle+=("$(run idle)")
    scraped+=("$(run yes 3>>"$DATA/scrapes")")
done
total_scrapes=$(awk '{s+=$1} END {print s+0}' "$DATA/scrapes")
rm -f "$DATA/scrapes"
col() { printf '%s\n' "$@" | awk -v c="$COL" '{print $c}' | median; }
COL=1; p=$(col "${plain[@]}"); d=$(col "${idle[@]}"); s=$(col "${scraped[@]}")
COL=2; pc=$(col "${plain[@]}"); dc=$(col "${idle[@]}"); sc=$(col "${scraped[@]}")
python3 - "$p" "$d" "$s" "$pc" "$dc" "$sc" "$RECORDS" "$RUNS" "$total_scrapes" <<'PY'
import sys
p, d, s, pc, dc, sc = (float(x) for x in sys.argv[1:7])
n, runs, scrapes = (int(x) for x in sys.argv[7:10])
print(f"records: {n}, runs: {runs} each; medians (ratio to without --listen)")
print(f"                              records/s          CPU s of the run")
print(f"  without --listen            {p:10.0f}          {pc:7.2f}")
print(f"  --listen, not scraped       {d:10.0f} ({d / p:.3f})  {dc:7.2f} ({dc / pc:.3f})")
print(f"  --listen, scraped /100 ms   {s:10.0f} ({s / p:.3f})  {sc:7.2f} ({sc / pc:.3f})  {scrapes} scrapes answered")
print(f"  target, throughput within 3%: {'holds' if s / p >= 0.97 else 'MISSED'} by wall clock; "
      f"{'holds' if pc / sc >= 0.97 else 'MISSED'} by CPU time")
PY
