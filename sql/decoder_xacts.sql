-- Transactions: subtransactions, rollbacks, empty transactions, prepared
-- transactions and one large enough to spill to disk.  Commit order with
-- concurrent transactions is in specs/decoder_commit_order.spec.
\set ECHO none
\i test/decoder_helpers.sql
\set ECHO all

CREATE TABLE xa (id int PRIMARY KEY, v text);
SELECT 'init' FROM pg_create_logical_replication_slot('xa_slot', 'pgcdc');

-- committed subtransactions are part of the top-level transaction; rolled
-- back ones vanish; one xid, seq without gaps
BEGIN;
INSERT INTO xa VALUES (1, 'top');
SAVEPOINT s1;
INSERT INTO xa VALUES (2, 'released');
RELEASE SAVEPOINT s1;
SAVEPOINT s2;
INSERT INTO xa VALUES (3, 'rolled back');
SAVEPOINT s3;
INSERT INTO xa VALUES (4, 'nested, rolled back with s2');
ROLLBACK TO SAVEPOINT s2;
SAVEPOINT s4;
UPDATE xa SET v = 'updated in a subtransaction' WHERE id = 1;
SAVEPOINT s5;
SELECT 'msg' FROM pg_logical_emit_message(true, 'app', 'from a subtransaction');
RELEASE SAVEPOINT s4;
INSERT INTO xa VALUES (5, 'top again');
COMMIT;
SELECT * FROM ev('xa_slot');

-- nothing from a rolled-back transaction, a transaction whose only
-- subtransaction rolled back, or an empty (DDL-only) transaction
BEGIN;
INSERT INTO xa VALUES (10, 'rolled back');
ROLLBACK;
BEGIN;
SAVEPOINT s;
INSERT INTO xa VALUES (11, 'rolled back');
ROLLBACK TO SAVEPOINT s;
COMMIT;
CREATE TABLE xa_empty (id int);
SELECT * FROM ev('xa_slot');
-- ... unless skip-empty-xacts is off
CREATE TABLE xa_empty2 (id int);
BEGIN;
SAVEPOINT s;
INSERT INTO xa VALUES (12, 'rolled back');
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT * FROM ev('xa_slot', 'skip-empty-xacts', 'false');

-- a prepared transaction is decoded at COMMIT PREPARED; a rolled back one never
BEGIN;
INSERT INTO xa VALUES (20, 'prepared');
PREPARE TRANSACTION 'pgcdc_p1';
BEGIN;
INSERT INTO xa VALUES (21, 'prepared, rolled back');
PREPARE TRANSACTION 'pgcdc_p2';
SELECT * FROM ev('xa_slot');
COMMIT PREPARED 'pgcdc_p1';
ROLLBACK PREPARED 'pgcdc_p2';
SELECT * FROM ev('xa_slot');

-- a transaction far larger than logical_decoding_work_mem (64kB here): spilled
-- to disk by the reorder buffer, decoded complete and in order
BEGIN;
INSERT INTO xa SELECT g, repeat('x', 100) FROM generate_series(1000, 30999) g;
UPDATE xa SET v = 'y' WHERE id BETWEEN 1000 AND 30999;
DELETE FROM xa WHERE id BETWEEN 1000 AND 30999;
COMMIT;
WITH e AS (
  SELECT ord, data::jsonb AS e
  FROM pg_logical_slot_get_changes('xa_slot', NULL, NULL, 'tables', 'public.xa') WITH ORDINALITY AS x(l, x, data, ord))
SELECT count(*) FILTER (WHERE e->>'op' = 'I') AS inserts,
       count(*) FILTER (WHERE e->>'op' = 'U') AS updates,
       count(*) FILTER (WHERE e->>'op' = 'D') AS deletes,
       max((e->>'changes')::int) AS changes,
       bool_and((e->>'seq')::int = ord - 1) FILTER (WHERE e->>'op' NOT IN ('B', 'C')) AS seq_in_order,
       count(DISTINCT e->>'xid') AS xids
FROM e;
SELECT pg_drop_replication_slot('xa_slot');
DROP TABLE xa, xa_empty, xa_empty2;
