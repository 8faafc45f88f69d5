#!/bin/sh
# Entry point of the platform containers in deploy/docker-compose.yml: exports the
# secrets the `secrets` service generated as the WALLET_* variables the programs read,
# then runs the command. The values never appear in the Compose file or in
# `docker inspect`; a missing file stops the container instead of starting it without.
#   SECRETS_DIR          where the secrets are (default /run/wallet-secrets)
#   SERVER_TOKENS_FILE   this server's WALLET_AUTH_TOKENS table (e.g. services.auth)
#   CLIENT_TOKEN_FILE    the bearer token this process sends (the orchestrator's own)
set -eu
dir=${SECRETS_DIR:-/run/wallet-secrets}
secret() { cat "$dir/$1"; }

WALLET_DATABASE_URL=$(secret database-url)
WALLET_AMQP_URL=$(secret amqp-url)
export WALLET_DATABASE_URL WALLET_AMQP_URL
if [ -n "${SERVER_TOKENS_FILE:-}" ]; then
  WALLET_AUTH_TOKENS=$(secret "$SERVER_TOKENS_FILE")
  export WALLET_AUTH_TOKENS
fi
if [ -n "${CLIENT_TOKEN_FILE:-}" ]; then
  WALLET_AUTH_TOKEN=$(secret "$CLIENT_TOKEN_FILE")
  export WALLET_AUTH_TOKEN
fi
exec "$@"
