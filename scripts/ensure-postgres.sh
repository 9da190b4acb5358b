#!/usr/bin/env bash
# Make sure a PostgreSQL server answers on 127.0.0.1 with the role and database the tests use;
# install (Debian's packages), configure and start one if not. Safe to run repeatedly.
#
#   ATHENA_PG_ROLE      role to create         (default athena; may create databases)
#   ATHENA_PG_PASSWORD  its password           (default athena; a test-only credential)
#   ATHENA_PG_DATABASE  database it owns       (default athena_test)
#
# The tests then connect to postgresql://athena:athena@127.0.0.1:<port>/athena_test
# (ATHENA_TEST_POSTGRES_URL overrides it). The server listens on the loopback address only.
set -euo pipefail

log() { printf '[ensure-postgres] %s\n' "$*" >&2; }

role=${ATHENA_PG_ROLE:-athena}
password=${ATHENA_PG_PASSWORD:-athena}
database=${ATHENA_PG_DATABASE:-athena_test}
case "$role$database" in
  *[!a-z0-9_]*) log "role and database names must be lower-case letters, digits and _"; exit 1 ;;
esac

if [ "$(id -u)" -ne 0 ]; then
  log "installing and starting PostgreSQL needs root: run 'sudo bash scripts/ensure-postgres.sh'."
  exit 1
fi

if ! command -v pg_lsclusters >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  log "installing postgresql from Debian's packages..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
fi

# The first cluster of the newest installed version; the package normally creates "main".
version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
cluster=$(pg_lsclusters --no-header | awk -v v="$version" '$1 == v { print $2; exit }')
if [ -z "$cluster" ]; then
  log "creating cluster $version/main..."
  pg_createcluster "$version" main >/dev/null
  cluster=main
fi
port=$(pg_lsclusters --no-header | awk -v v="$version" -v c="$cluster" '$1 == v && $2 == c { print $3 }')

# Loopback only, whatever postgresql.conf says (conf.d is read after it, so this wins).
conf="/etc/postgresql/$version/$cluster/conf.d/athena-loopback.conf"
wanted="listen_addresses = '127.0.0.1'"
changed=0
if [ "$(cat "$conf" 2>/dev/null)" != "$wanted" ]; then
  printf '%s\n' "$wanted" >"$conf"
  changed=1
fi

status=$(pg_lsclusters --no-header | awk -v v="$version" -v c="$cluster" '$1 == v && $2 == c { print $4 }')
if [ "$status" = "online" ] && [ "$changed" = 1 ]; then
  log "restarting $version/$cluster to listen on 127.0.0.1 only..."
  pg_ctlcluster "$version" "$cluster" restart
elif [ "$status" != "online" ]; then
  log "starting cluster $version/$cluster on 127.0.0.1:$port..."
  # A stale postmaster.pid (a killed server) makes pg_ctl refuse to start: remove it if dead.
  pidfile="/var/lib/postgresql/$version/$cluster/postmaster.pid"
  if [ -f "$pidfile" ] && ! kill -0 "$(head -n 1 "$pidfile")" 2>/dev/null; then
    log "removing stale $pidfile"
    rm -f "$pidfile"
  fi
  pg_ctlcluster "$version" "$cluster" start
else
  log "cluster $version/$cluster already running on port $port."
fi

ready=0
for _ in $(seq 1 60); do
  if pg_isready -q -h 127.0.0.1 -p "$port"; then
    ready=1
    break
  fi
  sleep 0.5
done
if [ "$ready" != 1 ]; then
  log "PostgreSQL does not answer on 127.0.0.1:$port; see /var/log/postgresql/postgresql-$version-$cluster.log"
  exit 1
fi

as_postgres() { runuser -u postgres -- psql -p "$port" -X -q -v ON_ERROR_STOP=1 "$@"; }
as_postgres -v role="$role" -v password="$password" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN CREATEDB PASSWORD %L', :'role', :'password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN CREATEDB PASSWORD %L', :'role', :'password') \gexec
SQL
as_postgres -v role="$role" -v db="$database" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SQL

if ! PGPASSWORD="$password" psql -X -q -h 127.0.0.1 -p "$port" -U "$role" -d "$database" \
  -c 'SELECT 1' >/dev/null; then
  log "the server answers but $role cannot log in to $database over 127.0.0.1"
  exit 1
fi
log "PostgreSQL $version answers on 127.0.0.1:$port; role $role owns database $database."
