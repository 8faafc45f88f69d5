# The image of the one-shot `secrets` service in deploy/docker-compose.yml: a shell and
# openssl, nothing else (deploy/compose/init-secrets.sh is mounted, not copied).
FROM alpine:3.20
RUN apk add --no-cache openssl
