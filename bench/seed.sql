-- Seed for the pgbench baselines: :wallets wallets (bench-1 .. bench-N) holding a balance
-- large enough that no debit of the run is ever rejected. Run once on a fresh, migrated
-- database:  psql -v wallets=1000 -f bench/seed.sql "$DB"
INSERT INTO wallets (wallet_id, currency, balance, status, version, created_at, updated_at)
SELECT 'bench-' || i, 'USD', 1000000000000, 'ACTIVE', 0, now(), now()
FROM generate_series(1, :wallets) AS i;
ANALYZE wallets;
