#!/usr/bin/env bash
# benches/compare.sh: pipe against the bare Rust loops and the usual command-line tools on
# the issue-5 data set, timed the same way, out of process, on the same files.
#
# What it does
#   1. Builds pipe and the plugins (release) and the `bare` program (benches/bare.rs: the
#      csv-crate / serde_json loops of `pipe::bench`, as an executable of its own).
#   2. Generates the data set deterministically (seed 42) into $DATA (target/compare/):
#      `pipe generate orders-csv --records 1000000` and `orders-jsonl`, the same orders.
#   3. Times each task with each tool: the median of $RUNS runs (hyperfine when installed,
#      one warm-up run first; else a loop over `date +%s.%N`), output to /dev/null:
#        csv copy     CSV -> CSV, records unchanged
#        csv chain    filter amount > 500 -> country = upper(country), amount_cents =
#                     amount * 100 -> keep id, country, amount, amount_cents
#        jsonl copy   JSON lines -> JSON lines unchanged
#        jsonl chain  the chain on JSON lines
#      Tools: bare (the hand-written Rust loop: the baseline of each ratio), pipe (release
#      binary, `pipe run`, no watching), and when installed mlr (miller 6), xsv (CSV copy
#      only: it has no arithmetic), jq, jaq (JSON lines only).
#   4. Prints a Markdown table of medians, records/s and ratios to the bare loop (also
#      written to $DATA/results.md), and the records each tool wrote (a check that all
#      did the same work). The task `startup` runs the chain on a header-only CSV:
#      the fixed cost of a run (for pipe: loading three plugins).
#   5. Peak RSS (`/usr/bin/time -v`) of pipe streaming ~1 GB: 10,000,000 generated orders
#      ($BIG_RECORDS) through `pipe run` (copy and chain) to /dev/null, next to the bare
#      loop's.
#
# Install the comparators (Debian/Ubuntu; all optional, missing ones are skipped):
#   apt-get install -y miller jq hyperfine time
#   cargo install --locked jaq xsv          # both build with the workspace's toolchain
#
# Run from anywhere:  bash benches/compare.sh
# Environment: RECORDS (1000000), RUNS (5), BIG_RECORDS (10000000; 0 skips the RSS part),
#   DATA (target/compare), TOOLS (space-separated subset, default "bare pipe mlr xsv jq jaq").
#
# Caveat: the bare loops write to io::sink(), every other tool to /dev/null (one write
# syscall per 64 KiB or so: noise at these sizes).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RECORDS="${RECORDS:-1000000}"
RUNS="${RUNS:-5}"
BIG_RECORDS="${BIG_RECORDS:-10000000}"
DATA="${DATA:-$ROOT/target/compare}"
TOOLS="${TOOLS:-bare pipe mlr xsv jq jaq}"
CARGO="${CARGO:-cargo}"

cd "$ROOT"
mkdir -p "$DATA/cmds"

echo "building pipe, the plugins and the bare loops (release)..." >&2
"$CARGO" build --release --quiet
BARE="$("$CARGO" bench --bench bare --no-run --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*/bare-[^"]*"' | tail -1 | cut -d'"' -f4)"
PIPE="$ROOT/target/release/pipe"
[[ -x "$BARE" && -x "$PIPE" ]] || { echo "compare.sh: build failed (bare=$BARE)" >&2; exit 1; }

# The data set: generated once per size, deterministic.
CSV="$DATA/orders-$RECORDS.csv"
JSONL="$DATA/orders-$RECORDS.jsonl"
[[ -s "$CSV" ]] || "$PIPE" generate orders-csv --records "$RECORDS" > "$CSV"
[[ -s "$JSONL" ]] || "$PIPE" generate orders-jsonl --records "$RECORDS" > "$JSONL"

CFG="$DATA/pipelines.toml"
cat > "$CFG" <<EOF
[settings]
plugin_dir = "$ROOT/target/release"
watch = false

[pipelines.copy]
description = "no stages"

[pipelines.chain]
description = "the issue-5 benchmark chain"

[[pipelines.chain.stages]]
plugin = "filter"
config = { where = "amount > 500" }

[[pipelines.chain.stages]]
plugin = "compute"
config = { set = { country = "upper(country)", amount_cents = "amount * 100" } }

[[pipelines.chain.stages]]
plugin = "select"
config = { keep = ["id", "country", "amount", "amount_cents"] }
EOF

have() { [[ " $TOOLS " == *" $1 "* ]] && { [[ $1 == bare || $1 == pipe ]] || command -v "$1" >/dev/null; }; }

# One script per (task, tool): exactly the command that is timed, output on stdout.
cmd() { # task tool command...
    local f="$DATA/cmds/$1-$2.sh"
    printf '%s\n' "$3" > "$f"
    echo "$f"
}
JQ_CHAIN='select(.amount > 500) | {id, country: (.country | ascii_upcase), amount, amount_cents: (.amount * 100 | round)}'
MLR_CHAIN='filter '\''$amount > 500'\'' then put '\''$country = toupper($country); $amount_cents = $amount * 100'\'' then cut -o -f id,country,amount,amount_cents'

declare -a CASES=()
add() { have "$2" && CASES+=("$1|$2|$(cmd "$1" "$2" "$3")") || true; }
add "csv copy"    bare "'$BARE' copy csv '$CSV'"
add "csv copy"    pipe "'$PIPE' run -c '$CFG' copy '$CSV' --no-watch --no-progress -q"
add "csv copy"    mlr  "mlr --icsv --ocsv cat '$CSV'"
add "csv copy"    xsv  "xsv fmt '$CSV'"
add "csv chain"   bare "'$BARE' chain csv '$CSV'"
add "csv chain"   pipe "'$PIPE' run -c '$CFG' chain '$CSV' --no-watch --no-progress -q"
add "csv chain"   mlr  "mlr --icsv --ocsv $MLR_CHAIN '$CSV'"
head -1 "$CSV" > "$DATA/header-only.csv"
add "startup"     bare "'$BARE' chain csv '$DATA/header-only.csv'"
add "startup"     pipe "'$PIPE' run -c '$CFG' chain '$DATA/header-only.csv' --no-watch --no-progress -q"
add "startup"     mlr  "mlr --icsv --ocsv $MLR_CHAIN '$DATA/header-only.csv'"
add "jsonl copy"  bare "'$BARE' copy jsonl '$JSONL'"
add "jsonl copy"  pipe "'$PIPE' run -c '$CFG' copy '$JSONL' --no-watch --no-progress -q"
add "jsonl copy"  mlr  "mlr --ijsonl --ojsonl cat '$JSONL'"
add "jsonl copy"  jq   "jq -c . '$JSONL'"
add "jsonl copy"  jaq  "jaq -c . '$JSONL'"
add "jsonl chain" bare "'$BARE' chain jsonl '$JSONL'"
add "jsonl chain" pipe "'$PIPE' run -c '$CFG' chain '$JSONL' --no-watch --no-progress -q"
add "jsonl chain" mlr  "mlr --ijsonl --ojsonl $MLR_CHAIN '$JSONL'"
printf -v JQ_ARGS -- '-c %q %q' "$JQ_CHAIN" "$JSONL"
add "jsonl chain" jq   "jq $JQ_ARGS"
add "jsonl chain" jaq  "jaq $JQ_ARGS"

# Median wall time of RUNS runs of script $1, in seconds.
median_of() {
    local script="$1"
    if command -v hyperfine >/dev/null; then
        local json="$DATA/hyperfine.json"
        hyperfine --style none --warmup 1 --runs "$RUNS" -N --output=null \
            --export-json "$json" "bash '$script'" >/dev/null 2>&1 || { echo nan; return; }
        grep -o '"median": *[0-9.e+-]*' "$json" | head -1 | sed 's/.*: *//'
    else
        local times=() t0 t1
        bash "$script" >/dev/null 2>&1 || true # warm-up
        for _ in $(seq "$RUNS"); do
            t0=$(date +%s.%N)
            bash "$script" >/dev/null 2>&1 || { echo nan; return; }
            t1=$(date +%s.%N)
            times+=("$(echo "$t1 - $t0" | bc -l)")
        done
        printf '%s\n' "${times[@]}" | sort -g | sed -n "$(((RUNS + 1) / 2))p"
    fi
}

OUT="$DATA/results.md"
{
    echo "## pipe vs bare loops vs tools: $RECORDS orders ($(du -m "$CSV" | cut -f1) MB CSV, $(du -m "$JSONL" | cut -f1) MB JSON lines), median of $RUNS runs"
    echo
    echo "machine: $(nproc) cores, $(uname -sr); $(command -v hyperfine >/dev/null && hyperfine --version || echo 'date loop')"
    echo
    echo "| task | tool | median | records/s | vs bare loop | records out |"
    echo "|---|---|---:|---:|---:|---:|"
} | tee "$OUT"

declare -A BASE=()
for c in "${CASES[@]}"; do
    IFS='|' read -r task tool script <<< "$c"
    echo "timing $task with $tool..." >&2
    m="$(median_of "$script")"
    if [[ "$tool" == bare ]]; then
        out="$(bash "$script")" # the bare program prints the records it wrote
        BASE[$task]="$m"
    else
        out="$(bash "$script" 2>/dev/null | wc -l)"
        [[ "$task" == csv* ]] && out=$((out - 1)) # the header line
    fi
    base="${BASE[$task]:-}"
    awk -v task="$task" -v tool="$tool" -v m="$m" -v b="$base" -v n="$RECORDS" -v out="$out" 'BEGIN {
        if (m == "nan" || m == "") { printf "| %s | %s | failed | | | |\n", task, tool; exit }
        ratio = (b != "" && b > 0) ? sprintf("%.2f×", m / b) : "—"
        rate = (task ~ /startup/) ? "—" : sprintf("%.0f", n / m)
        if (task ~ /startup/) out = "—"
        printf "| %s | %s | %.3f s | %s | %s | %s |\n", task, tool, m, rate, ratio, out
    }' | tee -a "$OUT"
done

if [[ "$BIG_RECORDS" -gt 0 ]]; then
    BIG="$DATA/orders-$BIG_RECORDS.csv"
    [[ -s "$BIG" ]] || { echo "generating $BIG_RECORDS orders..." >&2; "$PIPE" generate orders-csv --records "$BIG_RECORDS" > "$BIG"; }
    {
        echo
        echo "### peak RSS streaming $(du -m "$BIG" | cut -f1) MB ($BIG_RECORDS orders, CSV) to /dev/null"
        echo
    } | tee -a "$OUT"
    if [[ -x /usr/bin/time ]]; then
        {
            echo "| run | wall | peak RSS |"
            echo "|---|---:|---:|"
        } | tee -a "$OUT"
        rss() { # label command...
            local label="$1"; shift
            /usr/bin/time -v "$@" > /dev/null 2> "$DATA/time.txt" || true
            local kb wall
            kb="$(grep 'Maximum resident set size' "$DATA/time.txt" | awk '{print $NF}')"
            wall="$(grep 'Elapsed (wall clock)' "$DATA/time.txt" | awk '{print $NF}')"
            printf '| %s | %s | %.1f MB |\n' "$label" "$wall" "$(echo "${kb:-0} / 1024" | bc -l)" | tee -a "$OUT"
        }
        rss "bare copy loop" "$BARE" copy csv "$BIG"
        rss "pipe run copy" "$PIPE" run -c "$CFG" copy "$BIG" --no-watch --no-progress -q
        rss "pipe run chain" "$PIPE" run -c "$CFG" chain "$BIG" --no-watch --no-progress -q
    else
        echo "(/usr/bin/time not installed: apt-get install -y time)" | tee -a "$OUT"
    fi
fi
echo >&2
echo "results: $OUT; the exact commands: $DATA/cmds/" >&2
