#!/usr/bin/env bash
# report.sh - the table and plots of a train sweep (sweep.sh calls it; rerun it any
# time on a partial sweep).
#
#   bench/train_sweep/report.sh [--out DIR] [--epochs N]
#
# Reads DIR/curve-CONFIG-nP.csv (crux-train --csv) and DIR/CONFIG-nP.flags, writes
# DIR/table.md and, when gnuplot is installed, DIR/acc-vs-epoch-nP.png.
#   ratio       dense bytes (a dense ring's per rank, crux.h ring_bytes) / wire bytes
#               (what this rank sent, indices included),
#               of the last epoch (after any warm-up) and over all epochs
#   delta       final test accuracy minus dense's at the same P, in points
#   target      the papers' claim for the codec (issue 7 item 4), PASS or MISS;
#               "no drop" is read as delta >= -0.2 points (about one standard
#               error of an accuracy near 0.89 on the 10k test images)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=$here/results
epochs=0
while [ $# -gt 0 ]; do
    case $1 in
        --out) out=$2; shift 2 ;;
        --epochs) epochs=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) printf 'report.sh: unknown option %s\n' "$1" >&2; exit 2 ;;
    esac
done

# "name P" of every curve present, configs in sweep order, P ascending
order="dense cltk-d0.01 cltk-d0.001 cltk-d0.001-w cltk-d0.001-lp cltk-d0.005-w gtopk-d0.01 gtopk-d0.001 gtopk-d0.05 dgc-d0.001 dgc-d0.0006 sketch-4x sketch-4x-d0.05 sketch-8x qsgd-4bit qsgd-8bit"
ranks=$(find "$out" -maxdepth 1 -name 'curve-*-n*.csv' | sed 's/.*-n\([0-9]*\)\.csv$/\1/' | sort -nu)

# target NAME -> "min_ratio min_delta text" ("" = no target for this config)
target() {
    case $1 in
        cltk-d0.001|cltk-d0.001-*|cltk-d0.005-*|gtopk-d0.001) echo "100 -1 within 1 pt at >= 100x" ;;
        dgc-*) echo "270 -1 within 1 pt at >= 270x" ;;
        sketch-4x|sketch-4x-*) echo "4 -0.2 no drop at 4x" ;;
        sketch-8x) echo "8 -1 <= 1 pt drop at 8x" ;;
        qsgd-4bit) echo "0 -0.5 within 0.5 pt" ;;
        *) echo "" ;;
    esac
}

# summary CSV -> "rows last_acc ratio_last ratio_all"
summary() {
    awk -F, 'NR > 1 { n++; acc = $3; d += $6; w += $7; dl = $6; wl = $7 }
             END { if (!n) { print "0 0 0 0"; exit }
                   printf "%d %.4f %.1f %.1f\n", n, acc, wl ? dl / wl : 0, w ? d / w : 0 }' "$1"
}

table=$out/table.md
{
    echo "| codec | params | ranks | epochs | ratio (last epoch) | ratio (all) | final test acc | delta vs dense (pt) | target | result | curve |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    for p in $ranks; do
        dense_acc=""
        [ -f "$out/curve-dense-n$p.csv" ] && dense_acc=$(summary "$out/curve-dense-n$p.csv" | cut -d' ' -f2)
        for name in $order; do
            csv=$out/curve-$name-n$p.csv
            [ -f "$csv" ] || continue
            read -r rows acc rl ra <<< "$(summary "$csv")"
            flags=$(cat "$out/$name-n$p.flags" 2>/dev/null || echo "?")
            params=$(echo "$flags" | sed 's/--codec [a-z]* *//; s/--//g')
            [ -n "$params" ] || params="-"
            codec=${name%%-*}
            delta="-"
            [ -n "$dense_acc" ] && delta=$(awk -v a="$acc" -v d="$dense_acc" 'BEGIN { printf "%+.2f", 100 * (a - d) }')
            t=$(target "$name")
            tt="-"; res="-"
            if [ -n "$t" ]; then
                read -r tr tdelta ttext <<< "$t"
                tt=$ttext
                if [ "$epochs" -gt 0 ] && [ "$rows" -lt "$epochs" ]; then
                    res="incomplete"
                elif [ "$delta" = "-" ]; then
                    res="no dense run"
                else
                    res=$(awk -v r="$rl" -v tr="$tr" -v d="$delta" -v td="$tdelta" 'BEGIN {
                        if (r + 0 < tr + 0) printf "MISS (ratio %.0fx < %dx)", r, tr
                        else if (d + 0 < td + 0) printf "MISS (delta %s)", d
                        else print "PASS" }')
                fi
            fi
            [ "$epochs" -gt 0 ] && [ "$rows" -lt "$epochs" ] && rows="$rows of $epochs"
            echo "| $codec | $params | $p | $rows | ${rl}x | ${ra}x | $acc | $delta | $tt | $res | $(basename "$csv") |"
        done
    done
} > "$table"
cat "$table"

command -v gnuplot >/dev/null 2>&1 || { echo "report.sh: gnuplot not installed, no plots (apt-get install gnuplot-nox)" >&2; exit 0; }
for p in $ranks; do
    plots=()
    for name in $order; do
        csv=$out/curve-$name-n$p.csv
        [ -s "$csv" ] && [ "$(wc -l < "$csv")" -gt 1 ] && plots+=("'$csv' skip 1 using 1:(100*\$3) with linespoints title '$name'")
    done
    [ ${#plots[@]} -gt 0 ] || continue
    joined=$(printf '%s, ' "${plots[@]}")
    gnuplot <<EOF
set terminal pngcairo size 900,600 noenhanced
set output '$out/acc-vs-epoch-n$p.png'
set datafile separator ','
set title 'crux-train MLP on Fashion-MNIST, $p ranks: test accuracy per epoch'
set xlabel 'epoch'
set ylabel 'test accuracy (%)'
set key bottom right
set grid
plot ${joined%, }
EOF
    echo "report.sh: $out/acc-vs-epoch-n$p.png"
done
