#!/bin/bash
# Usage: profile.sh OUTDIR [MIX] [SECONDS]  -- run the platform (1 process each) on a
# fresh db + vhost, drive load, py-spy every service for 10 s, print per-process CPU.
# Env: REPO (default: this checkout), WW (wallet workers, default 1)
set -u
OUT=${1:?outdir}; MIX=${2:-deposit=100}; DUR=${3:-25}
REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}; BIN=$REPO/.venv/bin; WW=${WW:-1}
mkdir -p "$OUT"; TAG=prof_$$_$RANDOM
psql -h 127.0.0.1 -U root -d postgres -qc "create database $TAG" 
rabbitmqctl -q add_vhost $TAG; rabbitmqctl -q set_permissions -p $TAG guest '.*' '.*' '.*'
export WALLET_DATABASE_URL=postgresql+psycopg://root@127.0.0.1:5432/$TAG
export WALLET_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/$TAG
export WALLET_LOG_LEVEL=WARNING WALLET_DB_POOL_SIZE=8 WALLET_METRICS_PORT=0
P=$((52000 + RANDOM % 5000))
$BIN/wallet-service --listen 127.0.0.1:$P --workers $WW > $OUT/ws.log 2>&1 & WS=$!
sleep 4
WALLET_SERVICE_TARGET=127.0.0.1:$P $BIN/saga-orchestrator --listen 127.0.0.1:$((P+1)) > $OUT/saga.log 2>&1 & SG=$!
$BIN/analytics-worker --listen 127.0.0.1:$((P+2)) > $OUT/an.log 2>&1 & AN=$!
$BIN/fraud-worker --listen 127.0.0.1:$((P+3)) > $OUT/fr.log 2>&1 & FR=$!
sleep 5
$BIN/wallet-bench run --wallet-target 127.0.0.1:$P --transfer-target 127.0.0.1:$((P+1)) --analytics-target 127.0.0.1:$((P+2)) \
  --mix $MIX --duration $DUR --concurrency 32 --wallets 1000 --database-url $WALLET_DATABASE_URL > $OUT/bench.txt 2>&1 & BN=$!
sleep 8
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
WSP=$(pgrep -P $WS | head -1); [ -z "$WSP" ] && WSP=$WS
declare -A C0; for p in $WSP $SG $AN $FR $BN; do C0[$p]=$(cpu $p); done
for n in ws:$WSP saga:$SG an:$AN fr:$FR bench:$BN; do
  $BIN/py-spy record -p ${n#*:} -d 10 -r 100 -f raw -o $OUT/${n%%:*}.raw --nonblocking >/dev/null 2>&1 &
done
sleep 11
for n in ws:$WSP saga:$SG an:$AN fr:$FR bench:$BN; do p=${n#*:}; echo "${n%%:*} cpu_ticks_in_11s=$(( $(cpu $p) - ${C0[$p]} ))"; done > $OUT/cpu.txt
wait $BN
kill $WS $SG $AN $FR; wait
psql -h 127.0.0.1 -U root -d postgres -qc "drop database $TAG with (force)"
rabbitmqctl -q delete_vhost $TAG
cat $OUT/cpu.txt; grep -E 'per s|deposit |transfer |withdraw |lag|drained' $OUT/bench.txt | head -12
