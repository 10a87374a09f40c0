#!/usr/bin/env bash
# benches/jetstream.sh: scale-out through NATS JetStream (issue 15), measured on this
# machine against a real nats-server started for the purpose.
#
# What it does
#   1. Builds pipe and the plugins (release), and the test plugin `tagger` in its v1 and
#      v2 builds (for the hot swap of part 4).
#   2. Starts `nats-server -js` on a free loopback port with a store in $DATA, and
#      generates $RECORDS orders (CSV, seed 42).
#   3. Throughput, one instance. The CSV chain of benches/compare.sh (filter amount > 500
#      -> compute country = upper(country), amount_cents = amount * 100 -> select 4
#      columns) run (a) from the file to /dev/null, (b) from stream IN to stream OUT
#      (messages of $BATCH records, published beforehand; `pipe publish` is timed apart).
#      records/s = read / elapsed of each run's own --stats=json clock (it starts once the
#      stages are loaded; the stream run's includes connecting, the end-of-work check and
#      closing, about 0.04 s in all). $RUNS rounds of (a) then (b), each (b) through a
#      consumer and an output stream of its own; the ratio is of the medians.
#      Target: (b) >= 50% of (a).
#   4. Three instances on one job (a fresh consumer over the same messages): aggregate
#      records/s (records / wall time from the first start to the last exit) and the CPU
#      seconds (user + system) of each instance and of the server.
#   5. The fault run: $RECORDS records through three instances of a pipeline tagging each
#      record with its instance and plugin version (tagger -> compute worker = 'X'), with
#      a stage that sleeps $DELAY_MS per batch so that the faults land mid-run: after 1 s
#      instance A is killed (kill -9), after 1.5 s instance C's tagger is replaced by v2
#      (hot swap), after 2 s B gets SIGTERM. C runs until the consumer is empty. Checks: every id in the output stream exactly once, and the
#      accounting: B and C each balance (read = written + ...), and the records each wrote
#      are the ones in the output stream tagged with its name plus those the stream
#      dropped as duplicates (batches A had published but not acked when it died).
#
# Run from anywhere:  bash benches/jetstream.sh
# Environment: RECORDS (1000000), BATCH (1024), DATA (target/jetstream-bench),
#   DELAY_MS (10), RUNS (5: rounds of part 3).
# Keep the machine otherwise idle: 2 cores are shared by pipe, the server and the OS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RECORDS="${RECORDS:-1000000}"
BATCH="${BATCH:-1024}"
DATA="${DATA:-$ROOT/target/jetstream-bench}"
DELAY_MS="${DELAY_MS:-10}"
RUNS="${RUNS:-5}"
PIPE="$ROOT/target/release/pipe"

cd "$ROOT"
mkdir -p "$DATA/v1" "$DATA/v2"
build() { cargo build --release -q "$@" 2>"$DATA/build.log" || { cat "$DATA/build.log"; exit 1; }; }
build -p pipe -p stage-filter -p stage-compute -p stage-select -p test-faulty -p test-tagger
cp target/release/libtagger.so "$DATA/v1/"
build -p test-tagger --features v2
cp target/release/libtagger.so "$DATA/v2/"
build -p test-tagger

command -v nats-server >/dev/null || { echo "nats-server is not installed (apt-get install nats-server)" >&2; exit 1; }
rm -rf "$DATA/store"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="nats://127.0.0.1:$PORT"
nats-server -js -a 127.0.0.1 -p "$PORT" -sd "$DATA/store" 2>"$DATA/server.log" &
SERVER=$!
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; kill "$SERVER" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 100); do grep -q "Server is ready" "$DATA/server.log" && break; sleep 0.1; done

cpu_of() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; } # user + system seconds
stat_of() { grep '^{' "$1" | tail -1 | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"; }
rate() { python3 -c "print(f'{$1 / ($2 / 1000):,.0f}')"; }

"$PIPE" generate orders-csv --records "$RECORDS" > "$DATA/orders.csv"

STAGES='
[[pipelines.NAME.stages]]
plugin = "filter"
config = { where = "amount > 500" }
[[pipelines.NAME.stages]]
plugin = "compute"
config = { set = { country = "upper(country)", amount_cents = "amount * 100" } }
[[pipelines.NAME.stages]]
plugin = "select"
config = { keep = ["id", "country", "amount", "amount_cents"] }
'
{
  echo "[settings]"
  echo "plugin_dir = \"$ROOT/target/release\""
  echo "watch = false"
  echo "[pipelines.file]"
  echo "output = \"csv\""
  echo "${STAGES//NAME/file}"
  for c in $(seq -f "one%g" "$RUNS") three; do
    echo "[pipelines.$c]"
    echo "input = { nats = \"$URL\", stream = \"IN\", durable = \"$c\", stop_when_empty = true }"
    echo "output = { nats = \"$URL\", stream = \"OUT$c\", subject = \"out.$c\" }"
    echo "${STAGES//NAME/$c}"
  done
} > "$DATA/pipelines.toml"
cd "$DATA"

echo "## JetStream scale-out, $RECORDS records, $BATCH per message ($(nproc) cores)"
echo
t0=$(date +%s.%N)
"$PIPE" publish orders.csv --to "$URL/in.orders" --create-stream IN --batch-size "$BATCH" 2> publish.err
t1=$(date +%s.%N)
PUB_RATE=$(python3 -c "print(f'{$RECORDS / ($t1 - $t0):,.0f}')")

# $RUNS rounds of: the file run, then a stream run through a consumer and an output
# stream of its own (the same messages each time). Medians: the machine is shared.
echo "| round | file -> /dev/null records/s | CPU s | stream -> stream records/s | CPU s (pipe) | CPU s (server) |"
echo "|---|---|---|---|---|---|"
for i in $(seq "$RUNS"); do
  /usr/bin/time -f "%U %S" -o "file$i.cpu" "$PIPE" run file orders.csv -o /dev/null --stats=json --no-watch 2> "file$i.err"
  "$PIPE" -q publish --to "$URL/out.one$i" --create-stream "OUTone$i"
  S0=$(cpu_of "$SERVER")
  /usr/bin/time -f "%U %S" -o "one$i.cpu" "$PIPE" run "one$i" --stats=json 2> "one$i.err"
  S1=$(cpu_of "$SERVER")
  echo "| $i | $(rate "$(stat_of "file$i.err" read)" "$(stat_of "file$i.err" elapsed_ms)") | $(awk '{print $1 + $2}' "file$i.cpu") | $(rate "$(stat_of "one$i.err" read)" "$(stat_of "one$i.err" elapsed_ms)") | $(awk '{print $1 + $2}' "one$i.cpu") | $(python3 -c "print(round($S1 - $S0, 2))") |"
done
for f in file one; do for i in $(seq "$RUNS"); do grep '^{' "$f$i.err" | tail -1 > "$f$i.json"; done; done
FILE_RATE=$(python3 -c "import json,statistics,sys; print(round(statistics.median(json.load(open(f'file{i}.json'))['read'] / (json.load(open(f'file{i}.json'))['elapsed_ms'] / 1000) for i in range(1, $RUNS + 1))))")
ONE_RATE=$(python3 -c "import json,statistics,sys; print(round(statistics.median(json.load(open(f'one{i}.json'))['read'] / (json.load(open(f'one{i}.json'))['elapsed_ms'] / 1000) for i in range(1, $RUNS + 1))))")
RATIO=$(python3 -c "print(f'{$ONE_RATE / $FILE_RATE * 100:.0f}')")
echo "| **median** | $(python3 -c "print(f'{$FILE_RATE:,}')") | | $(python3 -c "print(f'{$ONE_RATE:,}')") | | |"
echo
echo "pipe publish (the file into IN): $PUB_RATE records/s"
echo
echo "stream -> stream is $RATIO% of file -> /dev/null (target >= 50%: $( [ "$RATIO" -ge 50 ] && echo holds || echo MISSED ))"
echo

# Three instances over the same messages, through a consumer of their own.
"$PIPE" -q publish --to "$URL/out.three" --create-stream OUTthree
S0=$(cpu_of "$SERVER")
t0=$(date +%s.%N)
for i in 1 2 3; do
  /usr/bin/time -f "%U %S" -o "three$i.cpu" "$PIPE" run three --stats=json 2> "three$i.err" &
  PIDS+=($!)
done
wait "${PIDS[@]}"
PIDS=()
t1=$(date +%s.%N)
S1=$(cpu_of "$SERVER")
echo "| three instances | records read | records/s (own clock) | CPU s |"
echo "|---|---|---|---|"
TOTAL=0
for i in 1 2 3; do
  r=$(stat_of "three$i.err" read)
  TOTAL=$((TOTAL + r))
  echo "| instance $i | $r | $(rate "$r" "$(stat_of "three$i.err" elapsed_ms)") | $(awk '{print $1 + $2}' "three$i.cpu") |"
done
echo "| nats-server | | | $(python3 -c "print(round($S1 - $S0, 2))") |"
echo "| **aggregate** | $TOTAL | $(python3 -c "print(f'{$TOTAL / ($t1 - $t0):,.0f}')") (wall $(python3 -c "print(round($t1 - $t0, 2))") s) | |"
echo

# The fault run.
FAULT_STAGES='
[[pipelines.fault.stages]]
plugin = "tagger"
path = "plugins"
[[pipelines.fault.stages]]
plugin = "compute"
config = { set = { worker = "WORKER" } }
[[pipelines.fault.stages]]
plugin = "faulty"
config = { delay_ms = DELAY }
[pipelines.collect]
input = { nats = "URL", stream = "FOUT", durable = "collect", stop_when_empty = true }
output = "csv"
'
for w in A B C; do
  mkdir -p "fault$w/plugins"
  cp v1/libtagger.so "fault$w/plugins/"
  {
    echo "[settings]"
    echo "plugin_dir = \"$ROOT/target/release\""
    echo "debounce_ms = 100"
    echo "[pipelines.fault]"
    echo "input = { nats = \"$URL\", stream = \"IN\", durable = \"fault\", stop_when_empty = true, ack_wait_ms = 3000 }"
    echo "output = { nats = \"$URL\", stream = \"FOUT\", subject = \"fault.out\" }"
    s="${FAULT_STAGES//WORKER/\'$w\'}"
    s="${s//DELAY/$DELAY_MS}"
    echo "${s//URL/$URL}"
  } > "fault$w/pipelines.toml"
done
"$PIPE" -q publish --to "$URL/fault.out" --create-stream FOUT
for w in A B C; do
  "$PIPE" run -c "fault$w/pipelines.toml" fault --stats=json 2> "fault$w.err" &
  PIDS+=($!)
done
PA=${PIDS[0]}; PB=${PIDS[1]}; PC=${PIDS[2]}
T0=$(date +%s.%N)
sleep 1
kill -9 "$PA" || echo "MISSED: A had ended before the kill"
sleep 0.5
cp v2/libtagger.so faultC/plugins/libtagger.so
sleep 0.5
kill -TERM "$PB" || echo "MISSED: B had ended before the signal"
set +e
wait "$PA"; CA=$?
wait "$PB"; CB=$?
wait "$PC"; CC=$?
set -e
T1=$(date +%s.%N)
PIDS=()
"$PIPE" -q run -c faultA/pipelines.toml collect > fault-out.csv
echo "fault run: $(python3 -c "print(round($T1 - $T0, 1))") s wall, $DELAY_MS ms sleep per batch"
echo
echo "| fault run | exit | read | written | JetStream line |"
echo "|---|---|---|---|---|"
echo "| A (kill -9) | $CA | | | |"
for w in B C; do
  e="fault$w.err"
  echo "| $w ($([ $w = B ] && echo SIGTERM || echo hot swap)) | $([ $w = B ] && echo $CB || echo $CC) | $(stat_of $e read) | $(stat_of $e written) | $(grep -o 'jetstream: .*' $e) |"
done
grep -h "swapped stage" faultC.err | sed 's/^/C: /'
python3 - "$RECORDS" <<'EOF'
import csv, sys, json, collections
n = int(sys.argv[1])
ids = collections.Counter(); by_worker = collections.Counter(); tags = collections.Counter()
with open("fault-out.csv") as f:
    for r in csv.DictReader(f):
        ids[r["id"]] += 1; by_worker[r["worker"]] += 1; tags[r["tag"]] += 1
dups = sum(c - 1 for c in ids.values() if c > 1)
print(f"\noutput stream: {sum(ids.values())} records, {len(ids)} distinct ids, {dups} duplicated, {n - len(ids)} missing; by instance {dict(sorted(by_worker.items()))}; by version {dict(sorted(tags.items()))}")
ok = len(ids) == n and dups == 0
for w in "BC":
    s = json.loads([l for l in open(f"fault{w}.err") if l.startswith("{")][-1])
    stages = s["stages"]
    balanced = s["read"] == s["written"] + sum(st["filtered"] + st["dead_lettered"] + st["skipped"] for st in stages) + s["bad_input_dead_lettered"] + s["bad_input_skipped"]
    extra = s["written"] - by_worker[w]
    print(f"{w}: read {s['read']} = written {s['written']} + dropped 0: {'balanced' if balanced else 'NOT BALANCED'}; wrote {by_worker[w]} records now in the stream + {extra} the stream dropped as duplicates")
    ok = ok and balanced and extra >= 0
print(f"A: {by_worker['A']} records in the stream, written before it was killed")
print(f"A {by_worker['A']} + B {by_worker['B']} + C {by_worker['C']} = {sum(by_worker.values())} records (of {n})")
ok = ok and sum(by_worker.values()) == n
print("every record exactly once, accounting adds up:", "holds" if ok else "MISSED")
EOF
