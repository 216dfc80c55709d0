#!/usr/bin/env bash
# Stop the nodes that cluster/local/start.sh started, and nothing else:
#
#   cluster/local/stop.sh [-d STATE_DIR]      (default /tmp/cvray-local)
#
# Each node is one `ray start --block` whose session (recorded in STATE_DIR/cluster.env) holds its
# GCS, raylet, dashboard, agents and workers. SIGTERM to each of those processes, then SIGKILL to
# whatever is left after 10 s (CVRAY_STOP_GRACE_S). No `ray stop`: that would stop
# every Ray on the machine. Run storage, logs and the token stay in STATE_DIR.
set -uo pipefail

state=/tmp/cvray-local
while getopts "d:h" opt; do
    case $opt in
        d) state=$OPTARG ;;
        *) sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    esac
done
if [[ ! -f $state/cluster.env ]]; then
    echo "stop.sh: error: no cluster recorded in $state (no cluster.env)" >&2
    exit 2
fi
# shellcheck disable=SC1091
pgids=$(. "$state/cluster.env"; echo "$PGIDS")

ours() {  # sid: is that session still ours? (its leader is the `ray start` recorded; guards pid reuse)
    local cmd
    cmd=$(tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null) || return 0  # leader gone: members may remain
    [[ $cmd == *"ray start"*"--temp-dir $state/ray/"* ]]
}
# A node's processes share the session that setsid gave its `ray start` (Ray moves some workers
# into process groups of their own, never out of the session).
members() { ps -s "$1" -o pid= 2>/dev/null | tr -d ' '; }

sessions=""
for sid in $pgids; do
    [[ -n $(members "$sid") ]] && ours "$sid" && sessions="$sessions $sid"
done
signal_all() {  # signal: to every process of our sessions, workers' nodes first, the head last
    local sid
    for sid in $(echo "$sessions" | tr ' ' '\n' | tac); do
        # shellcheck disable=SC2046
        kill "-$1" $(members "$sid") 2>/dev/null
    done
}
remaining() { local sid; for sid in $sessions; do members "$sid"; done; }

signal_all TERM
# Like `ray stop`'s grace period: Ray's GCS and `ray start --block` take ~30 s to end on SIGTERM
# here (2 loaded cores) while holding nothing that a SIGKILL loses (runs are on the storage).
grace=${CVRAY_STOP_GRACE_S:-10}
for _ in $(seq $((grace * 2))); do
    [[ -z $(remaining) ]] && break
    sleep 0.5
done
killed=$(remaining | wc -l)
if ((killed > 0)); then
    signal_all KILL
    for _ in $(seq 20); do [[ -z $(remaining) ]] && break; sleep 0.5; done
fi
if [[ -n $(remaining) ]]; then
    echo "stop.sh: error: processes $(remaining | tr '\n' ' ')survived SIGKILL" >&2
    exit 1
fi
rm -f "$state/cluster.env"
echo "stopped the Ray cluster of $state (sessions:${pgids}; $killed process(es) SIGKILLed after ${grace} s)"
