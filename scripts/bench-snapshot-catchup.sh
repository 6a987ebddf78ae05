#!/usr/bin/env bash
# Measures how long a follower takes to catch up from a snapshot of a large state, and the peak
# memory of the leader and the follower while it does. Not part of CI.
#
#   scripts/bench-snapshot-catchup.sh [STATE_MIB] [VALUE_KIB]    # defaults: 1024 MiB, 16 KiB values
#
# Starts a three-node cluster on loopback in a temporary directory, SIGKILLs node 3, loads
# STATE_MIB of data through the HTTP API (so the leader snapshots and compacts its log past
# node 3), restarts node 3 and times until it has installed a snapshot and applied everything the
# leader committed. Also measures the disk's sequential write rate with dd. Stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE_MIB=${1:-1024}
VALUE_KIB=${2:-16}
BIN=${ONDISK_BIN:-./ondisk}
[ -x "$BIN" ] || { echo "$BIN is missing: run 'make ondisk' first" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ondisk-bench-XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
RAFT=() HTTP=()
for _ in 1 2 3; do RAFT+=("127.0.0.1:$(free_port)"); HTTP+=("127.0.0.1:$(free_port)"); done
CLUSTER=$(IFS=,; echo "${RAFT[*]}")

start_node() {
    # Snapshots every 1000 entries, so the load compacts the log far past the stopped node and
    # it can only catch up by installing a snapshot.
    "$BIN" --nodeid "$1" --cluster "$CLUSTER" --http "${HTTP[$(($1 - 1))]}" --data-dir "$WORK/data" \
        --snapshot-entries 1000 --compaction-overhead 100 --no-repl >>"$WORK/node$1.out" 2>&1 &
    PIDS[$1]=$!
}
status() { curl -fsS "http://${HTTP[$(($1 - 1))]}/v1/status"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
peak_rss_mib() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
rss_mib() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

for id in 1 2 3; do start_node "$id"; done
deadline=$((SECONDS + 60))
until status 1 2>/dev/null | grep -q '"leader":[0-9]'; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "no leader" >&2; exit 1; }
    sleep 0.2
done
kill -KILL "${PIDS[3]}"; wait "${PIDS[3]}" 2>/dev/null || true

# Node 3 may have been the leader: wait for the other two to agree on one of themselves.
deadline=$((SECONDS + 60))
until LEADER=$(status 1 2>/dev/null | json '["leader"]') && { [ "$LEADER" = 1 ] || [ "$LEADER" = 2 ]; }; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "no leader among nodes 1 and 2" >&2; exit 1; }
    sleep 0.2
done
COUNT=$((STATE_MIB * 1024 / VALUE_KIB))
echo "loading $STATE_MIB MiB ($COUNT values of $VALUE_KIB KiB) through node $LEADER..."
load_started=$SECONDS
python3 - "${HTTP[$((LEADER - 1))]}" "$COUNT" "$VALUE_KIB" <<'PY'
import http.client, os, sys, threading
host, count, value_kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
next_index, lock = [0], threading.Lock()
def worker():
    conn = http.client.HTTPConnection(host, timeout=60)
    while True:
        with lock:
            i = next_index[0]; next_index[0] += 1
        if i >= count:
            return
        # Random bytes: RocksDB compresses, and a compressible state would flatter every figure.
        body = os.urandom(value_kib * 1024)
        conn.request("PUT", "/v1/kv/bench-%09d" % i, body)
        response = conn.getresponse(); response.read()
        if response.status != 204:
            raise SystemExit("PUT %d answered %d" % (i, response.status))
threads = [threading.Thread(target=worker) for _ in range(16)]
for t in threads: t.start()
for t in threads: t.join()
PY
echo "loaded in $((SECONDS - load_started)) s"
LEADER_PID=${PIDS[$LEADER]}
leader_status=$(status "$LEADER")
COMMITTED=$(echo "$leader_status" | json '["committed"]')
echo "leader: committed $COMMITTED, snapshot $(echo "$leader_status" | json '["last_snapshot_index"]'), first log index $(echo "$leader_status" | json '["first_log_index"]')"
leader_rss_before=$(rss_mib "$LEADER_PID")

started=$(date +%s.%N)
start_node 3
# Polled every 10 ms over one connection: a poll that starts processes (curl, a JSON parser)
# would add a tenth of a second or more to a catch-up that takes about a second.
seconds=$(python3 - "${HTTP[2]}" "$COMMITTED" "$started" <<'PY'
import http.client, json, sys, time
host, committed, started = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
conn = None
while time.time() < started + 1800:
    try:
        conn = conn or http.client.HTTPConnection(host, timeout=5)
        conn.request("GET", "/v1/status")
        status = json.loads(conn.getresponse().read())
        if status["snapshots_installed"] >= 1 and status["last_applied"] >= committed:
            print(round(time.time() - started, 2))
            sys.exit(0)
    except (OSError, http.client.HTTPException, ValueError, KeyError):
        conn = None
    time.sleep(0.01)
sys.exit("node 3 did not catch up within 30 minutes")
PY
)
state_bytes=$(du -sb "$WORK/data/node3" | cut -f1)

dd if=/dev/zero of="$WORK/ddtest" bs=1M count=1024 conv=fdatasync 2>"$WORK/dd.err"
disk_rate=$(grep -oE '[0-9.]+ [MG]B/s' "$WORK/dd.err" | tail -1)

echo
echo "| figure | value |"
echo "| --- | --- |"
echo "| state loaded | $STATE_MIB MiB in $COUNT values |"
echo "| follower catch-up (restart to applied = leader's commit, snapshot installed) | ${seconds} s |"
echo "| follower data directory after catch-up | $((state_bytes / 1048576)) MiB |"
echo "| transfer + install rate (of the loaded values) | $(python3 -c "print(round($STATE_MIB / $seconds))") MiB/s |"
echo "| disk sequential write (dd 1 GiB, fdatasync) | $disk_rate |"
echo "| leader RSS before / peak (whole run) | ${leader_rss_before} MiB / $(peak_rss_mib "$LEADER_PID") MiB |"
echo "| follower peak RSS (whole catch-up) | $(peak_rss_mib "${PIDS[3]}") MiB |"
echo
echo "node 3's log of the catch-up (restart at $(date -u -d "@$started" +%H:%M:%S.%N | cut -c1-15)):"
grep -E "snapshot" "$WORK/data/node3/ondisk.log" | sed 's/^/    /'

