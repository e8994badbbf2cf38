#!/usr/bin/env bash
# `make run`: a whole Parley cluster on this machine, each part its own process:
# PostgreSQL, one relay, two visitor gateways, one agent gateway and HAProxy in front of the
# visitor gateways. Ctrl-C stops everything.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
state=${PARLEY_RUN_DIR:-$root/.run}
mkdir -p "$state/logs" "$state/secrets"

# --- what this needs on a fresh machine -------------------------------------------------
missing=()
command -v haproxy >/dev/null || missing+=(haproxy)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || [ -n "${PARLEY_DATABASE_URL:-}" ] || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}..."
  apt-get install -y "${missing[@]}" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "${missing[@]}" >/dev/null; }
fi

echo "building..."
# --build-tests: the same flags as `make test`, so the two share one build instead of rebuilding.
swift build --build-tests >/dev/null
bin=$(swift build --show-bin-path)

pids=()
stop_all() {
  trap - INT TERM EXIT
  echo; echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -z "${PARLEY_OWN_DATABASE:-}" ]; then "$root/deploy/local/postgres.sh" stop "$pgdata"; fi
  echo "stopped."
  exit 0
}
trap stop_all INT TERM EXIT

# --- PostgreSQL ---------------------------------------------------------------------------
pgdata="$state/pg"
[ -n "${PARLEY_DATABASE_URL:-}" ] && PARLEY_OWN_DATABASE=1
if [ -z "${PARLEY_DATABASE_URL:-}" ]; then
  # The data folder must be reachable by the postgres OS user; fall back to /tmp if the checkout is not.
  if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$state"; then
    pgdata="/tmp/parley-pg-$(echo "$root" | md5sum | cut -c1-8)"
  fi
  pgport=${PARLEY_PG_PORT:-55432}
  admin=$("$root/deploy/local/postgres.sh" start "$pgdata" "$pgport")
  psql "$admin" -qtAc "SELECT 1 FROM pg_database WHERE datname = 'parley'" | grep -q 1 || psql "$admin" -qc "CREATE DATABASE parley" >/dev/null
  export PARLEY_DATABASE_URL="postgres://postgres@127.0.0.1:$pgport/parley"
fi
"$bin/parleyctl" db migrate
# Each service connects with a login of its own that holds only its role's grants; with a
# database of your own (PARLEY_DATABASE_URL), everything uses that URL.
relay_db=$PARLEY_DATABASE_URL; agent_db=$PARLEY_DATABASE_URL
if [ -z "${PARLEY_OWN_DATABASE:-}" ]; then
  "$bin/parleyctl" db user --role relay --name parley_relay_local >/dev/null
  "$bin/parleyctl" db user --role agent-gateway --name parley_agent_gateway_local >/dev/null
  relay_db="postgres://parley_relay_local@127.0.0.1:$pgport/parley"
  agent_db="postgres://parley_agent_gateway_local@127.0.0.1:$pgport/parley"
fi

# --- secrets and the demo agent -------------------------------------------------------------
keyfile="$state/secrets/visitor-token-keys"
[ -s "$keyfile" ] || echo "k1:$(head -c 32 /dev/urandom | base64 -w0)" > "$keyfile"
chmod 600 "$keyfile"
export PARLEY_VISITOR_TOKEN_KEYS=$(cat "$keyfile")
demo_email=${PARLEY_DEMO_AGENT_EMAIL:-demo@parley.test}
demo_password=${PARLEY_DEMO_AGENT_PASSWORD:-parley-demo-password}
echo "$demo_password" | "$bin/parleyctl" agents add --email "$demo_email" --name "Demo Agent" --role admin --password-stdin --update >/dev/null

# --- the internal plane's certificates (mutual TLS), made on first run -----------------------
certs="$state/secrets/certs"
[ -f "$certs/ca.pem" ] || "$bin/parleyctl" certs init --dir "$certs" >/dev/null
tls() { # role node: issues the node's certificate once, prints its flags
  [ -f "$certs/$2.pem" ] || "$bin/parleyctl" certs issue --dir "$certs" --role "$1" --node "$2" --host 127.0.0.1 >/dev/null
  echo "--tls-ca $certs/ca.pem --tls-cert $certs/$2.pem --tls-key $certs/$2.key"
}

# --- the nodes ------------------------------------------------------------------------------
start() { # name, then the command
  local name=$1; shift
  "$@" >"$state/logs/$name.log" 2>&1 &
  pids+=($!)
}
wait_http() { # url
  for _ in $(seq 1 300); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for $1 (see $state/logs)" >&2; return 1
}

start relay "$bin/parley-relay" --database-url "$relay_db" --node-id relay-1 --grpc-listen 127.0.0.1:7100 --ops-listen 127.0.0.1:7101 $(tls relay relay-1)
wait_http http://127.0.0.1:7101/health
start vg-1 "$bin/parley-visitor-gateway" --node-id vg-1 --http-listen 127.0.0.1:8081 \
  --internal-listen 127.0.0.1:7201 --ops-listen 127.0.0.1:7202 --relay-address 127.0.0.1:7100 --trusted-proxies 127.0.0.1 $(tls visitor-gateway vg-1)
start vg-2 "$bin/parley-visitor-gateway" --node-id vg-2 --http-listen 127.0.0.1:8082 \
  --internal-listen 127.0.0.1:7211 --ops-listen 127.0.0.1:7212 --relay-address 127.0.0.1:7100 --trusted-proxies 127.0.0.1 $(tls visitor-gateway vg-2)
start ag-1 "$bin/parley-agent-gateway" --database-url "$agent_db" --node-id ag-1 --http-listen 127.0.0.1:8090 \
  --ops-listen 127.0.0.1:7302 --relay-address 127.0.0.1:7100 $(tls agent-gateway ag-1)
wait_http http://127.0.0.1:7202/health
wait_http http://127.0.0.1:7212/health
wait_http http://127.0.0.1:7302/health

"$bin/parleyctl" lb haproxy --bind 127.0.0.1:8080 --output "$state/haproxy.cfg" >/dev/null
start haproxy haproxy -db -f "$state/haproxy.cfg"
wait_http http://127.0.0.1:8080/

cat <<TXT

Parley is running.
  Visitor chat (through HAProxy):  http://localhost:8080
  Agent console:                   http://localhost:8090
      log in as $demo_email / $demo_password
  Node registry:                   $bin/parleyctl nodes list   (PARLEY_DATABASE_URL=$PARLEY_DATABASE_URL)
  Logs:                            $state/logs/
Press Ctrl-C to stop.
TXT
wait -n "${pids[@]}" || true
echo "a process exited; see $state/logs" >&2
