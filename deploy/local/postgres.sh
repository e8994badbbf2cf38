#!/usr/bin/env bash
# A private PostgreSQL for development and tests: its own data folder and port.
#   postgres.sh start DATA_DIR PORT [ADDRESS]
#       -> starts it (initialising on first use), prints the admin URL. With ADDRESS it also
#          listens there and trusts that /24 (the test network topology's internal zone).
#   postgres.sh stop DATA_DIR
# PARLEY_PG_OPTIONS adds server options on start (e.g. "-c ssl=on -c ssl_cert_file=…").
# PostgreSQL refuses to run as root, so as root it runs as the `postgres` OS user.
set -euo pipefail
cmd=${1:?start|stop}; data=${2:?data folder}; port=${3:-55432}; address=${4:-}

bindir=""
for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && bindir=$d; done
if [ -z "$bindir" ]; then
  echo "installing PostgreSQL..." >&2
  apt-get install -y postgresql >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y postgresql >/dev/null; }
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && bindir=$d; done
fi

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
start)
  mkdir -p "$data"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$data" && chmod 700 "$data"
  if [ ! -f "$data/PG_VERSION" ]; then
    as_owner "$bindir/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --no-locale >/dev/null
  fi
  if [ -n "$address" ] && ! grep -q "^host all all ${address%.*}.0/24" "$data/pg_hba.conf"; then
    echo "host all all ${address%.*}.0/24 trust" >> "$data/pg_hba.conf"
  fi
  if ! as_owner "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    as_owner "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
      -o "-p $port -k $data -c listen_addresses=127.0.0.1${address:+,$address} -c max_connections=200 -c fsync=on ${PARLEY_PG_OPTIONS:-}" start >/dev/null
  fi
  for _ in $(seq 1 100); do
    "$bindir/pg_isready" -h 127.0.0.1 -p "$port" -q && break
    sleep 0.1
  done
  echo "postgres://postgres@${address:-127.0.0.1}:$port/postgres"
  ;;
stop)
  [ -f "$data/PG_VERSION" ] && as_owner "$bindir/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
  ;;
*) echo "usage: $0 start|stop DATA_DIR [PORT]" >&2; exit 2 ;;
esac
