#!/usr/bin/env bash
# sweep.sh - accuracy of crux-train (MLP, Fashion-MNIST) with dense and every
# compressed-allreduce codec, same epochs and seed, on P ranks of this machine.
#
#   bench/train_sweep/sweep.sh [--build DIR] [--epochs N] [--ranks "2 4"] [--limit N]
#                              [--seed S] [--out DIR] [--only REGEX] [--force] [--list]
# Defaults: --build ROOT/build --epochs 8 --ranks "2 4" --limit 0 (all 60k samples)
# --seed 1 --out bench/train_sweep/results --only . (every config).
#
# Per (config, P): crux-run -n P crux-train ... --csv OUT/curve-CONFIG-nP.csv, the
# log in OUT/CONFIG-nP.log. A finished CSV (N rows) is kept and not rerun unless
# --force, so an interrupted sweep resumes where it stopped. Then report.sh writes
# OUT/table.md (ratio = dense bytes / wire bytes from the CSV, indices included;
# delta vs dense at the same P; the papers' targets with PASS/MISS) and
# OUT/acc-vs-epoch-nP.png (gnuplot).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=$root/build
epochs=8
ranks="2 4"
limit=0
seed=1
out=$here/results
only=.
force=0
list=0

die() { printf 'sweep.sh: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --build) build=$2; shift 2 ;;
        --epochs) epochs=$2; shift 2 ;;
        --ranks) ranks=$2; shift 2 ;;
        --limit) limit=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --force) force=1; shift ;;
        --list) list=1; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[[ "$epochs" =~ ^[1-9][0-9]*$ ]] || die "--epochs $epochs: want a positive integer"
[[ "$limit" =~ ^[0-9]+$ ]] || die "--limit $limit: want an integer (0 = the whole training set)"

# DGC's warm-up: 4 epochs in the paper (of 90+); a quarter of a short run here.
warmup=$(( epochs / 4 > 4 ? 4 : epochs / 4 ))
[ "$warmup" -ge 1 ] || warmup=1

# name | crux-train flags. The sketch shapes give dense/wire >= 4 and >= 8 on 2 and 4
# ranks (the wire is the r x c table through the dense allreduce plus 2k candidate
# values; see README.md for the measured ratios). SKETCH<ratio>_<density>_<rows> is
# replaced by the columns for that ratio on P ranks (sketch_cols).
configs() {
    cat <<EOF
dense|--codec none
cltk-d0.01|--codec cltk --density 0.01
cltk-d0.001|--codec cltk --density 0.001
cltk-d0.001-w|--codec cltk --density 0.001 --warmup-epochs $warmup
cltk-d0.001-lp|--codec cltk --density 0.001 --beta 0.1 --warmup-epochs $warmup
cltk-d0.005-w|--codec cltk --density 0.005 --warmup-epochs $warmup
gtopk-d0.01|--codec gtopk --density 0.01
gtopk-d0.001|--codec gtopk --density 0.001
gtopk-d0.05|--codec gtopk --density 0.05
dgc-d0.001|--codec topk --density 0.001 --warmup-epochs $warmup
dgc-d0.0006|--codec topk --density 0.0006 --warmup-epochs $warmup
sketch-4x|--codec sketch --density 0.01 --sketch-rows 5 --sketch-cols SKETCH4_0.01_5
sketch-4x-d0.05|--codec sketch --density 0.05 --sketch-rows 3 --sketch-cols SKETCH4_0.05_3
sketch-8x|--codec sketch --density 0.01 --sketch-rows 5 --sketch-cols SKETCH8_0.01_5
qsgd-4bit|--codec qsgd --qsgd-levels 7
qsgd-8bit|--codec qsgd --qsgd-levels 127
EOF
}

# Columns per sketch row for a ratio target on P ranks. The ratio is a dense ring's
# bytes, 2(P-1)/P n floats, over what the rank sends: the table and the 2k candidate
# values, each through crux_allreduce, which sends w times its buffer: 2(P-1)/P for
# the ring, log2 P for recursive doubling (what crux picks below 1 MiB with more ranks
# than cores, as 4 ranks here). Taking the larger w keeps the ratio either way; 10 %
# margin.
sketch_cols() { # RATIO P DENSITY ROWS
    awk -v r="$1" -v p="$2" -v d="$3" -v rows="$4" 'BEGIN { n = 535818; k = int(d * n + 0.5)
        ring = p > 1 ? 2 * (p - 1) / p : 1; w = ring
        for (l = 0; 2 ^ l < p; l++) ; if (l > w) w = l
        printf "%d\n", (ring * n / (r * w) / 1.1 - 2 * k) / rows }'
}

if [ "$list" = 1 ]; then
    configs | sed 's/|/\t/'
    exit 0
fi

run=$build/crux-run
train=$build/examples/train/crux-train
[ -x "$run" ] || run=$(command -v crux-run || true)
[ -x "$train" ] || die "crux-train not found in $build/examples/train (build first, or --build DIR)"
[ -n "$run" ] || die "crux-run not found in $build or on PATH"
mkdir -p "$out"
{
    echo "# crux-train sweep: MLP, $epochs epochs, seed $seed, limit ${limit:-0} (0 = 60000),"
    echo "# DGC warm-up $warmup epochs, ranks: $ranks; started $(date -u '+%F %T') UTC, load $(cut -d' ' -f1-3 /proc/loadavg)"
} >> "$out/sweep.info"

limit_args=()
[ "$limit" = 0 ] || limit_args=(--limit "$limit")

for p in $ranks; do
    while IFS='|' read -r name flags; do
        [[ "$name" =~ $only ]] || continue
        if [[ "$flags" =~ SKETCH([0-9]+)_([0-9.]+)_([0-9]+) ]]; then
            flags=${flags//${BASH_REMATCH[0]}/$(sketch_cols "${BASH_REMATCH[1]}" "$p" "${BASH_REMATCH[2]}" "${BASH_REMATCH[3]}")}
        fi
        csv=$out/curve-$name-n$p.csv
        log=$out/$name-n$p.log
        if [ "$force" = 0 ] && [ -f "$csv" ] && [ "$(($(wc -l < "$csv") - 1))" -ge "$epochs" ]; then
            echo "sweep: $name on $p ranks: done already ($csv)"
            continue
        fi
        echo "$flags" > "$out/$name-n$p.flags"
        echo "sweep: $name on $p ranks: $flags ($(date -u +%T))"
        # shellcheck disable=SC2086
        if ! "$run" -n "$p" -- "$train" --model mlp --epochs "$epochs" --seed "$seed" "${limit_args[@]}" \
                $flags --csv "$csv" > "$log" 2>&1; then
            echo "sweep: $name on $p ranks FAILED, see $log" >&2
            mv -f "$csv" "$csv.failed" 2>/dev/null || true
        fi
        echo "  $(grep -m1 '^rank 0: final' "$log" || tail -1 "$log")"
    done < <(configs)
done

"$here/report.sh" --out "$out" --epochs "$epochs"
