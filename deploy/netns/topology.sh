#!/usr/bin/env bash
# A Parley cluster's network, made of Linux network namespaces on one machine: every host is a
# namespace, each zone a bridge, and the relay the only host on both.
#
#   edge zone     198.18.1.0/24  bridge pl-edge:  client, lb, vg1..vgN, relay1..relayM
#   internal zone 198.18.2.0/24  bridge pl-int:   relay1..relayM, ag1..agK, pg, agents
#
# The bridges live in a namespace of their own (pl-net), so nothing is added to the host's
# network, and no host forwards packets: the edge and the internal zone share no route. The
# addresses exist only inside these namespaces (198.18.0.0/15 is reserved for testing).
#
#   topology.sh up [VISITOR_GATEWAYS] [AGENT_GATEWAYS] [RELAYS]   (defaults 3 2 1)
#   topology.sh down
#   topology.sh hosts                  lists "host zone address" lines
#   topology.sh addr HOST [ZONE]       prints a host's address (the relay has one per zone)
#   topology.sh exec HOST CMD...       runs CMD inside HOST's namespace
#
# Used by the fault-injection and zone-isolation tests; needs root and iproute2.
set -euo pipefail
prefix=${PARLEY_NETNS_PREFIX:-pl}
state=/run/parley-netns-$prefix
mkdir -p /run
command -v ip >/dev/null || apt-get install -y iproute2 >/dev/null

ns() { echo "$prefix-$1"; }

add_host() { # host zone index
  local host=$1 zone=$2 index=$3 net bridge
  case $zone in edge) net=198.18.1; bridge=$prefix-edge ;; internal) net=198.18.2; bridge=$prefix-int ;; esac
  ip netns list | grep -qw "$(ns "$host")" || { ip netns add "$(ns "$host")"; ip -n "$(ns "$host")" link set lo up; }
  # Interface names are at most 15 characters: v<zone letter><index> on both ends.
  local outer="v${zone:0:1}$index" inner="eth-$zone"
  # Made inside the bridges' namespace, so topologies with other prefixes never collide.
  ip -n "$(ns net)" link add "$outer" type veth peer name "$inner" netns "$(ns "$host")"
  ip -n "$(ns net)" link set "$outer" master "$bridge" up
  ip -n "$(ns "$host")" addr add "$net.$index/24" dev "$inner"
  ip -n "$(ns "$host")" link set "$inner" up
  echo "$host $zone $net.$index" >> "$state/hosts"
}

# `ip netns add` and mounts under /run/netns race between concurrent callers: one at a time.
case ${1:-} in up|down) exec 9>/run/parley-netns.lock; flock 9 ;; esac

case ${1:-} in
up)
  vgs=${2:-3}; ags=${3:-2}; relays=${4:-1}
  for n in $(ip netns list | awk '{print $1}' | grep "^$prefix-" || true); do ip netns del "$n"; done
  mkdir -p "$state"; : > "$state/hosts"
  ip netns add "$(ns net)"
  for bridge in edge int; do
    ip -n "$(ns net)" link add "$prefix-$bridge" type bridge
    ip -n "$(ns net)" link set "$prefix-$bridge" up
  done
  add_host client edge 10
  add_host lb edge 11
  for i in $(seq 1 "$vgs"); do add_host "vg$i" edge $((20 + i)); done
  for i in $(seq 1 "$relays"); do add_host "relay$i" edge $((40 + i)); add_host "relay$i" internal $((40 + i)); done
  for i in $(seq 1 "$ags"); do add_host "ag$i" internal $((60 + i)); done
  add_host pg internal 80
  add_host agents internal 90
  cat "$state/hosts"
  ;;
down)
  for n in $(ip netns list | awk '{print $1}' | grep "^$prefix-" || true); do ip netns del "$n"; done
  rm -rf "$state"
  ;;
hosts)
  cat "$state/hosts"
  ;;
addr)
  host=${2:?host}; zone=${3:-}
  awk -v h="$host" -v z="$zone" '$1 == h && (z == "" || $2 == z) { print $3; exit }' "$state/hosts"
  ;;
exec)
  host=${2:?host}; shift 2
  exec ip netns exec "$(ns "$host")" "$@"
  ;;
*)
  sed -n '2,20p' "$0"; exit 2 ;;
esac
