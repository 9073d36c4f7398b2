-- Every option of the pgcdc output plugin, with its default and its effect.
\set ECHO none
\i test/decoder_helpers.sql
\set ECHO all

CREATE SCHEMA "Odd Schema";
CREATE TABLE opt_a (id int PRIMARY KEY, amount numeric(12,2), price float8, n int8, label varchar(10), tags text[]);
CREATE TABLE opt_b (id int PRIMARY KEY);
CREATE TABLE "Odd Schema"."we*ird.name" (id int PRIMARY KEY);
CREATE TABLE "Odd Schema".plain (id int PRIMARY KEY);
SELECT 'init' FROM pg_create_logical_replication_slot('opt_slot', 'pgcdc');

-- one workload, decoded again and again with different options
CREATE FUNCTION opt_workload() RETURNS void LANGUAGE sql AS $$
  INSERT INTO opt_a VALUES (1, 12.50, 0.1, 9007199254740993, 'x', '{a,b}');
  UPDATE opt_a SET amount = 13 WHERE id = 1;
  DELETE FROM opt_a WHERE id = 1;
  INSERT INTO opt_b VALUES (1);
  INSERT INTO "Odd Schema"."we*ird.name" VALUES (1);
  INSERT INTO "Odd Schema".plain VALUES (1);
  TRUNCATE opt_b;
  SELECT 'm' FROM pg_logical_emit_message(true, 'audit', 'a');
  SELECT 'm' FROM pg_logical_emit_message(true, 'debug', 'd');
  DELETE FROM "Odd Schema"."we*ird.name";
  DELETE FROM "Odd Schema".plain;
$$;
-- DDL alone emits nothing
SELECT count(*) AS ddl_events FROM pg_logical_slot_get_changes('opt_slot', NULL, NULL);

-- defaults (all options absent) vs. format-version 1 explicitly: the same
SELECT opt_workload();
SELECT * FROM ev('opt_slot', 'format-version', '1');

-- include-transaction=false: no B or C events
SELECT opt_workload();
SELECT * FROM ev('opt_slot', 'include-transaction', 'false', 'tables', 'public.opt_b');

-- skip-empty-xacts: default true skips a transaction with nothing emitted;
-- false shows its B and C (here a DDL-only transaction and a filtered one)
CREATE TABLE opt_c (id int);
INSERT INTO opt_a VALUES (2);
SELECT * FROM ev('opt_slot', 'tables', 'public.opt_b');
CREATE TABLE opt_d (id int);
INSERT INTO opt_a VALUES (3);
SELECT * FROM ev('opt_slot', 'tables', 'public.opt_b', 'skip-empty-xacts', 'false');

-- tables: patterns with a wildcard, escapes and blanks around them
SELECT opt_workload();
SELECT e::jsonb->>'op' AS op, e::jsonb->>'schema' AS schema, e::jsonb->>'table' AS tbl
FROM ev('opt_slot', 'tables', ' public.opt_* , Odd Schema.we\*ird\.name', 'include-transaction', 'false') e;
SELECT opt_workload();
SELECT e::jsonb->>'op' AS op, e::jsonb->>'schema' AS schema, e::jsonb->>'table' AS tbl
FROM ev('opt_slot', 'tables', '*.*', 'include-transaction', 'false', 'messages', 'false') e;

-- exclude-tables wins over tables
SELECT opt_workload();
SELECT e::jsonb->>'op' AS op, e::jsonb->>'schema' AS schema, e::jsonb->>'table' AS tbl
FROM ev('opt_slot', 'tables', '*.*', 'exclude-tables', 'public.opt_a,Odd Schema.*', 'include-transaction', 'false', 'messages', 'false') e;

-- actions: only the listed change kinds
SELECT opt_workload();
SELECT e::jsonb->>'op' AS op, e::jsonb->>'table' AS tbl
FROM ev('opt_slot', 'actions', 'insert, truncate', 'include-transaction', 'false', 'messages', 'false') e;

-- messages=false; message-prefixes
SELECT opt_workload();
SELECT * FROM ev('opt_slot', 'messages', 'false', 'tables', 'public.none');
SELECT opt_workload();
SELECT * FROM ev('opt_slot', 'message-prefixes', 'audit,other', 'tables', 'public.none');
-- blanks around a prefix are dropped, as in tables
SELECT opt_workload();
SELECT * FROM ev('opt_slot', 'message-prefixes', 'other , debug', 'tables', 'public.none');

-- include-types and numeric-as-string
SELECT opt_workload();
SELECT * FROM ev('opt_slot', 'include-types', 'true', 'tables', 'public.opt_a', 'include-transaction', 'false');
SELECT opt_workload();
SELECT * FROM ev('opt_slot', 'numeric-as-string', 'on', 'tables', 'public.opt_a', 'actions', 'insert', 'include-transaction', 'false');

-- pack-bytes: a transaction's events share a write (a row here, a CopyData
-- message through a walsender) up to that size, one event per line; the
-- transaction's last event ends its write.  Line by line they are the
-- events written without it.
SELECT opt_workload();
SELECT opt_workload();
SELECT n AS write, count(*) AS events, string_agg(e::json->>'op', '' ORDER BY k) AS ops
  FROM pg_logical_slot_peek_changes('opt_slot', NULL, NULL, 'pack-bytes', '600') WITH ORDINALITY c(lsn, xid, data, n),
       unnest(string_to_array(c.data, E'\n')) WITH ORDINALITY u(e, k)
 GROUP BY n ORDER BY n;
-- with room for them all, a transaction is one write, B to C
SELECT n AS write, count(*) AS events, string_agg(e::json->>'op', '' ORDER BY k) AS ops
  FROM pg_logical_slot_peek_changes('opt_slot', NULL, NULL, 'pack-bytes', '65536') WITH ORDINALITY c(lsn, xid, data, n),
       unnest(string_to_array(c.data, E'\n')) WITH ORDINALITY u(e, k)
 GROUP BY n ORDER BY n;
SELECT (SELECT array_agg(e ORDER BY n, k)
          FROM pg_logical_slot_peek_changes('opt_slot', NULL, NULL, 'pack-bytes', '600') WITH ORDINALITY c(lsn, xid, data, n),
               unnest(string_to_array(c.data, E'\n')) WITH ORDINALITY u(e, k))
     = (SELECT array_agg(data ORDER BY n)
          FROM pg_logical_slot_peek_changes('opt_slot', NULL, NULL) WITH ORDINALITY c(lsn, xid, data, n))
       AS same_events;
-- without transactions the last change ends the write
SELECT count(*) AS writes, sum(cardinality(string_to_array(data, E'\n'))) AS events
  FROM pg_logical_slot_get_changes('opt_slot', NULL, NULL, 'pack-bytes', '1048576', 'include-transaction', 'false');

SELECT pg_drop_replication_slot('opt_slot');
DROP FUNCTION opt_workload();
DROP TABLE opt_a, opt_b, opt_c, opt_d;
DROP SCHEMA "Odd Schema" CASCADE;
