#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine; install and start one if it does not.
# Safe to run repeatedly. Copes with a stale /var/run/docker.pid left by a killed dockerd.
set -euo pipefail

log() { printf '[ensure-docker] %s\n' "$*" >&2; }

# Quiet when there is nothing to do: make runs this before every image build.
if docker info >/dev/null 2>&1; then
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
containerd_pidfile=/var/run/docker/containerd/containerd.pid
# A pid file whose process is gone, is a zombie, or is another program is stale: a killed
# dockerd leaves its own and its containerd's behind, and the pids may since be reused.
alive_as() {  # alive_as PIDFILE NAME
  local pid
  pid=$(cat "$1" 2>/dev/null || true)
  [ -n "$pid" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
  ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

# dockerd reuses the containerd its pid file names: a dead one makes it wait forever.
if [ -f "$containerd_pidfile" ] && ! alive_as "$containerd_pidfile" containerd; then
  log "Removing stale $containerd_pidfile."
  rm -f "$containerd_pidfile"
fi

if alive_as "$pidfile" dockerd; then
  log "dockerd (pid $(cat "$pidfile")) is running but does not answer yet; waiting for it."
else
  if [ -f "$pidfile" ]; then
    log "Removing stale $pidfile (pid $(cat "$pidfile" 2>/dev/null || echo ?) is not a live dockerd)."
    rm -f "$pidfile"
  fi
  log "Starting dockerd in the background (log: /var/log/athena-dockerd.log)..."
  # setsid: the engine must not die with the shell or make target that started it.
  setsid nohup dockerd >>/var/log/athena-dockerd.log 2>&1 </dev/null &
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
