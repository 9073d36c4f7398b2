-- Every event kind, with its keys in the documented order, and the
-- (commit_lsn, seq) ordering contract.
\set ECHO none
\i test/decoder_helpers.sql
\set ECHO all

CREATE TABLE ev_parent (id int PRIMARY KEY);
CREATE TABLE ev_t (id int PRIMARY KEY, name text, qty int, parent int REFERENCES ev_parent);
SELECT 'init' FROM pg_create_logical_replication_slot('ev_slot', 'pgcdc');

BEGIN;
INSERT INTO ev_t VALUES (1, 'one', 10), (2, 'two', 20);
UPDATE ev_t SET qty = 11 WHERE id = 1;
DELETE FROM ev_t WHERE id = 2;
SELECT 'msg' FROM pg_logical_emit_message(true, 'app', 'in the transaction');
COMMIT;
TRUNCATE ev_parent, ev_t RESTART IDENTITY;
TRUNCATE ev_parent CASCADE;
SELECT 'msg' FROM pg_logical_emit_message(false, 'app', 'outside any transaction');
SELECT 'msg' FROM pg_logical_emit_message(true, 'bin', '\x00ff01'::bytea);

SELECT * FROM ev('ev_slot');

-- Ordering invariants over several transactions, on the raw values.
INSERT INTO ev_t SELECT g, 'n' || g, g FROM generate_series(1, 50) g;
BEGIN;
UPDATE ev_t SET qty = qty + 1 WHERE id <= 10;
DELETE FROM ev_t WHERE id > 40;
COMMIT;
BEGIN;
INSERT INTO ev_t VALUES (100, 'hundred', 100);
COMMIT;

CREATE TEMP TABLE raw AS
  SELECT ord, data, data::jsonb AS e
  FROM pg_logical_slot_get_changes('ev_slot', NULL, NULL) WITH ORDINALITY AS x(lsn, xid, data, ord);

-- one JSON object per row, "op" first
SELECT count(*) AS events, bool_and(data LIKE '{"op":"_",%') AS op_first FROM raw;

-- (commit_lsn, seq) strictly increasing over all change events, in output order
SELECT bool_and(ok) AS total_order FROM (
  SELECT ((e->>'commit_lsn')::pg_lsn, (e->>'seq')::int) >
         (lag((e->>'commit_lsn')::pg_lsn) OVER w, lag((e->>'seq')::int) OVER w)
         IS NOT FALSE AS ok
  FROM raw WHERE e->>'op' NOT IN ('B', 'C') WINDOW w AS (ORDER BY ord)) s;

-- per transaction: one xid and commit, seq 1..n, C.changes = n, lsn < commit_lsn < end_lsn
WITH x AS (
  SELECT e->>'commit_lsn' AS commit_lsn,
         count(*) FILTER (WHERE e->>'op' NOT IN ('B', 'C')) AS n,
         count(DISTINCT e->>'xid') AS xids,
         count(DISTINCT e->>'ts') AS tss,
         max((e->>'seq')::int) AS max_seq,
         count(DISTINCT e->>'seq') FILTER (WHERE e->>'op' NOT IN ('B', 'C')) AS distinct_seq,
         max((e->>'changes')::int) AS changes,
         bool_and((e->>'lsn')::pg_lsn <= (e->>'commit_lsn')::pg_lsn)
           FILTER (WHERE e->>'op' NOT IN ('B', 'C')) AS lsn_before_commit,
         bool_and((e->>'end_lsn')::pg_lsn > (e->>'commit_lsn')::pg_lsn)
           FILTER (WHERE e->>'op' = 'C') AS end_after_commit,
         min(ord) FILTER (WHERE e->>'op' = 'B') AS b_ord,
         max(ord) FILTER (WHERE e->>'op' = 'C') AS c_ord,
         min(ord) AS first_ord, max(ord) AS last_ord
  FROM raw GROUP BY 1)
SELECT n, xids, tss, max_seq = n AND distinct_seq = n AS seq_1_to_n, changes = n AS changes_ok,
       lsn_before_commit, end_after_commit,
       b_ord = first_ord AND c_ord = last_ord AS b_first_c_last
FROM x ORDER BY commit_lsn::pg_lsn;

-- the commit timestamp is ISO 8601 in UTC, always with six fractional digits
SELECT bool_and(e->>'ts' ~ '^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}\+00$') AS ts_utc FROM raw;

-- a schema or type renamed: the events after it have the new names, in the
-- session that decoded the ones before it too
CREATE SCHEMA ev_s1;
CREATE TYPE ev_s1.colour AS ENUM ('red');
CREATE TABLE ev_s1.r (id int PRIMARY KEY, c ev_s1.colour);
SELECT count(*) > 0 AS drained FROM pg_logical_slot_get_changes('ev_slot', NULL, NULL);
INSERT INTO ev_s1.r VALUES (1, 'red');
SELECT data::jsonb->>'schema' AS schema, data::jsonb->'types' AS types
  FROM pg_logical_slot_get_changes('ev_slot', NULL, NULL, 'include-transaction', 'false', 'include-types', 'true');
ALTER SCHEMA ev_s1 RENAME TO ev_s2;
ALTER TYPE ev_s2.colour RENAME TO hue;
INSERT INTO ev_s2.r VALUES (2, 'red');
SELECT data::jsonb->>'schema' AS schema, data::jsonb->'types' AS types
  FROM pg_logical_slot_get_changes('ev_slot', NULL, NULL, 'include-transaction', 'false', 'include-types', 'true');
-- and the names do not depend on the caller's search_path
SET search_path = ev_s2, public;
INSERT INTO ev_s2.r VALUES (3, 'red');
SELECT data::jsonb->>'schema' AS schema, data::jsonb->'types' AS types
  FROM pg_logical_slot_get_changes('ev_slot', NULL, NULL, 'include-transaction', 'false', 'include-types', 'true');
SHOW search_path;
RESET search_path;
DROP SCHEMA ev_s2 CASCADE;

SELECT pg_drop_replication_slot('ev_slot');
DROP TABLE ev_t, ev_parent;
