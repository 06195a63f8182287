#!/usr/bin/env bash
# ref_tcp.sh - the run-ref.sh comparison (Open MPI vs MPICH [vs EXTRA_CMD]) with
# every byte forced over TCP.
#
# Usage: ref_tcp.sh [--mode netns|loopback] [--rate RATE] [--np N]
#                   [--only SIZE_LIST] [--out DIR] [--crux BUILD_DIR]
#                   [other run-ref.sh options]
#
# --mode netns (default): two network namespaces <prefix>-a / <prefix>-b joined
#   by a veth pair (interface "rbveth" on both sides), 198.18.0.1/24 and
#   198.18.0.2/24 (RFC 2544 benchmark range; nothing is routed off the host:
#   the namespaces have no other interface and no default route). Half of the
#   ranks run in each namespace, pinned: namespace a -> CPU 0, b -> CPU 1.
#   The launchers start in namespace a and reach namespace b through
#   ns-agent.sh, an "rsh" that does `ip netns exec`:
#     Open MPI: mpirun --host 198.18.0.1:K,198.18.0.2:K --map-by slot
#               --mca plm_rsh_agent ns-agent.sh --mca pml ob1
#               --mca btl tcp,self --mca btl_tcp_if_include rbveth
#               --mca oob_tcp_if_include rbveth --bind-to none
#     MPICH:    mpiexec.hydra -hosts 198.18.0.1:K,198.18.0.2:K -ppn K
#               -launcher rsh -launcher-exec ns-agent.sh -iface rbveth
#               -genv UCX_TLS tcp,self -genv UCX_NET_DEVICES rbveth
#   (Debian's MPICH 4.0.2 is ch4:ucx; its intra-node traffic also goes through
#   UCX, so UCX_TLS decides the transport.)
# --rate RATE: shape both veth ends with
#   tc qdisc add dev rbveth root tbf rate RATE burst 1mb latency 10ms
#   (e.g. --rate 10gbit); only in netns mode.
# --mode loopback: one namespace (the host's), TCP over the loopback path:
#     Open MPI: --mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include lo
#     MPICH:    MPIR_CVAR_NOLOCAL=1 UCX_TLS=tcp,self (UCX_NET_DEVICES=lo hangs in
#               UCX; without it UCX uses the host's own address, which the
#               kernel delivers locally)
# The namespaces are created at start (recreated if left over) and deleted at
# exit unless --keep-ns. Needs root. REFBENCH_NS_PREFIX (default cruxrb)
# names them. An EXTRA_CMD (see run-ref.sh) is run as given; in netns mode it
# can use $REFBENCH_NS_MAP, $REFBENCH_CPU_MAP and ns-agent.sh the same way.
# --crux BUILD_DIR (default $CRUX_BUILD_DIR), unless EXTRA_CMD is set: crux is the
#   third column, with CRUX_TRANSPORT=tcp; netns mode starts half of its ranks
#   in each namespace with crux-ns-run.sh (CRUX_ROOT on 198.18.0.1,
#   CRUX_SOCKET_IFNAME=rbveth), loopback mode uses crux-run with
#   CRUX_SOCKET_IFNAME=lo.
#
# Origin: ../shared/tools/refbench/ref_tcp.sh, the reference tools behind the
# baseline measurements in ../shared/LIMITS.md; copied into crux's bench/ref/ so the
# project does not depend on ../shared. Changes: --crux / CRUX_BUILD_DIR.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
AGENT="$HERE/ns-agent.sh"
MODE=netns
RATE=""
NP=2
KEEP=0
PASS=()
CRUX_DIR="${CRUX_BUILD_DIR:-}"
DTYPE=float
while [ $# -gt 0 ]; do
  case "$1" in
    --mode) MODE="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --np) NP="$2"; PASS+=(--np "$2"); shift 2 ;;
    --keep-ns) KEEP=1; shift ;;
    --crux) CRUX_DIR="$2"; shift 2 ;;
    --dtype) DTYPE="$2"; PASS+=(--dtype "$2"); shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) PASS+=("$1"); shift ;;
  esac
done
[ "$MODE" = netns ] || [ "$MODE" = loopback ] || { echo "bad --mode $MODE" >&2; exit 2; }
[ $((NP % 2)) = 0 ] || [ "$MODE" = loopback ] || { echo "netns mode needs an even --np" >&2; exit 2; }

# Make sure the packages/binaries exist first (run-ref.sh installs + builds).
"$HERE/run-ref.sh" --build-only
# run-ref.sh must not fall back to crux over shared memory
unset CRUX_BUILD_DIR
if [ -n "$CRUX_DIR" ] && [ -z "${EXTRA_CMD:-}" ]; then
  CRUX_DIR="$(cd "$CRUX_DIR" && pwd)" || { echo "--crux: no directory $CRUX_DIR" >&2; exit 2; }
  for b in crux-run crux_osu_allreduce; do
    [ -x "$CRUX_DIR/$b" ] || { echo "--crux: $CRUX_DIR/$b missing" >&2; exit 2; }
  done
  if [ "$MODE" = netns ]; then
    export EXTRA_CMD="$HERE/crux-ns-run.sh -n $NP $CRUX_DIR/crux_osu_allreduce -T $DTYPE"
  else
    export EXTRA_CMD="env CRUX_TRANSPORT=tcp CRUX_SOCKET_IFNAME=lo $CRUX_DIR/crux-run -n $NP $CRUX_DIR/crux_osu_allreduce -T $DTYPE"
  fi
  export EXTRA_NAME="${EXTRA_NAME:-crux}"
fi

PFX="${REFBENCH_NS_PREFIX:-cruxrb}"
NSA="$PFX-a"
NSB="$PFX-b"
IPA=198.18.0.1
IPB=198.18.0.2
K=$((NP / 2))

ns_cleanup() {
  local ns pid
  for ns in "$NSA" "$NSB"; do
    if ip netns list | awk '{print $1}' | grep -qx "$ns"; then
      # processes still inside our namespaces were started by this script
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
}

if [ "$MODE" = netns ]; then
  ns_cleanup
  ip netns add "$NSA"
  ip netns add "$NSB"
  [ "$KEEP" = 1 ] || trap ns_cleanup EXIT
  ip link add "${PFX:0:8}-va" type veth peer name "${PFX:0:8}-vb"
  ip link set "${PFX:0:8}-va" netns "$NSA"
  ip link set "${PFX:0:8}-vb" netns "$NSB"
  ip -n "$NSA" link set "${PFX:0:8}-va" name rbveth
  ip -n "$NSB" link set "${PFX:0:8}-vb" name rbveth
  ip -n "$NSA" addr add "$IPA/24" dev rbveth
  ip -n "$NSB" addr add "$IPB/24" dev rbveth
  for ns in "$NSA" "$NSB"; do
    ip -n "$ns" link set lo up
    ip -n "$ns" link set rbveth up
    if [ -n "$RATE" ]; then
      ip netns exec "$ns" tc qdisc add dev rbveth root tbf rate "$RATE" burst 1mb latency 10ms
    fi
  done
  export REFBENCH_NS_MAP="$IPA=$NSA $IPB=$NSB"
  export REFBENCH_CPU_MAP="$IPA=0 $IPB=1"
  SHAPE="${RATE:+, tbf rate $RATE burst 1mb latency 10ms on both ends}"
  export REFBENCH_LABEL="TCP over veth between netns $NSA ($IPA, CPU 0) and $NSB ($IPB, CPU 1)$SHAPE; mtu $(ip -n "$NSA" -o link show rbveth | sed -n 's/.* mtu \([0-9]*\).*/\1/p')"
  export REFBENCH_OMPI_LAUNCH="ip netns exec $NSA taskset -c 0 mpirun.openmpi --allow-run-as-root -np $NP --host $IPA:$K,$IPB:$K --map-by slot --bind-to none --mca plm_rsh_agent $AGENT --mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include rbveth --mca oob_tcp_if_include rbveth -x REFBENCH_NS_MAP -x REFBENCH_CPU_MAP"
  export REFBENCH_MPICH_LAUNCH="ip netns exec $NSA taskset -c 0 mpiexec.hydra -n $NP -hosts $IPA:$K,$IPB:$K -ppn $K -launcher rsh -launcher-exec $AGENT -iface rbveth -genv UCX_TLS tcp,self -genv UCX_NET_DEVICES rbveth"
else
  export REFBENCH_LABEL="TCP over loopback (same namespace)"
  OVS=""; [ "$NP" -gt "$(nproc)" ] && OVS="--oversubscribe --bind-to core:overload-allowed" || OVS="--bind-to core"
  export REFBENCH_OMPI_LAUNCH="mpirun.openmpi --allow-run-as-root -np $NP $OVS --mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include lo"
  export REFBENCH_MPICH_LAUNCH="env MPIR_CVAR_NOLOCAL=1 UCX_TLS=tcp,self mpirun.mpich -np $NP"
fi

rc=0
"$HERE/run-ref.sh" --no-install --no-hugetlb-check "${PASS[@]}" || rc=$?

if [ "$MODE" = netns ]; then
  echo "# veth counters in $NSA after the run (all TCP traffic of the run crossed it):"
  ip -n "$NSA" -s link show rbveth | sed -n '3,6p' | sed 's/^/#   /'
  if [ -n "$RATE" ]; then ip netns exec "$NSA" tc -s qdisc show dev rbveth | sed 's/^/#   /'; fi
fi
exit $rc
