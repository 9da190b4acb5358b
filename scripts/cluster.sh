#!/usr/bin/env bash
# The cluster on one machine: PostgreSQL, three `athena-sandbox serve` nodes sharing this
# machine's Docker engine, and HAProxy in front of them, all on loopback.
#
#   bash scripts/cluster.sh up          start it all (tearing down a running one first); the last
#                                       two lines printed are ATHENA_URL=... and ATHENA_TOKEN=...
#   bash scripts/cluster.sh down        stop HAProxy and the nodes; nothing of them is left running
#   bash scripts/cluster.sh test        up, the cluster tests against the load balancer, down
#   bash scripts/cluster.sh start-node node-N   (re)start one node and wait until it is ready
#   bash scripts/cluster.sh status      what runs
#   bash scripts/cluster.sh dir         the state directory (below)
#
#   CLUSTER_PORT   the load balancer's port (default 8800); node N listens on CLUSTER_PORT + N
#   CLUSTER_NODES  how many nodes (default 3)
#   CLUSTER_DIR    state: pid files, logs, the tokens file, haproxy.cfg (default
#                  /run/athena-sandbox/cluster as root, else under XDG_RUNTIME_DIR or ~/.cache;
#                  not in the project: the research policy mounts the project into sandboxes)
#
# The store is the database athena_cluster of the PostgreSQL that `make setup` starts (role
# athena), dropped and created again by every `up`; `down` leaves it (and the logs) for a look
# afterwards. The nodes run Docker only (ATHENA_SANDBOX_BACKENDS=docker unless set) and inherit
# the rest of the environment (ATHENA_* settings). Run from `make cluster-up`, which first makes
# sure of the machine, the virtualenv and the images.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

port=${CLUSTER_PORT:-8800}
count=${CLUSTER_NODES:-3}
if [ "$(id -u)" = 0 ]; then
  state=${CLUSTER_DIR:-/run/athena-sandbox/cluster}
else
  state=${CLUSTER_DIR:-${XDG_RUNTIME_DIR:-$HOME/.cache}/athena-sandbox/cluster}
fi
bin=$repo/.venv/bin
grace=10
pg_role=${ATHENA_PG_ROLE:-athena}
pg_password=${ATHENA_PG_PASSWORD:-athena}
database=athena_cluster
export ATHENA_SANDBOX_BACKENDS=${ATHENA_SANDBOX_BACKENDS:-docker}

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

nodes() { seq -f 'node-%g' 1 "$count"; }
node_port() { echo $((port + ${1#node-})); }

# alive PIDFILE WORD: the pid in the file runs a program whose command line holds WORD (a pid
# file left by a killed process may name a pid reused since).
alive() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -q -- "$2"
}

pg_port() {
  pg_lsclusters --no-header | awk '$4 == "online" { print $3; exit }'
}

db_url() {
  echo "postgresql://$pg_role:$pg_password@127.0.0.1:$(pg_port)/$database"
}

# A fresh database for the cluster: the role may create databases (scripts/ensure-postgres.sh).
fresh_database() {
  local pg
  [ -n "$(pg_port)" ] || die "no PostgreSQL runs here: run make setup (or make postgres-up) first"
  pg=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$(pg_port)" -U "$pg_role" -d postgres)
  PGPASSWORD=$pg_password PGOPTIONS='-c client_min_messages=warning' "${pg[@]}" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" \
    -c "CREATE DATABASE $database" ||
    die "cannot create the database $database as role $pg_role (make setup makes the role)"
}

port_taken() { curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/"; }

# start_node ID: in the background, in a session of its own (a Ctrl-C in the terminal that
# started it does not reach it), with its own log and pid file; started from a subshell, so it
# is no job of this shell's (which would report its death when a test kills it).
start_node() {
  local id=$1 node_port
  node_port=$(node_port "$id")
  alive "$state/$id.pid" "--node-id $id" && die "$id already runs (pid $(cat "$state/$id.pid"))"
  port_taken "$node_port" && die "something already listens on 127.0.0.1:$node_port ($id's port)"
  (
    setsid "$bin/athena-sandbox" serve --node-id "$id" --host 127.0.0.1 --port "$node_port" \
      --db "$(cat "$state/db-url")" --tokens "$state/tokens.json" --grace "$grace" \
      </dev/null >>"$state/$id.log" 2>&1 &
    echo $! >"$state/$id.pid"
  )
}

# wait_ready ID: until its /readyz answers 200 (60 s at most; a node that exits fails at once).
wait_ready() {
  local id=$1 url
  url="http://127.0.0.1:$(node_port "$id")/readyz"
  for _ in $(seq 1 600); do
    # kill -0, not alive: a process just forked shows the shell's command line until it execs.
    if ! kill -0 "$(cat "$state/$id.pid")" 2>/dev/null; then
      tail -n 30 "$state/$id.log" >&2 || true
      die "$id exited while starting (log: $state/$id.log)"
    fi
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url")" = 200 ] && return 0
    sleep 0.1
  done
  tail -n 30 "$state/$id.log" >&2 || true
  die "$id did not become ready within 60 s (log: $state/$id.log)"
}

haproxy_config() {
  local rules="" servers="" id
  for id in $(nodes); do
    rules+="    use-server $id if { path_beg /v1/sessions/$id. }"$'\n'
    servers+="    server $id 127.0.0.1:$(node_port "$id")"$'\n'
  done
  # awk, not sed: the replacements span lines.
  awk -v state="$state" -v port="$port" -v rules="${rules%$'\n'}" -v servers="${servers%$'\n'}" '
    { gsub(/@STATE@/, state); gsub(/@PORT@/, port) }
    /^@SESSION_RULES@$/ { print rules; next }
    /^@SERVERS@$/ { print servers; next }
    { print }' deploy/haproxy/haproxy.cfg.in >"$state/haproxy.cfg"
}

start_haproxy() {
  command -v haproxy >/dev/null || die "haproxy is not installed: run make setup (Debian's haproxy)"
  port_taken "$port" && die "something already listens on 127.0.0.1:$port (CLUSTER_PORT)"
  haproxy_config
  haproxy -q -c -f "$state/haproxy.cfg" || die "HAProxy refuses $state/haproxy.cfg"
  haproxy -f "$state/haproxy.cfg" || die "HAProxy did not start"
  # Its health checks need two passes (rise 2, inter 1s) before a node takes traffic.
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/healthz")" \
      = 200 ] && return 0
    sleep 0.1
  done
  die "HAProxy on 127.0.0.1:$port does not reach a node"
}

# stop PIDFILE WORD SECONDS: SIGTERM, then gone PIDFILE WORD SECONDS.
stop() {
  if alive "$1" "$2"; then kill -TERM "$(cat "$1")" 2>/dev/null || true; fi
  gone "$@"
}

# gone PIDFILE WORD SECONDS: wait up to SECONDS for the process to exit, then SIGKILL it; the
# pid file goes. (A second SIGTERM would not do: a draining server takes it for "now".)
gone() {
  local pidfile=$1 word=$2 seconds=$3
  for _ in $(seq 1 $((seconds * 10))); do
    alive "$pidfile" "$word" || break
    sleep 0.1
  done
  if alive "$pidfile" "$word"; then
    log "$word did not stop within $seconds s: SIGKILL"
    kill -KILL "$(cat "$pidfile")" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# The sandbox containers of a node: its label (every node's container carries it).
containers_of() { docker ps -aq --filter "label=athena.owner.node=$1"; }

# wait_gone CMD ARGS...: up to 10 s for CMD to print nothing; then print what it prints.
wait_gone() {
  for _ in $(seq 1 100); do
    [ -z "$("$@")" ] && return 0
    sleep 0.1
  done
  "$@"
}

# After the nodes exit their watchdogs remove what they left within about a second; what is
# still there after 10 s is removed here, and said (a node should not leave any).
remove_containers() {
  local id left
  for id in $(nodes); do
    left=$(wait_gone containers_of "$id")
    if [ -n "$left" ]; then
      leftovers=1
      log "$id left containers behind; removing them: $(echo "$left" | tr '\n' ' ')"
      # shellcheck disable=SC2086  # one word per container id
      docker rm -f $left >/dev/null
    fi
  done
}

# The pids of the container watchdogs of a node process (orchestrator/backends/docker/watcher.py
# names its owner's pid in its arguments); they exit once their owner has.
watchdogs_of() { pgrep -f "docker/watcher\.py .*athena\.owner\.pid=$1( |\$)" || true; }

# After the nodes exit, their watchdogs go within seconds; one still there after 10 s is killed
# (by its pid), and said.
end_watchdogs() {
  local pid left
  for pid in "$@"; do
    left=$(wait_gone watchdogs_of "$pid")
    if [ -n "$left" ]; then
      leftovers=1
      log "watchdogs of node pid $pid still run; killing them: $(echo "$left" | tr '\n' ' ')"
      # shellcheck disable=SC2086  # one word per pid
      kill -KILL $left 2>/dev/null || true
    fi
  done
}

leftovers=0
down() {
  local id pids=()
  [ -d "$state" ] || return 0
  stop "$state/haproxy.pid" haproxy 5
  # All nodes drain at once: SIGTERM to each, then wait (grace + 10 s) for each.
  for id in $(nodes); do
    if alive "$state/$id.pid" "--node-id $id"; then
      pids+=("$(cat "$state/$id.pid")")
      kill -TERM "${pids[-1]}"
    fi
  done
  for id in $(nodes); do gone "$state/$id.pid" "--node-id $id" $((grace + 10)); done
  remove_containers
  end_watchdogs "${pids[@]}"
  if [ "$leftovers" = 1 ]; then
    log "down: HAProxy and the nodes stopped; what they left is removed (see above)"
  else
    log "down: HAProxy and the nodes stopped, nothing of theirs left (database $database kept)"
  fi
}

running() {
  local id
  alive "$state/haproxy.pid" haproxy && return 0
  for id in $(nodes); do alive "$state/$id.pid" "--node-id $id" && return 0; done
  return 1
}

up() {
  local id token
  if running; then
    log "a cluster is already up: tearing it down first"
    down
  fi
  mkdir -p -m 700 "$state"
  rm -f "$state"/*.log "$state/tokens.json"
  fresh_database
  db_url >"$state/db-url"
  token=$("$bin/athena-sandbox" tokens add cluster --file "$state/tokens.json" \
    --policies strict,research)
  # All at once: the store's migrations and the node directory's table take advisory locks.
  for id in $(nodes); do start_node "$id"; done
  for id in $(nodes); do wait_ready "$id"; done
  start_haproxy
  printf 'ATHENA_URL=http://127.0.0.1:%s\nATHENA_TOKEN=%s\n' "$port" "$token" >"$state/env"
  log "up: $count nodes on 127.0.0.1:$((port + 1))-$((port + count)) behind HAProxy; state in $state"
  cat "$state/env"
}

status() {
  local id
  for id in haproxy $(nodes); do
    local word=$id
    [ "$id" = haproxy ] || word="--node-id $id"
    if alive "$state/$id.pid" "$word"; then
      echo "$id: running (pid $(cat "$state/$id.pid"))"
    else
      echo "$id: stopped"
    fi
  done
}

# The cluster tests: the remote contract suite first (every node healthy), then tests/cluster
# (tenant isolation, then the load test that kills and drains nodes), then down, which must
# find no container of the nodes left. Down always runs, even when a step fails or on Ctrl-C.
cluster_test() {
  local failed=0 started=$SECONDS
  # The contract suite's canary: a secret in the nodes' environment bash code must not see.
  export ATHENA_CANARY_SECRET=canary-7f3a
  trap 'down' EXIT
  up
  set -a
  # shellcheck disable=SC1091  # written by up
  . "$state/env"
  set +a
  export ATHENA_CLUSTER_DIR=$state
  # (A plain pytest leaves tests/cluster out; named, it is collected.)
  "$bin/pytest" -q tests/integration/test_contract.py -k remote || failed=1
  "$bin/pytest" -q -rP tests/cluster || failed=1
  trap - EXIT
  down
  if [ "$leftovers" = 1 ]; then
    log "FAILED: containers of the nodes were left after they stopped"
    failed=1
  fi
  log "cluster-test $([ "$failed" = 0 ] && echo passed || echo FAILED) in $((SECONDS - started)) s"
  return "$failed"
}

case ${1:-} in
  up)
    trap 'down' EXIT  # a failed start leaves nothing running
    up
    trap - EXIT
    ;;
  down) down ;;
  test) cluster_test ;;
  start-node)
    [ -n "${2:-}" ] || die "usage: bash scripts/cluster.sh start-node node-N"
    start_node "$2"
    wait_ready "$2"
    ;;
  status) status ;;
  dir) echo "$state" ;;
  *) echo "usage: bash scripts/cluster.sh up|down|test|start-node node-N|status|dir" >&2; exit 2 ;;
esac
