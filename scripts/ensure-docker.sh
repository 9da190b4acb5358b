#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine; install and start one if it does not.
# Safe to run repeatedly. Copes with a stale /var/run/docker.pid left by a killed dockerd.
set -euo pipefail

log() { printf '[ensure-docker] %s\n' "$*" >&2; }

if docker info >/dev/null 2>&1; then
  log "Docker engine already answers."
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  log "No Docker engine answers and starting one needs root: run 'sudo make docker-up'."
  exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
  log "Installing docker.io from Debian's packages..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi

pidfile=/var/run/docker.pid
if [ -f "$pidfile" ]; then
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    log "dockerd (pid $pid) is running but does not answer yet; waiting for it."
  else
    log "Removing stale $pidfile (pid ${pid:-?} is not running)."
    rm -f "$pidfile"
  fi
fi

if ! { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }; then
  log "Starting dockerd in the background (log: /var/log/athena-dockerd.log)..."
  # setsid: the engine must not die with the shell or make target that started it.
  setsid nohup dockerd >/var/log/athena-dockerd.log 2>&1 </dev/null &
fi

for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then
    log "Docker engine answers: $(docker version --format '{{.Server.Version}}' 2>/dev/null)."
    exit 0
  fi
  sleep 0.5
done
log "dockerd did not answer within 60 s; its log says:"
tail -n 30 /var/log/athena-dockerd.log >&2 || true
exit 1
