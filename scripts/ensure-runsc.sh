#!/usr/bin/env bash
# Install gVisor's runsc (Debian's package) and register it with the Docker engine as two
# runtimes: `runsc` (ptrace platform; its KVM platform hangs here) and `runsc-nonet` (the same,
# with --network=none, for runs without a network). Safe to run repeatedly; needs root.
set -euo pipefail

log() { printf '[ensure-runsc] %s\n' "$*" >&2; }

if ! command -v runsc >/dev/null 2>&1; then
  log "Installing runsc from Debian's packages..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq runsc >/dev/null
fi

runsc_path=$(command -v runsc)
config=/etc/docker/daemon.json
mkdir -p /etc/docker
python3 - "$config" "$runsc_path" <<'PY'
import json, os, sys
path, runsc = sys.argv[1], sys.argv[2]
config = {}
if os.path.exists(path) and os.path.getsize(path):
    with open(path) as handle:
        config = json.load(handle)
runtimes = config.setdefault("runtimes", {})
runtimes["runsc"] = {"path": runsc, "runtimeArgs": ["--platform=ptrace"]}
runtimes["runsc-nonet"] = {"path": runsc, "runtimeArgs": ["--platform=ptrace", "--network=none"]}
with open(path + ".tmp", "w") as handle:
    json.dump(config, handle, indent=2)
os.replace(path + ".tmp", path)
PY

if docker info >/dev/null 2>&1; then
  if ! docker info --format '{{json .Runtimes}}' | grep -q runsc-nonet; then
    log "Asking dockerd to reload its runtimes..."
    kill -HUP "$(cat /var/run/docker.pid)"
    for _ in $(seq 1 20); do
      docker info --format '{{json .Runtimes}}' | grep -q runsc-nonet && break
      sleep 0.5
    done
  fi
  docker info --format '{{json .Runtimes}}' | grep -q runsc-nonet || { log "dockerd did not load runsc"; exit 1; }
  log "runsc is registered: $(runsc --version 2>/dev/null | head -1)"
else
  log "runsc is configured in $config; start dockerd to use it (make docker-up)."
fi
