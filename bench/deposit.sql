-- pgbench: the work of one Deposit in ONE statement (one round trip, one transaction in
-- autocommit): lock + update the balance, append the log entry, write the outbox row and
-- the idempotency record. This is the database's own ceiling for a deposit.
-- Run: pgbench -n -M prepared -c 32 -j 2 -T 15 -D wallets=1000 -f bench/deposit.sql "$DB"
\set wid random(1, :wallets)
\set amount random(1, 10000)
WITH r AS (
    SELECT gen_random_uuid()::text AS request_id, gen_random_uuid()::text AS event_id
), w AS (
    UPDATE wallets
       SET balance = balance + (:amount)::bigint, version = version + 1, updated_at = now()
     WHERE wallet_id = 'bench-' || (:wid)::bigint AND status = 'ACTIVE'
    RETURNING wallet_id, balance, version, currency
), e AS (
    INSERT INTO wallet_events (event_id, wallet_id, sequence, type, amount, balance_after,
                               currency, request_id, occurred_at)
    SELECT r.event_id, w.wallet_id, w.version, 'funds_deposited', (:amount)::bigint, w.balance,
           w.currency, r.request_id, now()
      FROM w, r
    RETURNING event_id
), o AS (
    INSERT INTO outbox (message_id, routing_key, message_type, payload, status, attempts,
                        created_at)
    SELECT e.event_id, 'wallet.funds_deposited', 'wallet.v1.FundsDeposited',
           convert_to(repeat('x', 160), 'UTF8'), 'pending', 0, now()
      FROM e
)
INSERT INTO idempotency_records (scope, request_id, fingerprint, status_code, response,
                                 created_at)
SELECT 'deposit', r.request_id, md5(w.wallet_id || (:amount)::bigint), 'OK',
       convert_to(repeat('x', 200), 'UTF8'), now()
  FROM w, r;
