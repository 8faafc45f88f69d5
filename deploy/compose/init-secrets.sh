#!/bin/sh
# The `secrets` service of deploy/docker-compose.yml runs this on every `up`, before
# anything else starts. It creates what is missing in $SECRETS_DIR and keeps what is
# there, so passwords and tokens survive restarts; it re-issues the server certificate
# when it is missing or expires within 30 days. Delete a file (or the volume) to get a
# new one; docs/operations.md ("Running it securely") lists the files.
#
#   $SECRETS_DIR (read-only in the platform's containers)
#     postgres-password, rabbitmq-password, grafana-admin-password   random, 256 bits
#     database-url, amqp-url          the service URLs built from those passwords
#     admin.token, app.token, orchestrator.token   bearer tokens, random, 256 bits
#     wallet-service.auth             WALLET_AUTH_TOKENS of WalletService: admin, app,
#                                     and the orchestrator (the only caller of the steps)
#     services.auth                   WALLET_AUTH_TOKENS of the other servers: admin, app
#     ca.crt, server.crt, server.key  TLS: one server certificate naming every service
#   $CA_DIR (only this container): ca.key, the key that signs the server certificate
set -eu

out=${SECRETS_DIR:-/run/wallet-secrets}
ca_dir=${CA_DIR:-/run/wallet-ca}
server_names=${SERVER_NAMES:-wallet-service saga-orchestrator analytics-worker fraud-worker localhost}
wallet_uid=${WALLET_UID:-10001}   # the platform image's user
postgres_uid=${POSTGRES_UID:-999} # postgres and rabbitmq images
rabbitmq_uid=${RABBITMQ_UID:-999}
grafana_uid=${GRAFANA_UID:-472}

umask 077
mkdir -p "$out" "$ca_dir"
chmod 755 "$out"
chmod 700 "$ca_dir"

# No trailing newline: every reader (Grafana's __FILE, a shell's $(cat)) gets the bare value.
random_hex() { openssl rand -hex 32 | tr -d '\n'; }

# own FILE UID MODE: only root can hand a file to another user; anyone else (a test, a
# developer running this by hand) keeps the files as their own.
own() {
  if [ "$(id -u)" -eq 0 ]; then chown "$2" "$1"; fi
  chmod "$3" "$1"
}

# keep FILE COMMAND...: write COMMAND's output to FILE unless FILE already exists.
keep() {
  file=$out/$1
  shift
  if [ ! -s "$file" ]; then
    "$@" > "$file.tmp"
    mv "$file.tmp" "$file"
    echo "generated $file"
  fi
}

# derive FILE CONTENT: (re)write FILE from secrets that already exist.
derive() {
  printf '%s' "$2" > "$out/$1.tmp"
  mv "$out/$1.tmp" "$out/$1"
}

keep postgres-password random_hex
keep rabbitmq-password random_hex
keep grafana-admin-password random_hex
keep admin.token random_hex
keep app.token random_hex
keep orchestrator.token random_hex

admin=$(cat "$out/admin.token")
app=$(cat "$out/app.token")
orchestrator=$(cat "$out/orchestrator.token")
derive database-url "postgresql+psycopg://wallet:$(cat "$out/postgres-password")@postgres:5432/wallet"
derive amqp-url "amqp://wallet:$(cat "$out/rabbitmq-password")@rabbitmq:5672/"
derive services.auth "$admin=admin@operator;$app=writer@app"
derive wallet-service.auth "$admin=admin@operator;$app=writer@app;$orchestrator=orchestrator@saga-orchestrator"

# --- TLS -----------------------------------------------------------------------------
if [ ! -s "$ca_dir/ca.key" ] || [ ! -s "$out/ca.crt" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=wallet-platform compose CA" \
    -keyout "$ca_dir/ca.key" -out "$out/ca.crt" 2>/dev/null
  rm -f "$out/server.crt"
  echo "generated a new CA: $out/ca.crt"
fi
if [ ! -s "$out/server.crt" ] || [ ! -s "$out/server.key" ] \
  || ! openssl x509 -checkend 2592000 -noout -in "$out/server.crt" >/dev/null; then
  alt=""
  for name in $server_names; do alt="$alt,DNS:$name"; done
  printf 'subjectAltName=%s,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' \
    "${alt#,}" > "$ca_dir/server.ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj /CN=wallet-platform -keyout "$out/server.key.tmp" -out "$ca_dir/server.csr" 2>/dev/null
  openssl x509 -req -in "$ca_dir/server.csr" -CA "$out/ca.crt" -CAkey "$ca_dir/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 397 -extfile "$ca_dir/server.ext" \
    -out "$out/server.crt.tmp" 2>/dev/null
  mv "$out/server.key.tmp" "$out/server.key"
  mv "$out/server.crt.tmp" "$out/server.crt"
  rm -f "$ca_dir/server.csr" "$ca_dir/server.ext"
  echo "issued $out/server.crt for: $server_names 127.0.0.1"
fi

# --- who may read what ---------------------------------------------------------------
for file in database-url amqp-url admin.token app.token orchestrator.token \
  services.auth wallet-service.auth server.key; do
  own "$out/$file" "$wallet_uid" 400
done
own "$out/postgres-password" "$postgres_uid" 400
own "$out/rabbitmq-password" "$rabbitmq_uid" 400
own "$out/grafana-admin-password" "$grafana_uid" 400
own "$out/ca.crt" 0 444
own "$out/server.crt" 0 444
own "$ca_dir/ca.key" 0 400
echo "secrets ready in $out"
