-- pgcdc extension: create_history_table and scd2_merge
CREATE EXTENSION pgcdc;
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
\set SHOW_CONTEXT never

CREATE TABLE customer (id int PRIMARY KEY, name text, city text, visits int);
INSERT INTO customer VALUES (1, 'Ann', 'Oslo', 1), (2, 'Bob', 'Rome', 1), (3, 'Cid', NULL, 1);
SELECT pgcdc.create_history_table('customer', 'customer_history');
\d customer_history

CREATE VIEW h AS
SELECT id, name, city, visits, _valid_from::date AS valid_from, _valid_to, _is_current AS cur,
	   _is_deleted AS del, _version AS v, length(_row_hash) AS hash_len
  FROM customer_history;

-- first load: every key new
SELECT * FROM pgcdc.scd2_merge('customer_history', 'customer', '{id}', valid_at => '2024-01-01');
SELECT * FROM h ORDER BY id, valid_from;

-- the same snapshot again changes nothing
SELECT * FROM pgcdc.scd2_merge('customer_history', 'customer', '{id}', valid_at => '2024-01-02');

-- a change, a delete, a new key; NULL to value counts as a change
UPDATE customer SET city = 'Bergen' WHERE id = 1;
UPDATE customer SET city = 'Paris' WHERE id = 3;
DELETE FROM customer WHERE id = 2;
INSERT INTO customer VALUES (4, 'Dan', 'Kyiv', 1);
SELECT * FROM pgcdc.scd2_merge('customer_history', 'customer', '{id}', valid_at => '2024-01-03');
SELECT * FROM h ORDER BY id, valid_from;

-- track_columns: a change to visits alone opens no version
UPDATE customer SET visits = 2 WHERE id = 1;
SELECT * FROM pgcdc.scd2_merge('customer_history', 'customer', '{id}', '{name,city}',
							   valid_at => '2024-01-04');
-- value to NULL is a change too
UPDATE customer SET city = NULL WHERE id = 3;
SELECT * FROM pgcdc.scd2_merge('customer_history', 'customer', '{id}', '{name,city}',
							   valid_at => '2024-01-05');
SELECT * FROM h ORDER BY id, valid_from;

-- the deleted key comes back: a new version after the gap (not before its
-- last version ended: versions of a key never overlap)
INSERT INTO customer VALUES (2, 'Bob', 'Rome', 1);
SELECT * FROM pgcdc.scd2_merge('customer_history', 'customer', '{id}', valid_at => '2024-01-02');
SELECT * FROM pgcdc.scd2_merge('customer_history', 'customer', '{id}', valid_at => '2024-01-06');
SELECT * FROM h WHERE id = 2 ORDER BY valid_from;

-- hard_deletes => ignore: an absent key stays current
DELETE FROM customer WHERE id = 4;
SELECT * FROM pgcdc.scd2_merge('customer_history', 'customer', '{id}', valid_at => '2024-01-07',
							   hard_deletes => 'ignore');
SELECT * FROM h WHERE id = 4 ORDER BY valid_from;

-- hard_deletes => new_record: the delete is a version of its own
SELECT * FROM pgcdc.scd2_merge('customer_history', 'customer', '{id}', valid_at => '2024-01-08',
							   hard_deletes => 'new_record');
SELECT * FROM h WHERE id = 4 ORDER BY valid_from;
-- again: nothing more to do
SELECT * FROM pgcdc.scd2_merge('customer_history', 'customer', '{id}', valid_at => '2024-01-09',
							   hard_deletes => 'new_record');
-- and back again
INSERT INTO customer VALUES (4, 'Dan', 'Lviv', 1);
SELECT * FROM pgcdc.scd2_merge('customer_history', 'customer', '{id}', valid_at => '2024-01-10',
							   hard_deletes => 'new_record');
SELECT * FROM h WHERE id = 4 ORDER BY valid_from;

-- one current row per key, intervals positive, never overlapping
CREATE VIEW invariants AS
SELECT id, count(*) FILTER (WHERE _is_current) AS current_rows,
	   bool_and(_valid_from < _valid_to) AS positive,
	   bool_and(coalesce(next_from >= _valid_to, true)) AS no_overlap,
	   array_agg(_version ORDER BY _valid_from) AS versions
  FROM (SELECT *, lead(_valid_from) OVER (PARTITION BY id ORDER BY _valid_from) AS next_from
		  FROM customer_history) x
 GROUP BY id;
SELECT * FROM invariants ORDER BY id;

-- a second merge at the same instant as a version's start is refused, and
-- nothing of it is applied
UPDATE customer SET city = 'Turin' WHERE id = 2;
UPDATE customer SET name = 'Ann B' WHERE id = 1;
SELECT * FROM pgcdc.scd2_merge('customer_history', 'customer', '{id}', valid_at => '2024-01-06');
SELECT * FROM pgcdc.scd2_merge('customer_history', 'customer', '{id}', valid_at => '2024-01-01');
SELECT count(*) FROM customer_history;

-- a snapshot with other column types and an extra column; a two-column key;
-- names with quotes, spaces, upper case and semicolons
CREATE SCHEMA "Sales; DROP TABLE customer";
CREATE TABLE "Sales; DROP TABLE customer"."Price ""List""" (
	"Region" text, "sku id" int, "Price" numeric(8,2), "note;" text,
	PRIMARY KEY ("Region", "sku id"));
SELECT pgcdc.create_history_table('"Sales; DROP TABLE customer"."Price ""List"""',
								  '"Sales; DROP TABLE customer"."Price History"');
CREATE TEMP TABLE price_snap ("sku id" bigint, "Region" varchar, "Price" text, "note;" text, extra int);
INSERT INTO price_snap VALUES (1, 'EU', '9.50', 'a', 0), (1, 'US', '10', NULL, 0), (2, 'EU', '3', 'b', 0);
SELECT * FROM pgcdc.scd2_merge('"Sales; DROP TABLE customer"."Price History"', 'price_snap',
							   '{Region,sku id}', valid_at => '2024-02-01');
UPDATE price_snap SET "Price" = '9.75' WHERE "sku id" = 1 AND "Region" = 'EU';
UPDATE price_snap SET "note;" = 'n' WHERE "Region" = 'US';
SELECT * FROM pgcdc.scd2_merge('"Sales; DROP TABLE customer"."Price History"', 'price_snap',
							   '{Region,sku id}', '{Price}', valid_at => '2024-02-02');
SELECT "Region", "sku id", "Price", "note;", _valid_from::date, _valid_to::date, _is_current, _version
  FROM "Sales; DROP TABLE customer"."Price History" ORDER BY 1, 2, 5;

-- errors; none of them leaves anything behind
SELECT count(*) AS rows_before FROM customer_history;
CREATE TEMP TABLE dup_snap AS SELECT * FROM customer;
INSERT INTO dup_snap VALUES (1, 'Ann', 'Oslo', 1);
SELECT * FROM pgcdc.scd2_merge('customer_history', 'dup_snap', '{id}', valid_at => '2024-03-01');
CREATE TEMP TABLE null_snap AS SELECT * FROM customer;
INSERT INTO null_snap VALUES (NULL, 'Nobody', NULL, 0);
SELECT * FROM pgcdc.scd2_merge('customer_history', 'null_snap', '{id}', valid_at => '2024-03-01');
SELECT * FROM pgcdc.scd2_merge('customer', 'customer', '{id}', valid_at => '2024-03-01');
SELECT * FROM pgcdc.scd2_merge('h', 'customer', '{id}', valid_at => '2024-03-01');
SELECT * FROM pgcdc.scd2_merge('customer_history', 'no_such_table', '{id}');
SELECT * FROM pgcdc.scd2_merge(NULL, 'customer', '{id}');
SELECT * FROM pgcdc.scd2_merge('customer_history', NULL, '{id}');
SELECT * FROM pgcdc.scd2_merge('customer_history', 'customer', NULL);
SELECT * FROM pgcdc.scd2_merge('customer_history', 'customer', '{nosuch}');
SELECT * FROM pgcdc.scd2_merge('customer_history', 'customer', '{id}', '{nosuch}');
SELECT * FROM pgcdc.scd2_merge('customer_history', 'customer', '{id}', '{_version}');
SELECT * FROM pgcdc.scd2_merge('customer_history', 'customer', '{id}', valid_at => NULL);
SELECT * FROM pgcdc.scd2_merge('customer_history', 'customer', '{id}', hard_deletes => NULL);
SELECT * FROM pgcdc.scd2_merge('customer_history', 'customer', '{id}', valid_at => 'infinity');
SELECT * FROM pgcdc.scd2_merge('customer_history', 'customer', '{id}', hard_deletes => 'purge');
SELECT count(*) AS rows_after FROM customer_history;
SELECT pgcdc.create_history_table('customer', 'customer_history');
SELECT pgcdc.create_history_table('h', 'h2');
SELECT pgcdc.create_history_table(NULL, 'h2');
SELECT pgcdc.create_history_table('customer', NULL);
SELECT pgcdc.create_history_table('customer', 'h2', '{nosuch}');
SELECT pgcdc.create_history_table('customer', 'no_schema.h2');
CREATE TABLE nokey (a int);
SELECT pgcdc.create_history_table('nokey', 'h2');
CREATE TABLE clash (id int PRIMARY KEY, _version int);
SELECT pgcdc.create_history_table('clash', 'h2');
SELECT to_regclass('h2') IS NULL AS nothing_created;

-- the merge statement is prepared once and reused; valid_at reaches it
-- exactly, whatever the session's DateStyle and TimeZone
CREATE TABLE pm (id int PRIMARY KEY, name text);
INSERT INTO pm VALUES (1, 'a'), (2, 'b');
SELECT pgcdc.create_history_table('pm', 'pm_history');
DEALLOCATE ALL;
SET datestyle = 'SQL, DMY';
SET timezone = 'Asia/Kolkata';
SELECT * FROM pgcdc.scd2_merge('pm_history', 'pm', '{id}', valid_at => '2024-02-01 10:00:00.123456+05:30');
UPDATE pm SET name = 'c' WHERE id = 1;
SET datestyle = 'Postgres, MDY';
SET timezone = 'America/St_Johns';
SELECT * FROM pgcdc.scd2_merge('pm_history', 'pm', '{id}', valid_at => '2024-02-02 10:00:00.654321+05:30');
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';
SELECT id, name, _valid_from, _valid_to FROM pm_history ORDER BY id, _version;
SELECT count(*) AS statements, sum(generic_plans + custom_plans) AS runs FROM pg_prepared_statements;

DROP EXTENSION pgcdc;
DROP SCHEMA "Sales; DROP TABLE customer" CASCADE;
DROP VIEW h, invariants;
DROP TABLE customer, customer_history, nokey, clash, pm, pm_history;
