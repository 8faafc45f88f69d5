-- pgbench: the work of one completed transfer saga in ONE statement: the transfer row in
-- its final state with its two steps, the debit and the credit (one UPDATE of both rows;
-- an index scan over "= ANY" visits, and so locks, the two rows in key order, so
-- concurrent transfers cannot deadlock), two log entries, three outbox rows (two wallet
-- events + the TransferCompleted milestone) and the two step idempotency records.
-- This is what the database alone can do; the service spreads the same rows over
-- several transactions so that a crash between steps is recoverable.
-- Run: pgbench -n -M prepared -c 32 -j 2 -T 15 -D wallets=1000 -f bench/transfer.sql "$DB"
\set src random(1, :wallets)
\set hop random(1, :wallets - 1)
\set dst 1 + (:src + :hop - 1) % :wallets
\set amount random(1, 10000)
WITH t AS (
    INSERT INTO transfers (transfer_id, request_id, fingerprint, from_wallet_id, to_wallet_id,
                           amount, currency, state, attempts, created_at, updated_at)
    VALUES (gen_random_uuid()::text, gen_random_uuid()::text, md5((:src)::bigint || '>' || (:dst)::bigint),
            'bench-' || (:src)::bigint, 'bench-' || (:dst)::bigint, (:amount)::bigint, 'USD', 'COMPLETED', 0, now(), now())
    RETURNING transfer_id, from_wallet_id, to_wallet_id
), s AS (
    INSERT INTO transfer_steps (transfer_id, name, position, outcome, attempts, started_at,
                                finished_at)
    SELECT t.transfer_id, step.name, step.position, 'SUCCEEDED', 1, now(), now()
      FROM t, (VALUES ('debit', 1), ('credit', 2)) AS step(name, position)
), w AS (
    UPDATE wallets
       SET balance = balance + CASE WHEN wallet_id = t.to_wallet_id THEN (:amount)::bigint
                                    ELSE -(:amount)::bigint END,
           version = version + 1, updated_at = now()
      FROM t
     WHERE wallet_id = ANY (ARRAY[t.from_wallet_id, t.to_wallet_id]) AND status = 'ACTIVE'
    RETURNING wallets.wallet_id, wallets.balance, wallets.version, wallets.currency,
              t.transfer_id,
              CASE WHEN wallets.wallet_id = t.to_wallet_id THEN 'credit' ELSE 'debit' END
                  AS step
), e AS (
    INSERT INTO wallet_events (event_id, wallet_id, sequence, type, amount, balance_after,
                               currency, transfer_id, request_id, occurred_at)
    SELECT gen_random_uuid()::text, w.wallet_id, w.version, 'transfer_' || w.step || 'ed',
           (:amount)::bigint, w.balance, w.currency, w.transfer_id, w.transfer_id || chr(58) || w.step,
           now()
      FROM w
    RETURNING event_id, type, request_id
), o AS (
    INSERT INTO outbox (message_id, routing_key, message_type, payload, status, attempts,
                        created_at)
    SELECT e.event_id, 'wallet.' || e.type, 'wallet.v1.TransferEvent',
           convert_to(repeat('x', 180), 'UTF8'), 'pending', 0, now()
      FROM e
    UNION ALL
    SELECT t.transfer_id || chr(58) || 'completed', 'wallet.transfer_completed',
           'wallet.v1.TransferCompleted', convert_to(repeat('x', 220), 'UTF8'), 'pending', 0,
           now()
      FROM t
)
INSERT INTO idempotency_records (scope, request_id, fingerprint, status_code, response,
                                 created_at)
SELECT 'transfer_step', e.request_id, md5(e.request_id), 'OK',
       convert_to(repeat('x', 200), 'UTF8'), now()
  FROM e;
