#!/usr/bin/env bash
# Start a Ray head and N worker nodes on this machine, listening on loopback only, with token auth.
#
#   cluster/local/start.sh [-w WORKERS] [-c HEAD_CPUS] [-C WORKER_CPUS] [-g WORKER_GPUS] [-d STATE_DIR]
#
# Each node is its own `ray start --block` in its own process group (setsid), so stop.sh can end
# exactly these processes (never a machine-wide `ray stop`). STATE_DIR (default /tmp/cvray-local;
# keep it short: Ray's unix sockets live under it and their paths are capped near 107 bytes) holds:
#   cluster.env   the address, ports and process groups (read by stop.sh)
#   env.sh        `source` it for clients: RAY_ADDRESS, RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH, CVRAY_STORAGE
#   auth_token    the cluster's token (made here unless RAY_AUTH_TOKEN_PATH names one): the user's
#                 ~/.ray/auth_token is neither read nor written
#   storage/      the shared run storage every node is told about (pass it as --storage-path)
#   logs/, ray/NODE/  each node's `ray start` output, and each node's own Ray temp dir (session logs)
set -euo pipefail

workers=1 head_cpus=2 worker_cpus=2 worker_gpus=0 state=/tmp/cvray-local
while getopts "w:c:C:g:d:h" opt; do
    case $opt in
        w) workers=$OPTARG ;; c) head_cpus=$OPTARG ;; C) worker_cpus=$OPTARG ;;
        g) worker_gpus=$OPTARG ;; d) state=$OPTARG ;;
        *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    esac
done
for value in "$workers" "$head_cpus" "$worker_cpus" "$worker_gpus"; do
    [[ $value =~ ^[0-9]+$ ]] || { echo "start.sh: error: counts must be whole numbers, got '$value'" >&2; exit 2; }
done
python=${PYTHON:-python}
ray_bin=$(command -v ray) || { echo "start.sh: error: no 'ray' command on PATH (pip install 'ray[default]')" >&2; exit 2; }

mkdir -p "$state"
state=$(cd "$state" && pwd)
if [[ -f $state/cluster.env ]]; then
    # shellcheck disable=SC1091
    pgids=$(. "$state/cluster.env"; echo "$PGIDS")
    for pgid in $pgids; do
        if kill -0 -- "-$pgid" 2>/dev/null; then
            echo "start.sh: error: a cluster from $state is still running (process group $pgid): run cluster/local/stop.sh -d $state" >&2
            exit 2
        fi
    done
fi
mkdir -p "$state/logs" "$state/storage"

# Token auth for every node and client, from a file of our own (never the user's home).
export RAY_AUTH_MODE=token
if [[ -z ${RAY_AUTH_TOKEN_PATH:-} ]]; then
    export RAY_AUTH_TOKEN_PATH=$state/auth_token
    if [[ ! -s $RAY_AUTH_TOKEN_PATH ]]; then
        (umask 077 && "$python" -c "import secrets; print(secrets.token_hex(32))" > "$RAY_AUTH_TOKEN_PATH")
    fi
fi
unset RAY_AUTH_TOKEN RAY_ADDRESS

# 127.0.0.2 (loopback too, on Linux): `ray start` rewrites 127.0.0.1 and localhost into this
# machine's outward IP, and Ray's gRPC servers then listen on every interface.
node_ip=${CVRAY_NODE_IP:-127.0.0.2}

# Distinct ports for every node: the defaults (dashboard agent 52365, metrics, runtime-env agent, ...)
# would collide between nodes of one machine. Picked free on 127.0.0.1 just now.
read -r -a ports <<< "$("$python" - "$((3 + 6 * (workers + 1)))" <<'PY'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
PY
)"
gcs_port=${ports[0]} dashboard_port=${ports[1]} client_port=${ports[2]}
node_ports() {  # the six per-node ports of node $1 (0 = head)
    local base=$((3 + 6 * $1))
    echo "--node-manager-port ${ports[base]} --object-manager-port ${ports[base+1]}" \
         "--metrics-export-port ${ports[base+2]} --dashboard-agent-listen-port ${ports[base+3]}" \
         "--dashboard-agent-grpc-port ${ports[base+4]} --runtime-env-agent-port ${ports[base+5]}"
}
common=(--block --node-ip-address "$node_ip" --min-worker-port 0 --max-worker-port 0 --disable-usage-stats)

# Every process of the cluster gets its own address: Ray code inside it that uses the State API
# without one (Ray Train's placement-group cleaner, in each training job) otherwise scans the
# machine and joins whichever Ray started last, another user's maybe.
export RAY_ADDRESS=$node_ip:$gcs_port
pgids=""
start_node() {  # name, args...: one `ray start --block` in a new session; its pid is its process group
    # Each node its own temp dir: nodes sharing one would share runtime_resources/, and one node's
    # runtime-env agent deletes a job's working_dir that a job on another node is running in.
    local name=$1; shift
    mkdir -p "$state/ray/$name"
    setsid "$ray_bin" start "${common[@]}" --temp-dir "$state/ray/$name" "$@" > "$state/logs/$name.log" 2>&1 < /dev/null &
    pgids="$pgids $!"
}
# shellcheck disable=SC2046
start_node head --head --port "$gcs_port" --dashboard-host 127.0.0.1 --dashboard-port "$dashboard_port" \
    --ray-client-server-port "$client_port" --num-cpus "$head_cpus" --num-gpus 0 $(node_ports 0)
head_pid=${pgids# }
cat > "$state/cluster.env" <<ENV
GCS_ADDRESS=$node_ip:$gcs_port
DASHBOARD_URL=http://127.0.0.1:$dashboard_port
STORAGE=$state/storage
PGIDS="$pgids"
ENV

wait_for_nodes() {  # count: until the cluster shows that many live nodes (or 120 s)
    "$python" - "$node_ip:$gcs_port" "$1" "$head_pid" <<'PY'
import os, socket, sys, time
address, count, head_pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
deadline = time.time() + 120
while True:  # ray.init on a GCS that is not up retries for minutes: wait for its port first
    try:
        os.kill(head_pid, 0)
    except OSError:
        sys.exit("the head's ray start exited")
    try:
        socket.create_connection((address.rsplit(":", 1)[0], int(address.rsplit(":", 1)[1])), timeout=1).close()
        break
    except OSError:
        if time.time() > deadline:
            sys.exit("the head's GCS never listened")
        time.sleep(0.5)
import ray
ray.init(address=address, logging_level="ERROR", log_to_driver=False)
while time.time() < deadline:
    if sum(1 for n in ray.nodes() if n["Alive"]) >= count:
        sys.exit(0)
    time.sleep(0.5)
sys.exit(f"only {sum(1 for n in ray.nodes() if n['Alive'])} of {count} nodes came up")
PY
}
if ! wait_for_nodes 1 2>> "$state/logs/start.log"; then
    echo "start.sh: error: the head did not start (see $state/logs/head.log); stop with cluster/local/stop.sh -d $state" >&2
    exit 1
fi
for ((i = 1; i <= workers; i++)); do
    # shellcheck disable=SC2046
    start_node "worker$i" --address "$node_ip:$gcs_port" --num-cpus "$worker_cpus" --num-gpus "$worker_gpus" $(node_ports "$i")
done
sed -i "s/^PGIDS=.*/PGIDS=\"$pgids\"/" "$state/cluster.env"
if ! wait_for_nodes $((workers + 1)) 2>> "$state/logs/start.log"; then
    echo "start.sh: error: not every worker node joined (see $state/logs/); stop with cluster/local/stop.sh -d $state" >&2
    exit 1
fi

cat > "$state/env.sh" <<ENV
export RAY_ADDRESS=http://127.0.0.1:$dashboard_port
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH
export CVRAY_STORAGE=$state/storage
ENV
cat <<MSG
Ray cluster up: 1 head ($head_cpus CPUs) + $workers worker node(s) ($worker_cpus CPUs, $worker_gpus GPUs each), all on loopback ($node_ip; dashboard 127.0.0.1)
  GCS address     $node_ip:$gcs_port          (ray.init / --address)
  dashboard       http://127.0.0.1:$dashboard_port     (ray job submit --address)
  shared storage  $state/storage     (pass as --storage-path)
  token auth on: clients need RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH
  source $state/env.sh    # sets all of the above for ray job submit / ray status
  cluster/local/stop.sh -d $state    # stops exactly these nodes
MSG
