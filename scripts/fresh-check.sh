#!/usr/bin/env bash
# Prove the README's two commands on a clean Debian 12: build a bare bookworm image with
# debootstrap (no registry needed), start it as a privileged container that runs its own Docker
# engine, copy a clean source tree in, and run `make demo` then `make test` in it as root,
# printing the wall time of each and, per output line, the seconds since the command started.
# Everything it made (container, volume, image, temp dirs) is removed at the end, pass or fail.
#
#   bash scripts/fresh-check.sh [SOURCE_DIR]     (make fresh-check [FRESH_SRC=dir])
#
# SOURCE_DIR defaults to a `git clone` of this checkout's HEAD. Its .venv and node_modules are
# never copied. A `shared/` directory beside the source (the RedCode-Exec corpus, as CI lays it
# out) is copied beside it in the container too. Needs root, a Docker engine and debootstrap.
#
#   FRESH_MIRROR     Debian mirror for debootstrap (default: the one orchestrator/images.py uses)
#   FRESH_LOG_DIR    keep the logs (debootstrap, each make target) here (default: removed)
#   FRESH_KEEP=1     keep the container, volume and image for inspection (prints how to remove)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

# The fresh box: what a new user's Debian 12 has before reading the README (Python and Node
# present, nothing else): debootstrap's minbase plus these packages.
FRESH_PACKAGES=python3,python3-venv,nodejs,make,git,ca-certificates
SUITE=bookworm
# The mirror the project's own base image is made from (orchestrator/images.py DEBIAN_MIRROR).
MIRROR=${FRESH_MIRROR:-$(sed -n 's/^DEBIAN_MIRROR = "\(.*\)"$/\1/p' "$repo/orchestrator/images.py")}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

say() { printf '[fresh-check] %s\n' "$*"; }
die() { say "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (a privileged container and debootstrap): sudo make fresh-check"
docker info >/dev/null 2>&1 || die "no Docker engine answers: sudo bash scripts/setup.sh demo"
command -v debootstrap >/dev/null || die "debootstrap is missing: sudo bash scripts/setup.sh demo"
command -v capsh >/dev/null || die "capsh is missing: sudo apt-get install libcap2-bin"

id=athena-fresh-check-$$
work=$(mktemp -d /var/tmp/athena-fresh-check.XXXXXX)
logs=${FRESH_LOG_DIR:-$work/logs}
mkdir -p "$logs"
image=$id:$SUITE
container=$id
volume=$id-docker

cleanup() {
  local status=$?
  if [ "${FRESH_KEEP:-0}" = 1 ]; then
    say "kept: docker rm -f $container; docker volume rm $volume; docker rmi $image; rm -rf $work"
    exit "$status"
  fi
  say "removing the container, its engine's volume, the image and $work"
  # A graceful stop lets the inner engine and PostgreSQL shut down; rm -f kills what is left.
  docker stop -t 20 "$container" >/dev/null 2>&1 || true
  docker rm -f "$container" >/dev/null 2>&1 || true
  docker volume rm -f "$volume" >/dev/null 2>&1 || true
  docker rmi -f "$image" >/dev/null 2>&1 || true
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------- the source
if [ -n "${1:-}" ]; then
  src=$(cd "$1" && pwd)
else
  say "cloning $repo (HEAD) into $work/src"
  git clone --quiet "$repo" "$work/src"
  src=$work/src
fi
shared=$(dirname "$src")/shared
[ -d "$shared" ] || shared=$(dirname "$repo")/shared

# ---------------------------------------------------------------------------- the image
say "debootstrap --variant=minbase --include=$FRESH_PACKAGES $SUITE from $MIRROR (a few minutes)"
started=$(date +%s)
if ! debootstrap --variant=minbase --include="$FRESH_PACKAGES" "$SUITE" "$work/rootfs" "$MIRROR" \
  >"$logs/debootstrap.log" 2>&1; then
  tail -n 30 "$logs/debootstrap.log" >&2
  die "debootstrap failed"
fi
# Sources as a Debian 12 installation has them; no package lists and no .deb files inside, so
# the first apt-get in the box fetches its own (as on a new machine).
cat >"$work/rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://security.debian.org/debian-security $SUITE-security main
EOF
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
tar -C "$work/rootfs" -c . | docker import --change 'CMD ["sleep", "infinity"]' - "$image" >/dev/null
rm -rf "$work/rootfs"
say "image $image ready in $(($(date +%s) - started)) s"

# ---------------------------------------------------------------------------- the machine
# Capabilities this kernel withholds even from root (bits absent from the bounding set), named
# as Docker names them: SYS_RESOURCE on a machine whose init dropped it.
withheld_caps() {
  local bounding last bit names=()
  bounding=$((16#$(awk '/^CapBnd/ { print $2 }' /proc/self/status)))
  last=$(cat /proc/sys/kernel/cap_last_cap)
  for bit in $(seq 0 "$last"); do
    if [ $(((bounding >> bit) & 1)) = 0 ]; then
      names+=("$(capsh --decode=$(printf '%x' $((1 << bit))) | sed 's/.*=cap_//' | tr a-z A-Z)")
    fi
  done
  echo "${names[*]}"
}

# The box runs its own dockerd, gVisor and bubblewrap, so it gets what --privileged gives.
# /var/lib/docker is a fresh volume (on the host's own filesystem: overlay2 cannot sit on the
# container's overlay). --init reaps what the daemons started by `docker exec` leave behind.
run_args=(--detach --init --name "$container" --hostname fresh-debian12
  --shm-size 1g --volume "$volume:/var/lib/docker")
withheld=$(withheld_caps)
if [ -z "$withheld" ]; then
  run_args+=(--privileged)
else
  # --privileged asks runc for every capability and fails ("unable to apply caps: operation not
  # permitted") when the kernel withholds one. The same grants, spelled out, minus those:
  # capabilities, no seccomp/AppArmor/masked /proc paths, every device, cgroups writable
  # (the engine inside makes its containers' cgroups), and /sys remounted writable below.
  say "this kernel withholds $withheld from root: a box with every other capability instead of --privileged"
  run_args+=(--cap-add ALL --security-opt seccomp=unconfined --security-opt apparmor=unconfined
    --security-opt systempaths=unconfined --device-cgroup-rule 'a *:* rwm'
    --volume /sys/fs/cgroup:/sys/fs/cgroup:rw)
  for cap in $withheld; do run_args+=(--cap-drop "$cap"); done
fi
# This workplace's machines carry the CPU build of torch as a local wheel (pip's find-links);
# a new machine here has it too, and without it pip fetches torch with gigabytes of CUDA wheels.
if [ -d /opt/wheels ]; then
  run_args+=(--volume /opt/wheels:/opt/wheels:ro --env PIP_FIND_LINKS=/opt/wheels)
fi
# This workplace reaches PyPI and npm through a TLS proxy whose CA its machines trust (in
# /usr/local/share/ca-certificates); the box gets the same CAs and the variables that make pip
# and Node read the system bundle instead of their own.
local_cas=$(find /usr/local/share/ca-certificates -name '*.crt' 2>/dev/null | head -n 1)
if [ -n "$local_cas" ]; then
  bundle=/etc/ssl/certs/ca-certificates.crt
  run_args+=(--env "PIP_CERT=$bundle" --env "NODE_EXTRA_CA_CERTS=$bundle"
    --env "REQUESTS_CA_BUNDLE=$bundle" --env "SSL_CERT_FILE=$bundle")
fi
docker volume create "$volume" >/dev/null
docker run "${run_args[@]}" "$image" >/dev/null
[ -z "$withheld" ] || docker exec "$container" mount -o remount,rw /sys
if [ -n "$local_cas" ]; then
  tar -C /usr/local/share/ca-certificates -c . |
    docker exec -i "$container" tar -C /usr/local/share/ca-certificates -x
  docker exec "$container" update-ca-certificates >/dev/null 2>&1
fi
docker exec "$container" mkdir -p /fresh/athena-sandbox
tar -C "$src" --exclude=./.venv --exclude=./node_modules -c . |
  docker exec -i "$container" tar -C /fresh/athena-sandbox -x
if [ -d "$shared" ]; then
  tar -C "$shared" -c . | docker exec -i "$container" sh -c 'mkdir -p /fresh/shared && tar -C /fresh/shared -x'
fi
say "box: $(docker exec "$container" sh -c '. /etc/os-release; echo "$PRETTY_NAME"'), $(docker exec "$container" dpkg-query -W -f '.' | wc -c) packages; source: $src"

# Run one make target in the box; every line is prefixed with the seconds since it started.
timed_make() {  # timed_make TARGET
  local target=$1 begin status
  say "make $target (log: $logs/make-$target.log)"
  begin=$(date +%s)
  set +e
  docker exec "$container" bash -c "cd /fresh/athena-sandbox && make $target 2>&1" |
    while IFS= read -r line; do printf '%5ds %s\n' "$(($(date +%s) - begin))" "$line"; done |
    tee "$logs/make-$target.log"
  status=${PIPESTATUS[0]}
  set -e
  times+=("make $target: exit $status, $(($(date +%s) - begin)) s wall")
  say "${times[-1]}"
  return "$status"
}

times=()
overall=0
timed_make demo || overall=1
if [ "$overall" = 0 ]; then
  timed_make test || overall=1
fi
say "summary (2 cores, $(. /etc/os-release; echo "$PRETTY_NAME"), Docker $(docker version --format '{{.Server.Version}}')):"
printf '[fresh-check]   %s\n' "${times[@]}"
exit "$overall"
