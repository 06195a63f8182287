#!/usr/bin/env bash
# tta.sh - time to accuracy of crux-train over shaped links: N network-namespace
# hosts (cluster-scripts/netns-hosts, one rank per host, TCP over veth through a
# bridge, tbf at --bw on every link), dense and each codec, same epochs and seed.
#
#   bench/train_sweep/tta.sh [--build DIR] [--hosts "2 4"] [--bw 1gbit] [--epochs N]
#                            [--limit N] [--seed S] [--out DIR] [--only REGEX] [--force]
#   bench/train_sweep/tta.sh --report [--out DIR]       # tables and plots only
#
# Per (config, N): OUT/tta-CONFIG-hN.csv (crux-train --csv: wall_s is the summed
# training time, evaluation excluded) and .log. The report (OUT/tta.md,
# OUT/acc-vs-wall-hN.png) gives, per config, the training wall-clock until the test
# accuracy first reaches dense's final accuracy minus 1 point. Needs root and
# iproute2; the namespaces are always torn down (trap), also on Ctrl-C.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=$root/build
hosts="2 4"
bw=1gbit
epochs=6
limit=0
seed=1
out=$here/results
only=.
force=0
report_only=0
prefix=tta$((RANDOM % 10000))
nh=$root/cluster-scripts/netns-hosts

die() { printf 'tta.sh: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --build) build=$2; shift 2 ;;
        --hosts) hosts=$2; shift 2 ;;
        --bw) bw=$2; shift 2 ;;
        --epochs) epochs=$2; shift 2 ;;
        --limit) limit=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --force) force=1; shift ;;
        --report) report_only=1; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[[ "$epochs" =~ ^[1-9][0-9]*$ ]] || die "--epochs $epochs: want a positive integer"
[ "$report_only" = 1 ] && hosts=""
[ -z "$hosts" ] || [ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
train=$build/examples/train/crux-train
[ -z "$hosts" ] || [ -x "$train" ] || die "crux-train not found in $build/examples/train (build first, or --build DIR)"

warmup=$(( epochs / 4 > 4 ? 4 : epochs / 4 ))
[ "$warmup" -ge 1 ] || warmup=1

# The sweep's configs at the ratios the papers' targets name (sweep.sh has the rest).
configs() {
    cat <<EOF
dense|--codec none
cltk-d0.001-w|--codec cltk --density 0.001 --warmup-epochs $warmup
gtopk-d0.001|--codec gtopk --density 0.001
dgc-d0.001|--codec topk --density 0.001 --warmup-epochs $warmup
sketch-4x|--codec sketch --density 0.01 --sketch-rows 5 --sketch-cols SKETCH4
qsgd-4bit|--codec qsgd --qsgd-levels 7
EOF
}

# One rank per namespace host: nothing is oversubscribed, so the table (> 64 KiB) takes
# the ring, which sends 2(P-1)/P of it (sweep.sh's shm runs also allow for recursive
# doubling on oversubscribed ranks).
sketch_cols() { # RATIO P DENSITY ROWS
    awk -v r="$1" -v p="$2" -v d="$3" -v rows="$4" 'BEGIN { n = 535818; k = int(d * n + 0.5)
        ring = p > 1 ? 2 * (p - 1) / p : 1; w = ring
        printf "%d\n", (ring * n / (r * w) / 1.1 - 2 * k) / rows }'
}

teardown() { "$nh" down --prefix "$prefix" >/dev/null 2>&1 || true; }
trap teardown EXIT
trap 'teardown; exit 130' INT TERM

mkdir -p "$out"
limit_args=()
[ "$limit" = 0 ] || limit_args=(--limit "$limit")
[ -z "$hosts" ] || echo "# tta: MLP, $epochs epochs, seed $seed, --bw $bw, hosts: $hosts; started $(date -u '+%F %T') UTC, load $(cut -d' ' -f1-3 /proc/loadavg)" > "$out/tta.info"

for n in $hosts; do
    layout=$(printf '1%.0s,' $(seq "$n")); layout=${layout%,}
    teardown
    "$nh" up -n "$n" --bw "$bw" --prefix "$prefix" >/dev/null
    while IFS='|' read -r name flags; do
        [[ "$name" =~ $only ]] || continue
        flags=${flags//SKETCH4/$(sketch_cols 4 "$n" 0.01 5)}
        csv=$out/tta-$name-h$n.csv
        log=$out/tta-$name-h$n.log
        if [ "$force" = 0 ] && [ -f "$csv" ] && [ "$(($(wc -l < "$csv") - 1))" -ge "$epochs" ]; then
            echo "tta: $name on $n hosts: done already ($csv)"
            continue
        fi
        echo "$flags" > "$out/tta-$name-h$n.flags"
        echo "tta: $name on $n hosts ($bw): $flags ($(date -u +%T), load $(cut -d' ' -f1 /proc/loadavg))"
        # shellcheck disable=SC2086
        if ! CRUX_SOCKET_IFNAME='=eth0' "$nh" run --prefix "$prefix" --layout "$layout" -- \
                "$train" --model mlp --epochs "$epochs" --seed "$seed" "${limit_args[@]}" $flags \
                --csv "$csv" > "$log" 2>&1; then
            echo "tta: $name on $n hosts FAILED, see $log" >&2
            mv -f "$csv" "$csv.failed" 2>/dev/null || true
        fi
        echo "  $(grep -m1 '^rank 0: final' "$log" || tail -1 "$log")"
    done < <(configs)
    teardown
done

# ---- report: time to (dense final - 1 point), and accuracy vs wall time, for
# every host count with curves in OUT (earlier runs' too) ----
order="dense cltk-d0.001-w gtopk-d0.001 dgc-d0.001 sketch-4x qsgd-4bit"
hosts=$(find "$out" -maxdepth 1 -name 'tta-*-h*.csv' | sed 's/.*-h\([0-9]*\)\.csv$/\1/' | sort -nu)
{
    echo "| hosts | codec | params | epochs | ratio (last epoch) | ratio (all) | final test acc | target acc | time to target (s) | training wall (s) | curve |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    for n in $hosts; do
        dcsv=$out/tta-dense-h$n.csv
        goal=""
        [ -f "$dcsv" ] && goal=$(awk -F, 'NR > 1 { a = $3 } END { if (a != "") printf "%.4f", a - 0.01 }' "$dcsv")
        for name in $order; do
            csv=$out/tta-$name-h$n.csv
            [ -f "$csv" ] || continue
            params=$(sed 's/--codec [a-z]* *//; s/--//g' "$out/tta-$name-h$n.flags" 2>/dev/null)
            awk -F, -v n="$n" -v name="$name" -v params="${params:--}" -v goal="$goal" -v f="$(basename "$csv")" '
                NR > 1 { rows++; acc = $3; wall = $5; d += $6; w += $7; dl = $6; wl = $7
                         if (goal != "" && t == "" && $3 + 0 >= goal + 0) t = sprintf("%.1f (epoch %d)", $5, $1) }
                END { if (goal != "" && t == "") t = "not reached"
                      printf "| %s | %s | %s | %d | %.1fx | %.1fx | %.4f | %s | %s | %.1f | %s |\n", n, name, params,
                             rows, wl ? dl / wl : 0, w ? d / w : 0, acc, goal == "" ? "-" : goal, goal == "" ? "-" : t, wall, f }' "$csv"
        done
    done
} > "$out/tta.md"
cat "$out/tta.md"

command -v gnuplot >/dev/null 2>&1 || { echo "tta.sh: gnuplot not installed, no plots (apt-get install gnuplot-nox)" >&2; exit 0; }
for n in $hosts; do
    plots=()
    for name in $order; do
        csv=$out/tta-$name-h$n.csv
        [ -s "$csv" ] && [ "$(wc -l < "$csv")" -gt 1 ] && plots+=("'$csv' skip 1 using 5:(100*\$3) with linespoints title '$name'")
    done
    [ ${#plots[@]} -gt 0 ] || continue
    joined=$(printf '%s, ' "${plots[@]}")
    gnuplot <<EOF
set terminal pngcairo size 900,600 noenhanced
set output '$out/acc-vs-wall-h$n.png'
set datafile separator ','
set title 'crux-train MLP, $n namespace hosts at $bw: test accuracy vs training wall time'
set xlabel 'training wall-clock (s, evaluation excluded)'
set ylabel 'test accuracy (%)'
set key bottom right
set grid
plot ${joined%, }
EOF
    echo "tta.sh: $out/acc-vs-wall-h$n.png"
done
