#!/bin/sh
# ns-agent.sh - "rsh" replacement that runs a command inside a network
# namespace instead of on a remote host. Used by ref_tcp.sh as Open MPI's
# plm_rsh_agent and as MPICH hydra's -launcher-exec.
#   ns-agent.sh [-x|-n|-o opt ...] HOST COMMAND...
# HOST -> namespace via REFBENCH_NS_MAP ("198.18.0.1=cruxrb-a 198.18.0.2=cruxrb-b").
# REFBENCH_CPU_MAP ("198.18.0.1=0 198.18.0.2=1") optionally pins the launched
# daemon (and so its ranks) with taskset.
#
# Origin: ../shared/tools/refbench/ns-agent.sh, the reference tools behind the
# baseline measurements in ../shared/LIMITS.md; copied into crux's bench/ref/
# so the project does not depend on ../shared.
while [ $# -gt 0 ]; do
  case "$1" in
    -o|-l|-p) shift 2 ;;   # ssh-style options with an argument
    -*) shift ;;           # -x, -n, -T ... (no argument)
    *) break ;;
  esac
done
host=$1; shift
ns=""; cpu=""
for kv in ${REFBENCH_NS_MAP:-}; do [ "${kv%%=*}" = "$host" ] && ns=${kv#*=}; done
for kv in ${REFBENCH_CPU_MAP:-}; do [ "${kv%%=*}" = "$host" ] && cpu=${kv#*=}; done
if [ -z "$ns" ]; then
  echo "ns-agent.sh: no namespace for host '$host' (REFBENCH_NS_MAP='${REFBENCH_NS_MAP:-}')" >&2
  exit 255
fi
if [ -n "$cpu" ]; then
  exec ip netns exec "$ns" taskset -c "$cpu" sh -c "$*"
else
  exec ip netns exec "$ns" sh -c "$*"
fi
