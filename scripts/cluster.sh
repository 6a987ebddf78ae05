#!/usr/bin/env bash
# Starts or stops a local three-node cluster in the background, with the kv-db command line:
#   scripts/cluster.sh start          # ./ondisk must exist (make ondisk)
#   scripts/cluster.sh stop
#   scripts/cluster.sh stop-node 2    # stop one node (to try fault tolerance) ...
#   scripts/cluster.sh start-node 2   # ... and bring it back
# Logs and pid files go under example-data/. `stop` signals exactly the processes `start` began.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:32379
HTTP_PORTS=(12380 22380 32380)
RUN_DIR=example-data
WAIT_SECONDS=30

pid_file() { echo "$RUN_DIR/cluster-node$1.pid"; }

running() { [ -f "$(pid_file "$1")" ] && kill -0 "$(cat "$(pid_file "$1")")" 2>/dev/null; }

start_node() {
    [ -x ./ondisk ] || { echo "./ondisk is missing: run 'make ondisk' first" >&2; exit 1; }
    mkdir -p "$RUN_DIR"
    if running "$1"; then
        echo "node $1 is already running (pid $(cat "$(pid_file "$1")"))"
        return
    fi
    ./ondisk --id "$1" --cluster "$CLUSTER" --port "${HTTP_PORTS[$(($1 - 1))]}" \
        --data-dir "$RUN_DIR" --no-repl >>"$RUN_DIR/cluster-node$1.out" 2>&1 &
    echo $! >"$(pid_file "$1")"
}

start() {
    for id in 1 2 3; do start_node "$id"; done
    local deadline=$((SECONDS + WAIT_SECONDS))
    until curl -fsS "http://127.0.0.1:${HTTP_PORTS[0]}/v1/status" 2>/dev/null | grep -q '"leader":[0-9]'; do
        for id in 1 2 3; do
            running "$id" || { echo "node $id exited; see $RUN_DIR/cluster-node$id.out" >&2; stop; exit 1; }
        done
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "no leader elected within ${WAIT_SECONDS}s; see $RUN_DIR/cluster-node*.out" >&2
            stop
            exit 1
        fi
        sleep 0.2
    done
    echo "cluster is up; HTTP API at:"
    for port in "${HTTP_PORTS[@]}"; do echo "  http://127.0.0.1:$port"; done
}

stop_node() {
    local file pid
    file=$(pid_file "$1")
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
        echo "stopped node $1 (pid $pid)"
    fi
    rm -f "$file"
}

stop() {
    for id in 1 2 3; do stop_node "$id"; done
}

node_id() {
    case "${1:-}" in
        1 | 2 | 3) echo "$1" ;;
        *) echo "usage: $0 start-node|stop-node 1|2|3" >&2; exit 2 ;;
    esac
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    start-node) start_node "$(node_id "${2:-}")" ;;
    stop-node) stop_node "$(node_id "${2:-}")" ;;
    *) echo "usage: $0 start|stop|start-node N|stop-node N" >&2; exit 2 ;;
esac
