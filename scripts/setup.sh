#!/usr/bin/env bash
# Install and start what `make demo` or `make test` needs on Debian 12; safe to run repeatedly.
#
#   bash scripts/setup.sh demo   Docker engine and debootstrap (the base image is made locally)
#   bash scripts/setup.sh test   (default) all of demo, plus gVisor's runsc, PostgreSQL on
#                                127.0.0.1, docker-compose (pytest-docker), the srt mode's tools
#                                (Node.js, npm, bubblewrap, socat, ripgrep), the languages
#                                the host modes run (ruby) and ps (the srt tests look for
#                                processes that outlive a run; Debian's minimal systems lack it),
#                                curl and jq (the service page's examples run as written),
#                                haproxy (the load balancer of make cluster-up), Graphviz
#                                (a test checks docs/architecture.svg against its source)
#
# Everything is checked first and only what is missing is installed or started: one
# `apt-get update` and one `apt-get install` at most. A step that takes more than a few seconds
# prints one `[setup]` line; the rest is quiet (a failing step shows its log). As a user other
# than root, a machine that already has everything passes; one that lacks something gets the
# exact command to run once as root, and the script fails.
# ATHENA_SETUP_PROFILE is the profile when no argument is given.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${1:-${ATHENA_SETUP_PROFILE:-test}}
case "$profile" in
  demo | test) ;;
  *) echo "usage: bash scripts/setup.sh [demo|test]" >&2; exit 2 ;;
esac

say() { printf '[setup] %s\n' "$*"; }

# ---------------------------------------------------------------------------- what is missing

# Debian packages: "command that proves it is installed" -> package. Commands, not dpkg
# states, so a tool installed another way (a newer Node.js, say) counts as present.
demo_packages=(
  "dockerd docker.io"
  "debootstrap debootstrap"
)
test_packages=(
  "docker-compose docker-compose"
  "runsc runsc"
  "bwrap bubblewrap"
  "socat socat"
  "rg ripgrep"
  "node nodejs"
  "npm npm"
  "ruby ruby"
  "pg_lsclusters postgresql"
  "ps procps"
  "jq jq"
  "curl curl"
  "haproxy haproxy"
  "dot graphviz"
)

missing_packages() {
  local entries=("${demo_packages[@]}") entry
  [ "$profile" = test ] && entries+=("${test_packages[@]}")
  # The venv module needs Debian's python3-venv (ensurepip), which a bare python3 lacks.
  python3 -c 'import ensurepip' >/dev/null 2>&1 || echo python3-venv
  for entry in "${entries[@]}"; do
    command -v "${entry%% *}" >/dev/null 2>&1 || echo "${entry#* }"
  done
  # The fast mode's seccomp filter is compiled by libseccomp (a library: no command proves it).
  if [ "$profile" = test ] && ! ls /usr/lib/*/libseccomp.so.2 >/dev/null 2>&1; then
    echo libseccomp2
  fi
  # pg_lsclusters (postgresql-common) can be there without a server version installed.
  if [ "$profile" = test ] && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    echo postgresql
  fi
}

engine_answers() { docker info >/dev/null 2>&1; }
# An engine that runs but refuses this user: group membership, not installation, is missing.
engine_refuses_me() {
  local said
  said=$(docker info 2>&1 || true)
  [[ "$said" == *"permission denied"* ]]
}
runsc_registered() {
  local runtimes
  runtimes=$(docker info --format '{{json .Runtimes}}' 2>/dev/null || true)
  [[ "$runtimes" == *runsc-nonet* ]]
}
# The role and database the tests use (tests/memory_backends.py; ensure-postgres.sh makes them).
postgres_answers() {
  command -v psql >/dev/null 2>&1 &&
    PGPASSWORD=${ATHENA_PG_PASSWORD:-athena} PGCONNECT_TIMEOUT=3 psql -X -q -h 127.0.0.1 \
      -U "${ATHENA_PG_ROLE:-athena}" -d "${ATHENA_PG_DATABASE:-athena_test}" \
      -c 'SELECT 1' >/dev/null 2>&1
}

# ---------------------------------------------------------------------------- steps (root)

# Run a step's script quietly; on failure show what it said.
quietly() {  # quietly LOGNAME COMMAND...
  local log
  log=$(mktemp "/tmp/athena-setup-$1.XXXXXX")
  shift
  if ! "$@" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    rm -f "$log"
    say "failed: $*" >&2
    return 1
  fi
  rm -f "$log"
}

install_packages() {
  say "installing $* from Debian's packages (once)"
  export DEBIAN_FRONTEND=noninteractive
  quietly apt-update apt-get update -q
  quietly apt-install apt-get install -y -q --no-install-recommends "$@"
}

# ---------------------------------------------------------------------------- main

packages=$(missing_packages | sort -u | tr '\n' ' ')
packages=${packages% }
todo=()
[ -n "$packages" ] && todo+=("packages: $packages")
refused=0
if engine_refuses_me; then
  refused=1  # root could use it: nothing to install; this user needs the docker group
elif ! engine_answers; then
  todo+=("start the Docker engine")
fi
if [ "$profile" = test ]; then
  # Which runtimes the engine has is unknown to a user it refuses; root's run checks it.
  [ "$refused" = 1 ] || runsc_registered || todo+=("register gVisor's runsc with the engine")
  postgres_answers || todo+=("start PostgreSQL on 127.0.0.1 with the test role")
fi

if [ "$refused" = 1 ]; then
  me=$(id -un)
  echo "[setup] the Docker engine runs but refuses $me: run once  sudo usermod -aG docker $me  and log in again" >&2
  [ "${#todo[@]}" -eq 0 ] && exit 1
fi

if [ "${#todo[@]}" -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "[setup] this machine still needs (as root, once):" >&2
  printf '[setup]   - %s\n' "${todo[@]}" >&2
  echo "[setup] run once as root, from $(pwd):  sudo bash scripts/setup.sh $profile" >&2
  exit 1
fi

if [ -n "$packages" ]; then
  # shellcheck disable=SC2086  # one word per package
  install_packages $packages
fi
if ! engine_answers; then
  say "starting the Docker engine (once per boot)"
  quietly docker bash scripts/ensure-docker.sh
fi
if [ "$profile" = test ]; then
  if ! runsc_registered; then
    say "registering gVisor's runsc with the Docker engine (once)"
    quietly runsc bash scripts/ensure-runsc.sh
  fi
  if ! postgres_answers; then
    say "starting PostgreSQL on 127.0.0.1 with the test role and database (once per boot)"
    quietly postgres bash scripts/ensure-postgres.sh
  fi
fi
