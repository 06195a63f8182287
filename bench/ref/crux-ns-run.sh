#!/usr/bin/env bash
# crux-ns-run.sh - start the ranks of a crux program across the network
# namespaces ref_tcp.sh creates, so every byte between them crosses the veth
# pair over TCP. crux-run only starts local ranks, hence this launcher.
#   crux-ns-run.sh -n N PROG [ARGS...]
# Ranks 0..N/2-1 run in the first namespace of REFBENCH_NS_MAP, the rest in the
# second ("198.18.0.1=cruxrb-a 198.18.0.2=cruxrb-b"), pinned with
# REFBENCH_CPU_MAP when it names a CPU. Each rank gets CRUX_RANK, CRUX_SIZE,
# CRUX_LOCAL_RANK, CRUX_ROOT=<first ip>:<port>, CRUX_JOB_KEY,
# CRUX_TRANSPORT=tcp (like Open MPI's tcp,self BTLs beside it), CRUX_HOSTNAME=<its
# namespace> (each namespace is a host: hier and tree see two nodes) and
# CRUX_SOCKET_IFNAME=rbveth; variables already set in the environment win, except
# CRUX_HOSTNAME. When a rank fails the others are
# stopped and the exit status is non-zero, naming the rank.
set -uo pipefail

die() { echo "crux-ns-run.sh: $*" >&2; exit 2; }
[ "${1:-}" = -n ] && [[ "${2:-}" =~ ^[0-9]+$ ]] && [ "$2" -ge 1 ] || die "usage: crux-ns-run.sh -n N PROG [ARGS...]"
NP=$2; shift 2
[ $# -ge 1 ] || die "no program given"
read -r -a MAP <<< "${REFBENCH_NS_MAP:-}"
[ ${#MAP[@]} -ge 2 ] || die "REFBENCH_NS_MAP needs two 'ip=namespace' entries (ref_tcp.sh exports it)"
IPS=("${MAP[0]%%=*}" "${MAP[1]%%=*}")
NSS=("${MAP[0]#*=}" "${MAP[1]#*=}")
cpu_of() { local kv; for kv in ${REFBENCH_CPU_MAP:-}; do [ "${kv%%=*}" = "$1" ] && echo "${kv#*=}"; done; }

PORT=${CRUX_NS_RUN_PORT:-$((20000 + RANDOM % 30000))}
KEY=${CRUX_JOB_KEY:-nsrun-$$-$RANDOM}
HALF=$(((NP + 1) / 2))
PIDS=()
set -m   # every rank in its own process group, so stopping it stops its children too
for ((r = 0; r < NP; r++)); do
  side=$((r < HALF ? 0 : 1))
  local_rank=$((side == 0 ? r : r - HALF))
  cpu=$(cpu_of "${IPS[$side]}")
  pin=(); [ -n "$cpu" ] && pin=(taskset -c "$cpu")
  ip netns exec "${NSS[$side]}" "${pin[@]}" env \
    CRUX_RANK=$r CRUX_SIZE=$NP CRUX_LOCAL_RANK=$local_rank \
    CRUX_ROOT="${CRUX_ROOT:-${IPS[0]}:$PORT}" CRUX_JOB_KEY="$KEY" \
    CRUX_HOSTNAME="${NSS[$side]}" \
    CRUX_TRANSPORT="${CRUX_TRANSPORT:-tcp}" CRUX_SOCKET_IFNAME="${CRUX_SOCKET_IFNAME:-rbveth}" \
    "$@" &
  PIDS+=($!)
done
set +m   # no job-control chatter from here on

stop_all() { local p; for p in "${PIDS[@]}"; do kill -- "-$p" 2>/dev/null; done; }
trap 'stop_all; exit 130' INT TERM
rc=0
left=$NP
while [ "$left" -gt 0 ]; do
  wait -n -p done_pid; st=$?
  left=$((left - 1))
  if [ "$st" -ne 0 ] && [ "$rc" -eq 0 ]; then
    for ((r = 0; r < NP; r++)); do [ "${PIDS[$r]}" = "$done_pid" ] && break; done
    echo "crux-ns-run.sh: rank $r (namespace ${NSS[$((r < HALF ? 0 : 1))]}) exited with status $st; stopping the others" >&2
    rc=$st
    stop_all
  fi
done
exit $rc
