#!/usr/bin/env bash
# run-ref.sh - side-by-side MPI_Allreduce reference: Open MPI vs MPICH (vs an
# optional extra OSU-format command), same machine, same run, sizes interleaved.
#
# Usage: run-ref.sh [--only SIZE_LIST] [--np N] [--mpis ompi,mpich]
#                   [--dtype float|double|int] [--validate] [--iters N --warmup N]
#                   [--repeat R] [--wait-quiet SEC] [--out DIR] [--no-install]
#                   [--no-hugetlb-check] [--hugetlb-only] [--build-only]
#                   [--crux BUILD_DIR]
#
#   --only SIZE_LIST   comma/space separated byte sizes, K/M/G suffixes = KiB/MiB/GiB
#                      (default 4,16,64,...,256M: powers of 4 from 4 B to 256 MiB)
#   --np N             ranks (default 2). N > nproc: OMPI gets --oversubscribe and
#                      --bind-to core:overload-allowed (MPICH oversubscribes silently).
#   --mpis LIST        which references to run (default ompi,mpich)
#   --iters/--warmup   force -i/-x for every size (default: policy below)
#   --validate         pass -c (Pass/Fail column is checked; Fail aborts the row)
#   --out DIR          raw outputs + table (default /tmp/crux-refbench-out/<timestamp>)
#   --no-install       skip the apt-get step
#   --no-hugetlb-check skip the 256 MiB GLIBC_TUNABLES/page-fault experiment
#   --hugetlb-only     run only that experiment
#   --build-only       install + build, then exit
#   --wait-quiet SEC   before the run and before every size, wait (at most SEC s)
#                      until the machine is >=90% idle (other tenants' load shows
#                      up as idle time: our ranks are not running then); rows
#                      seen with <90% idle before/after are marked with '*'
#   --repeat R         run every size R times (interleaved OMPI, MPICH, EXTRA)
#                      and print the median (lower middle for even R)
#   --no-bare          leave out the "bare" column (below)
#   --crux BUILD_DIR   crux's cmake build directory (default $CRUX_BUILD_DIR): unless
#                      EXTRA_CMD is set, the third column is crux, run as
#                      EXTRA_CMD="BUILD_DIR/crux-run -n N BUILD_DIR/crux_osu_allreduce -T DTYPE"
#                      EXTRA_NAME=crux (crux_osu_allreduce: bench/crux_osu_allreduce.c)
#
# Environment:
#   EXTRA_CMD   command of a third benchmark printing osu_allreduce-format rows
#               ("%-10d%20.2f..." after "# Size" headers; -f/-c/-b columns are
#               fine: only the first two numeric fields of a row are used), e.g.
#               EXTRA_CMD="crux-run -n 2 ./crux_osu_allreduce"
#   EXTRA_NAME  column label for it (default EXTRA)
#   EXTRA_ARGS  1 (default): append "-m S:S -i I -x X $EXTRA_FLAGS" per size, as
#               for the MPIs; 0: run EXTRA_CMD once as given, pick the sizes.
#   EXTRA_FLAGS OSU flags appended after those (default "-f"; " -c" added by
#               --validate). The dtype is not passed (OMB uses -d for the
#               accelerator); e.g. EXTRA_FLAGS="-f -T mpi_float" for OMB 7.
#   REFBENCH_BUILD_DIR  where binaries go (default /tmp/crux-refbench-build)
#   REFBENCH_OMPI_LAUNCH / REFBENCH_MPICH_LAUNCH  replace the launch prefixes
#               (whitespace-split; must include -np), REFBENCH_LABEL a title
#               line; ref_tcp.sh uses these.
#
# bare column (2 ranks on shared memory only): bench/ref/pair_floor.c, the two
# protocols of crux's 2-rank shm path with nothing around them, run interleaved
# with the others: what the host allows in the same run.
#
# Iteration policy (per size, passed as -i/-x): <=8 KiB 1000/100 and
# <=16 MiB 100/10 (both OMB defaults); <=64 MiB 40/4; above 20/2.
# Each size is a separate launch (-m S:S) so any OSU-style program can be used.
# Raw outputs of every launch: $OUT/raw.log and $OUT/<mpi>-<size>-r<rep>.txt.
# busbw (GB/s, 1e9) = size/avg * 2(n-1)/n is computed here from the avg column.
#
# Origin: ../shared/tools/refbench/run-ref.sh, the reference tools behind the
# baseline measurements in ../shared/LIMITS.md; copied into crux's bench/ref/ so the
# project does not depend on ../shared. Changes: --crux / CRUX_BUILD_DIR, default
# build and output directories under /tmp/crux-refbench-*.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$HERE/ref_osu_allreduce.c"
BUILD="${REFBENCH_BUILD_DIR:-/tmp/crux-refbench-build}"
NP=2
SIZES_SPEC=""
MPIS="ompi,mpich"
DTYPE=float
VALIDATE=0
FORCE_I=""
FORCE_X=""
OUT=""
DO_INSTALL=1
HUGE_CHECK=1
HUGE_ONLY=0
BUILD_ONLY=0
WAIT_QUIET=0
REPEAT=1
BARE=1
CRUX_DIR="${CRUX_BUILD_DIR:-}"

die() { echo "run-ref.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --only) SIZES_SPEC="$2"; shift 2 ;;
    --np) NP="$2"; shift 2 ;;
    --mpis) MPIS="$2"; shift 2 ;;
    --dtype) DTYPE="$2"; shift 2 ;;
    --validate) VALIDATE=1; shift ;;
    --iters) FORCE_I="$2"; shift 2 ;;
    --warmup) FORCE_X="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --no-install) DO_INSTALL=0; shift ;;
    --no-hugetlb-check) HUGE_CHECK=0; shift ;;
    --hugetlb-only) HUGE_ONLY=1; shift ;;
    --build-only) BUILD_ONLY=1; shift ;;
    --wait-quiet) WAIT_QUIET="$2"; shift 2 ;;
    --repeat) REPEAT="$2"; shift 2 ;;
    --crux) CRUX_DIR="$2"; shift 2 ;;
    --no-bare) BARE=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done
[[ "$NP" =~ ^[0-9]+$ ]] && [ "$NP" -ge 2 ] || die "--np needs an integer >= 2"
# crux as the third column, unless the caller chose its own EXTRA_CMD
if [ -n "$CRUX_DIR" ] && [ -z "${EXTRA_CMD:-}" ]; then
  CRUX_DIR="$(cd "$CRUX_DIR" && pwd)" || die "--crux: no directory $CRUX_DIR"
  for b in crux-run crux_osu_allreduce; do
    [ -x "$CRUX_DIR/$b" ] || die "--crux: $CRUX_DIR/$b missing (build crux: cmake --build $CRUX_DIR)"
  done
  EXTRA_CMD="$CRUX_DIR/crux-run -n $NP $CRUX_DIR/crux_osu_allreduce -T $DTYPE"
  EXTRA_NAME="${EXTRA_NAME:-crux}"
fi

# ---------------------------------------------------------------- install
PKGS=(openmpi-bin libopenmpi-dev mpich libmpich-dev gcc libc6-dev time)
if [ "$DO_INSTALL" = 1 ]; then
  missing=()
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "# installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q -o DPkg::Lock::Timeout=600 "${missing[@]}" >&2; then
      apt-get update -q -o DPkg::Lock::Timeout=600 >&2
      apt-get install -y -q -o DPkg::Lock::Timeout=600 "${missing[@]}" >&2
    fi
  fi
fi

# ---------------------------------------------------------------- build
mkdir -p "$BUILD"
build() { # $1 compiler  $2 output
  if [ ! -x "$2" ] || [ "$SRC" -nt "$2" ]; then
    "$1" -O2 -o "$2" "$SRC" -lm
  fi
}
BIN_OMPI="$BUILD/ref_osu_allreduce.openmpi"
BIN_MPICH="$BUILD/ref_osu_allreduce.mpich"
build mpicc.openmpi "$BIN_OMPI"
build mpicc.mpich "$BIN_MPICH"
# The cross-core floor of a small shm allreduce (bench/ref/c2c_floor.c).
FLOOR_SRC="$HERE/c2c_floor.c"
BIN_FLOOR="$BUILD/c2c_floor"
if [ -f "$FLOOR_SRC" ] && { [ ! -x "$BIN_FLOOR" ] || [ "$FLOOR_SRC" -nt "$BIN_FLOOR" ]; }; then
  gcc -O2 -o "$BIN_FLOOR" "$FLOOR_SRC" || BIN_FLOOR=""
fi
# The data-movement floor of a large copy-through-staging allreduce (bench/ref/stage_floor.c).
STAGE_SRC="$HERE/stage_floor.c"
BIN_STAGE="$BUILD/stage_floor"
if [ -f "$STAGE_SRC" ] && { [ ! -x "$BIN_STAGE" ] || [ "$STAGE_SRC" -nt "$BIN_STAGE" ]; }; then
  gcc -O2 -o "$BIN_STAGE" "$STAGE_SRC" || BIN_STAGE=""
fi
# The bare 2-process allreduce of the "bare" column (bench/ref/pair_floor.c).
PAIR_SRC="$HERE/pair_floor.c"
BIN_PAIR="$BUILD/pair_floor"
if [ "$BARE" = 1 ] && [ "$NP" = 2 ] && [ -z "${REFBENCH_OMPI_LAUNCH:-}" ] && [ -f "$PAIR_SRC" ]; then
  if [ ! -x "$BIN_PAIR" ] || [ "$PAIR_SRC" -nt "$BIN_PAIR" ]; then
    gcc -O3 -march=native -o "$BIN_PAIR" "$PAIR_SRC" || BIN_PAIR=""
  fi
else
  BIN_PAIR=""
fi
[ "$BUILD_ONLY" = 1 ] && { echo "# built $BIN_OMPI $BIN_MPICH"; exit 0; }

NCPU=$(nproc)
OMPI_LAUNCH=(mpirun.openmpi --allow-run-as-root -np "$NP")
if [ "$NP" -gt "$NCPU" ]; then
  OMPI_LAUNCH+=(--oversubscribe --bind-to core:overload-allowed)
else
  OMPI_LAUNCH+=(--bind-to core)
fi
MPICH_LAUNCH=(mpirun.mpich -np "$NP")
# ref_tcp.sh (or a user) may replace the launch prefixes; split on whitespace.
[ -n "${REFBENCH_OMPI_LAUNCH:-}" ] && read -r -a OMPI_LAUNCH <<< "$REFBENCH_OMPI_LAUNCH"
[ -n "${REFBENCH_MPICH_LAUNCH:-}" ] && read -r -a MPICH_LAUNCH <<< "$REFBENCH_MPICH_LAUNCH"

# ---------------------------------------------------------------- sizes
to_bytes() {
  local s="${1^^}" n m=1
  case "$s" in
    *K|*KB|*KIB) m=1024 ;; *M|*MB|*MIB) m=$((1024*1024)) ;; *G|*GB|*GIB) m=$((1024*1024*1024)) ;;
  esac
  n="${s%%[KMG]*}"
  [[ "$n" =~ ^[0-9]+$ ]] || die "bad size: $1"
  echo $((n * m))
}
SIZES=()
if [ -n "$SIZES_SPEC" ]; then
  for s in ${SIZES_SPEC//,/ }; do SIZES+=("$(to_bytes "$s")"); done
else
  s=4; while [ "$s" -le $((256*1024*1024)) ]; do SIZES+=("$s"); s=$((s*4)); done
fi

iters_for() { # prints "I X"
  local s=$1 i x
  if   [ "$s" -le 8192 ];                 then i=1000; x=100
  elif [ "$s" -le $((16*1024*1024)) ];    then i=100;  x=10
  elif [ "$s" -le $((64*1024*1024)) ];    then i=40;   x=4
  else                                         i=20;   x=2
  fi
  echo "${FORCE_I:-$i} ${FORCE_X:-$x}"
}

# ---------------------------------------------------------------- output
[ -n "$OUT" ] || OUT="/tmp/crux-refbench-out/$(date +%Y%m%d-%H%M%S)-np$NP"
mkdir -p "$OUT"
RAW="$OUT/raw.log"
: > "$RAW"

# parse_avg FILE SIZE -> avg latency (us) of the row for SIZE, or "-"
parse_avg() {
  awk -v want="$2" '
    /^[[:space:]]*#/ || NF < 2 { next }
    $1 ~ /^[0-9]+$/ && $2 ~ /^[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$/ {
      if ($1 + 0 == want + 0) { v = $2; bad = ($0 ~ /Fail/) }
    }
    END { if (v == "") print "-"; else if (bad) print "FAIL"; else print v }' "$1"
}
busbw() { # size avg_us np -> GB/s
  awk -v s="$1" -v t="$2" -v n="$3" 'BEGIN {
    if (t == "-" || t == "FAIL" || t + 0 <= 0) { print "-"; exit }
    printf "%.2f", s / (t * 1e-6) / 1e9 * 2 * (n - 1) / n }'
}

COMMON_ARGS=(-d "$DTYPE" -f)
[ "$VALIDATE" = 1 ] && COMMON_ARGS+=(-c)

# CPU centiseconds used by finished children of this shell (bash `times`,
# run in this shell: a subshell would see its own, empty, counters)
children_cs() {
  times > "$OUT/.times"
  awk 'NR == 2 { for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60 + a[2] } }
       END { printf "%d", t * 100 }' "$OUT/.times"
}
busy_cs() { awk '/^cpu / { printf "%d", ($2 + $3 + $4) * 100 / '"$(getconf CLK_TCK)"' }' /proc/stat; }
OTHER_PCT=0   # share of the machine's CPU time (all CPUs) used by others during the last run_one
run_one() { # label size I X outfile cmd... (cmd already holds its fixed flags)
  local label=$1 size=$2 i=$3 x=$4 of=$5; shift 5
  echo "### $label size=$size: $* -m $size:$size -i $i -x $x" >> "$RAW"
  local rc=0 b0 c0 w0 b1 c1 w1
  b0=$(busy_cs); children_cs > "$OUT/.c0"; w0=$(date +%s%N)
  timeout 300 "$@" -m "$size:$size" -i "$i" -x "$x" > "$of" 2>&1 || rc=$?
  w1=$(date +%s%N); b1=$(busy_cs); children_cs > "$OUT/.c1"
  c0=$(cat "$OUT/.c0"); c1=$(cat "$OUT/.c1")
  # A launch shorter than 10 ticks (pair_floor's small sizes take a few ms) cannot
  # be judged at 10 ms resolution: counted as 0, and said so.
  OTHER_PCT=$(awk -v b=$((b1 - b0)) -v c=$((c1 - c0)) -v w=$(((w1 - w0) / 10000000)) -v n="$NCPU" \
    'BEGIN { if (w < 10) { print 0; exit } o = (b - c) / (w * n) * 100; if (o < 0) o = 0; printf "%d", o }')
  [ "$rc" = 0 ] || echo "# $label size=$size: command failed (rc=$rc)" >> "$of"
  if [ $(((w1 - w0) / 100000000)) -lt 1 ]; then
    echo "# $label size=$size: launch under 100 ms, too short to tell other tenants' share" >> "$of"
  else
    echo "# $label size=$size: other tenants used ${OTHER_PCT}% of all CPUs during this launch" >> "$of"
  fi
  cat "$of" >> "$RAW"
}

IFS=',' read -r -a MPI_LIST <<< "$MPIS"
want() { local m; for m in "${MPI_LIST[@]}"; do [ "$m" = "$1" ] && return 0; done; return 1; }
EXTRA_NAME="${EXTRA_NAME:-EXTRA}"
EXTRA_ARGS="${EXTRA_ARGS:-1}"
EXTRA_FLAGS="${EXTRA_FLAGS:--f}"
[ "$VALIDATE" = 1 ] && EXTRA_FLAGS+=" -c"

# idle share of all CPUs over $1 seconds, from /proc/stat
idle_pct() {
  local a b
  a=($(head -1 /proc/stat)); sleep "$1"; b=($(head -1 /proc/stat))
  awk -v a="${a[*]}" -v b="${b[*]}" 'BEGIN { n = split(a, x, " "); split(b, y, " ");
    for (i = 2; i <= n; i++) { t += y[i] - x[i]; if (i == 5 || i == 6) id += y[i] - x[i] }
    printf "%d", (t > 0 ? 100 * id / t : 0) }'
}
QUIET_INFO=""
if [ "$BUILD_ONLY" = 0 ]; then
  waited=0
  while :; do
    idle=$(idle_pct 2)
    if [ "$idle" -ge 90 ] || [ "$waited" -ge "$WAIT_QUIET" ]; then break; fi
    waited=$((waited + 2))
  done
  QUIET_INFO="machine idle ${idle}% over 2 s before start (waited ${waited} s)"
  [ "$idle" -ge 90 ] || QUIET_INFO+="  WARNING: other load present, numbers may be disturbed: $(top -b -n 1 | awk 'NR > 7 && $9 > 20 {printf "%s(%s%%) ", $12, $9}')"
fi

# One flag exchange between two pinned processes: no shm allreduce of a few bytes
# can beat it, and on this VM it moves with the host (0.08-0.26 us seen).
floor_line() {
  [ -n "$BIN_FLOOR" ] && [ -x "$BIN_FLOOR" ] || return 0
  echo "# cross-core floor $1 the table (c2c_floor: one flag exchange, median/mean us): $("$BIN_FLOOR" 2>&1)"
  stage_line "$1"
}

# For tables with a size >= 16 MiB: two pinned processes moving 256 MiB each, once
# privately (read N + non-temporal write N, the memory-traffic bound) and once through
# a shared staging ring (adds N each way between the cores, as every copy-through-shm
# allreduce does). Medians of 7, ms.
stage_line() {
  [ -n "$BIN_STAGE" ] && [ -x "$BIN_STAGE" ] || return 0
  [ "$NP" = 2 ] && [ -z "${REFBENCH_OMPI_LAUNCH:-}" ] || return 0 # shm, 2 ranks only
  local s big=0
  for s in "${SIZES[@]}"; do [ "$s" -ge $((16 << 20)) ] && big=1; done
  [ "$big" = 1 ] || return 0
  echo "# staging floor $1 the table (stage_floor 256 MiB, ms: private read N + NT write N, through staging): $("$BIN_STAGE" 256 7 2>&1)"
}

machine_facts() {
  echo "# ${REFBENCH_LABEL:-shared memory (default transports)}"
  echo "# date: $(date -u +%FT%TZ)  host: $(hostname)  nproc: $NCPU  np: $NP  dtype: $DTYPE"
  echo "# $(mpirun.openmpi --version 2>/dev/null | head -1); MPICH $(mpichversion 2>/dev/null | awk -F':[ \t]*' '/Version|Device/{printf "%s ", $2}')"
  echo "# THP enabled: $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)  defrag: $(cat /sys/kernel/mm/transparent_hugepage/defrag 2>/dev/null)"
  echo "# load before run: $(cut -d' ' -f1-3 /proc/loadavg); $QUIET_INFO"
  floor_line before
  echo "# OMPI:  ${OMPI_LAUNCH[*]} $BIN_OMPI ${COMMON_ARGS[*]} -m S:S -i I -x X"
  echo "# MPICH: ${MPICH_LAUNCH[*]} $BIN_MPICH ${COMMON_ARGS[*]} -m S:S -i I -x X"
  [ -n "${EXTRA_CMD:-}" ] && echo "# $EXTRA_NAME: $EXTRA_CMD$([ "$EXTRA_ARGS" = 1 ] && echo " -m S:S -i I -x X $EXTRA_FLAGS")"
  [ -n "$BIN_PAIR" ] && echo "# bare:  $BIN_PAIR -m S:S -i I -x X (bench/ref/pair_floor.c)"
  return 0
}

# gate: wait (at most WAIT_QUIET s) until >=90% idle over 1 s; prints idle %
gate_quiet() {
  local w=0 idle
  while :; do
    idle=$(idle_pct 1)
    if [ "$idle" -ge 90 ] || [ "$w" -ge "$WAIT_QUIET" ]; then echo "$idle"; return; fi
    w=$((w + 1))
  done
}
# pick the median (lower middle for an even count) of the numeric args
pick_median() {
  printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g | awk '{v[NR]=$1} END {
    if (NR == 0) print "-"; else print v[int((NR + 1) / 2)] }'
}

main_table() {
  local size i x r a_o a_m a_e a_b extra_once="" idle_b idle_a worst
  if [ -n "${EXTRA_CMD:-}" ] && [ "$EXTRA_ARGS" != 1 ]; then
    extra_once="$OUT/extra-all.txt"
    echo "### $EXTRA_NAME (once): $EXTRA_CMD" >> "$RAW"
    bash -c "$EXTRA_CMD" > "$extra_once" 2>&1 || echo "# extra failed rc=$?" >> "$extra_once"
    cat "$extra_once" >> "$RAW"
  fi
  echo "# busbw in GB/s (1e9 B/s). idle% = lowest machine idle share in the 1 s before/after each"
  echo "# group of launches (* < 90); other% = highest share of all CPUs used by processes other"
  echo "# than the launched benchmark during one launch (* > 15; 10 ms tick resolution, launch"
  echo "# start/exit and kernel work not charged to our processes, e.g. TCP softirq, count too)."
  local hdr
  hdr=$(printf "%-11s %14s %14s" "Size(B)" "OMPI avg(us)" "MPICH avg(us)")
  [ -n "${EXTRA_CMD:-}" ] && hdr+=$(printf " %14s" "$EXTRA_NAME avg(us)")
  [ -n "$BIN_PAIR" ] && hdr+=$(printf " %14s" "bare avg(us)")
  hdr+=$(printf " %13s %13s" "OMPI busbw" "MPICH busbw")
  [ -n "${EXTRA_CMD:-}" ] && hdr+=$(printf " %13s" "$EXTRA_NAME busbw")
  hdr+=$(printf " %6s %7s" "idle%" "other%")
  echo "$hdr"
  for size in "${SIZES[@]}"; do
    read -r i x < <(iters_for "$size")
    local vo=() vm=() ve=() vb=() other=0
    worst=100
    for r in $(seq 1 "$REPEAT"); do
      idle_b=$(gate_quiet)
      if want ompi; then
        run_one OMPI "$size" "$i" "$x" "$OUT/ompi-$size-r$r.txt" "${OMPI_LAUNCH[@]}" "$BIN_OMPI" "${COMMON_ARGS[@]}"
        vo+=("$(parse_avg "$OUT/ompi-$size-r$r.txt" "$size")"); [ "$OTHER_PCT" -gt "$other" ] && other=$OTHER_PCT
      fi
      if want mpich; then
        run_one MPICH "$size" "$i" "$x" "$OUT/mpich-$size-r$r.txt" "${MPICH_LAUNCH[@]}" "$BIN_MPICH" "${COMMON_ARGS[@]}"
        vm+=("$(parse_avg "$OUT/mpich-$size-r$r.txt" "$size")"); [ "$OTHER_PCT" -gt "$other" ] && other=$OTHER_PCT
      fi
      if [ -n "${EXTRA_CMD:-}" ]; then
        if [ -n "$extra_once" ]; then
          ve+=("$(parse_avg "$extra_once" "$size")")
        else
          # EXTRA_CMD is a shell command line; the per-size flags are appended
          # after it, then EXTRA_FLAGS (default -f; -c added with --validate).
          run_one "$EXTRA_NAME" "$size" "$i" "$x" "$OUT/extra-$size-r$r.txt" \
            bash -c "$EXTRA_CMD \"\$@\" $EXTRA_FLAGS" extra
          ve+=("$(parse_avg "$OUT/extra-$size-r$r.txt" "$size")"); [ "$OTHER_PCT" -gt "$other" ] && other=$OTHER_PCT
        fi
      fi
      if [ -n "$BIN_PAIR" ]; then
        run_one bare "$size" "$i" "$x" "$OUT/bare-$size-r$r.txt" "$BIN_PAIR"
        vb+=("$(parse_avg "$OUT/bare-$size-r$r.txt" "$size")"); [ "$OTHER_PCT" -gt "$other" ] && other=$OTHER_PCT
      fi
      idle_a=$(idle_pct 1)
      [ "$idle_b" -lt "$worst" ] && worst=$idle_b
      [ "$idle_a" -lt "$worst" ] && worst=$idle_a
      echo "# size=$size rep=$r OMPI=${vo[*]: -1} MPICH=${vm[*]: -1} EXTRA=${ve[*]: -1} bare=${vb[*]: -1} idle_before=$idle_b idle_after=$idle_a max_other=$other" >> "$RAW"
    done
    a_o="-"; a_m="-"; a_e="-"; a_b="-"
    [ ${#vb[@]} -gt 0 ] && a_b=$(pick_median "${vb[@]}")
    [ ${#vo[@]} -gt 0 ] && a_o=$(pick_median "${vo[@]}")
    [ ${#vm[@]} -gt 0 ] && a_m=$(pick_median "${vm[@]}")
    [ ${#ve[@]} -gt 0 ] && a_e=$(pick_median "${ve[@]}")
    # a FAIL anywhere wins over a number
    case " ${vo[*]:-} " in *" FAIL "*) a_o=FAIL ;; esac
    case " ${vm[*]:-} " in *" FAIL "*) a_m=FAIL ;; esac
    case " ${ve[*]:-} " in *" FAIL "*) a_e=FAIL ;; esac
    case " ${vb[*]:-} " in *" FAIL "*) a_b=FAIL ;; esac
    local line
    line=$(printf "%-11s %14s %14s" "$size" "$a_o" "$a_m")
    [ -n "${EXTRA_CMD:-}" ] && line+=$(printf " %14s" "$a_e")
    [ -n "$BIN_PAIR" ] && line+=$(printf " %14s" "$a_b")
    line+=$(printf " %13s %13s" "$(busbw "$size" "$a_o" "$NP")" "$(busbw "$size" "$a_m" "$NP")")
    [ -n "${EXTRA_CMD:-}" ] && line+=$(printf " %13s" "$(busbw "$size" "$a_e" "$NP")")
    line+=$(printf " %5s%s %6s%s" "$worst" "$([ "$worst" -lt 90 ] && echo '*' || echo ' ')" \
      "$other" "$([ "$other" -gt 15 ] && echo '*' || echo ' ')")
    echo "$line"
  done
}

# 256 MiB page-fault / huge page experiment (Open MPI, and MPICH for contrast)
hugetlb_check() {
  local S=$((256*1024*1024)) I=20 X=2 label env_s of
  echo
  echo "# 256 MiB allreduce vs glibc malloc tunables (np=$NP, -i $I -x $X); minflt = minor page faults per rank over the whole run"
  echo "# (/usr/bin/time); thp_fault_alloc = system-wide THP faults (/proc/vmstat) during the run"
  echo "# (the 3 user buffers account for 3*65536 = 196608 faults per rank)"
  printf "%-6s %-58s %14s %22s %s\n" "MPI" "GLIBC_TUNABLES" "avg(us)" "minflt rank0/rank1" "thp_fault_alloc delta"
  for label in OMPI MPICH; do
    local lc; lc=$(echo "$label" | tr 'A-Z' 'a-z')
    want "$lc" || continue
    for env_s in "" "glibc.malloc.hugetlb=1" "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295"; do
      of="$OUT/huge-$lc-$(echo "${env_s:-default}" | tr -c 'a-zA-Z0-9=\n' '_').txt"
      rm -f "$of.minflt"
      local t0 t1
      t0=$(awk '/^thp_fault_alloc /{print $2}' /proc/vmstat)
      echo "### hugetlb-check $label GLIBC_TUNABLES='$env_s'" >> "$RAW"
      if [ "$label" = OMPI ]; then
        env ${env_s:+GLIBC_TUNABLES=$env_s} timeout 300 "${OMPI_LAUNCH[@]}" /usr/bin/time -a -o "$of.minflt" -f "minflt=%R" \
          "$BIN_OMPI" -m $S:$S -i $I -x $X -f > "$of" 2>&1 || echo "# failed rc=$?" >> "$of"
      else
        env ${env_s:+GLIBC_TUNABLES=$env_s} timeout 300 "${MPICH_LAUNCH[@]}" /usr/bin/time -a -o "$of.minflt" -f "minflt=%R" \
          "$BIN_MPICH" -m $S:$S -i $I -x $X -f > "$of" 2>&1 || echo "# failed rc=$?" >> "$of"
      fi
      t1=$(awk '/^thp_fault_alloc /{print $2}' /proc/vmstat)
      cat "$of" >> "$RAW"
      printf "%-6s %-58s %14s %22s %s\n" "$label" "${env_s:-(unset)}" "$(parse_avg "$of" $S)" \
        "$(grep -o 'minflt=[0-9]*' "$of.minflt" 2>/dev/null | cut -d= -f2 | paste -sd/)" "$((t1 - t0))"
    done
  done
}

{
  machine_facts
  if [ "$HUGE_ONLY" = 1 ]; then
    hugetlb_check
  else
    main_table
    [ "$HUGE_CHECK" = 1 ] && hugetlb_check
  fi
  floor_line after
  echo "# load after run: $(cut -d' ' -f1-3 /proc/loadavg); machine idle $(idle_pct 2)% over 2 s after the run"
  echo "# raw outputs: $OUT"
} 2>&1 | tee "$OUT/table.txt"
