-- Value encoding: every common type round-trips through
-- jsonb_populate_record(NULL::t, new), whatever the decoding session's
-- DateStyle, IntervalStyle, TimeZone, extra_float_digits and bytea_output;
-- and those session settings are left as they were.
\set ECHO none
\i test/decoder_helpers.sql
\set ECHO all

CREATE TYPE rt_mood AS ENUM ('sad', 'happy');
CREATE DOMAIN rt_posint AS int CHECK (VALUE > 0);
CREATE DOMAIN rt_price AS numeric(10,2);
CREATE TYPE rt_pair AS (x int, y text);
CREATE TABLE rt (
  id int PRIMARY KEY,
  i2 int2, i4 int4, i8 int8, nu numeric, f4 float4, f8 float8,
  tx text, vc varchar(20), bp char(5), by bytea, bo bool,
  da date, ti time, ttz timetz, tsp timestamp, tstz timestamptz, iv interval,
  uu uuid, js json, jb jsonb, ia int[], ta text[], tsa timestamptz[], ia2 int[][],
  en rt_mood, dm rt_posint, dp rt_price, cp rt_pair, ip inet, mo money, oi oid);

SELECT 'init' FROM pg_create_logical_replication_slot('rt_slot', 'pgcdc');

INSERT INTO rt VALUES
 (1, -32768, 2147483647, -9223372036854775808, 'NaN', '-0', '1.7976931348623157e308',
  E'quote " backslash \\ slash / tab \t newline \n cr \r bell \x07 esc \x1b del \x7f',
  'varchar', 'ab', '\x00ff10', true,
  '2026-11-29', '23:59:59.999999', '10:00:00+05:30', '2026-11-29 05:28:32.123456', '2026-11-29 05:28:32.123456+00',
  '1 year 2 mons 3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '{"k": [1, 2.5, "x", null, true]}', '{"nested": {"a": [1, {"b": null}]}, "e": "\u00e9"}',
  '{1,NULL,3}', '{"a b","c,\"d","NULL",""}', '{"2020-02-29 12:00:00+00","infinity"}', '{{1,2},{3,4}}',
  'happy', 42, 12.34, ROW(7, 'x, "y"'), '192.168.0.1/24', '1234.56', 4294967295),
 (2, 32767, -2147483648, 9223372036854775807, 'Infinity', 'Infinity', '-Infinity',
  'é ü ß 日本語 😀 Ω', '', '', '', false,
  'infinity', '00:00:00', '00:00:00-12', '-infinity', 'infinity',
  '-178000000 years', '00000000-0000-0000-0000-000000000000',
  '[]', '"just a string"', '{}', '{}', '{}', '{}', 'sad', 1, -0.01, ROW(NULL, NULL), '::1', '-0.01', 0),
 (3, 0, 0, 0, '-Infinity', 'NaN', 'NaN',
  '{"not": "json, a string"}', 'x', 'x', '\x', false,
  '4713-01-01 BC', '12:34:56', '12:34:56.5+14', '0001-01-01 00:00:00', '1999-12-31 23:59:59.999999-08',
  '-1 day +02:00:00', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
  '123.0', '1e3', '{-2147483648}', '{"\\"}', '{NULL}', '{{NULL}}', 'happy', 2147483647, 99999999.99,
  ROW(-1, ''), '2001:db8::/32', '0', 1),
 (4, NULL, 1, 1, '1e-1000', '3.4028235e38', '5e-324', 'x', 'x', 'x', '\x00', NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '{"k": null}', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (5, 1, 1, 1, '-0.000001', '1.4e-45', '2.2250738585072014e-308', 'x', 'x', 'x', '\x', true,
  '2000-01-01', '00:00:01', '00:00:01+00', '2000-01-01', '2000-01-01 00:00:00+00',
  '0', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{}', '{}', '{}', '{}', '{}', '{}', 'sad', 1, 0, ROW(0, 'z'),
  '0.0.0.0/0', '92233720368547758.07', 0),
 (6, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
-- 1000-digit numbers, both sides of the point
INSERT INTO rt (id, nu) VALUES
 (7, (repeat('9', 1000))::numeric),
 (8, ('-0.' || repeat('0', 500) || repeat('7', 500))::numeric),
 (9, ('1' || repeat('0', 499) || '.' || repeat('3', 500))::numeric);
UPDATE rt SET tx = tx || ' (updated)', f8 = -f8 WHERE id IN (1, 2, 3);

-- decode under settings as far from the defaults as they go
SET DateStyle = 'SQL, DMY';
SET IntervalStyle = 'iso_8601';
SET TimeZone = 'Pacific/Chatham';
SET extra_float_digits = -15;
SET bytea_output = 'escape';
CREATE TEMP TABLE rt_events AS
  SELECT data FROM pg_logical_slot_get_changes('rt_slot', NULL, NULL, 'include-transaction', 'false');
-- decoding left the session's settings alone
SHOW DateStyle;
SHOW IntervalStyle;
SHOW TimeZone;
SHOW extra_float_digits;
SHOW bytea_output;

-- every event is one line of valid JSON (json and jsonb both parse it)
SELECT count(*) AS events,
       bool_and(data::json IS NOT NULL AND data::jsonb IS NOT NULL) AS all_json,
       bool_and(position(E'\n' IN data) = 0) AS one_line
FROM rt_events;

-- round trip: the row rebuilt from "new" equals the source row, column by column
-- (json has no equality operator: it is compared as jsonb)
CREATE TEMP TABLE rt_back AS
  SELECT (jsonb_populate_record(NULL::rt, e->'new')).*, e->>'op' AS op
  FROM (SELECT data::jsonb AS e FROM rt_events) s;
SELECT r.id, b.op,
       ROW(b.i2, b.i4, b.i8, b.nu, b.f4, b.f8, b.tx, b.vc, b.bp, b.by, b.bo, b.da, b.ti, b.ttz,
           b.tsp, b.tstz, b.iv, b.uu, b.jb, b.ia, b.ta, b.tsa, b.ia2, b.en, b.dm, b.dp, b.cp, b.ip, b.mo, b.oi)
         IS NOT DISTINCT FROM
       ROW(r.i2, r.i4, r.i8, r.nu, r.f4, r.f8, r.tx, r.vc, r.bp, r.by, r.bo, r.da, r.ti, r.ttz,
           r.tsp, r.tstz, r.iv, r.uu, r.jb, r.ia, r.ta, r.tsa, r.ia2, r.en, r.dm, r.dp, r.cp, r.ip, r.mo, r.oi) AS same_row,
       b.js::jsonb IS NOT DISTINCT FROM r.js::jsonb AS same_json
FROM rt r JOIN rt_back b ON b.id = r.id
WHERE b.op = 'U' OR r.id NOT IN (1, 2, 3)
ORDER BY r.id;
-- the columns that differ, if any, named
SELECT r.id, c.key
FROM rt r JOIN (SELECT data::jsonb AS e FROM rt_events) s ON (s.e->'new'->>'id')::int = r.id
CROSS JOIN LATERAL jsonb_each(to_jsonb(r)) c
WHERE (s.e->>'op' = 'U' OR r.id NOT IN (1, 2, 3))
  AND c.key <> 'js'
  AND (to_jsonb(jsonb_populate_record(NULL::rt, s.e->'new'))->c.key) IS DISTINCT FROM c.value;

-- the encoding itself: numbers as JSON numbers (exact digits), NaN and the
-- infinities as strings, json embedded, bool as true/false, the rest as ISO /
-- UTC / hex text
SELECT (data::jsonb->'new') - 'tx'::text AS new FROM rt_events WHERE data::jsonb->>'op' = 'I' AND (data::jsonb->'key'->>'id')::int IN (1, 2, 3, 4)
ORDER BY (data::jsonb->'key'->>'id')::int;
SELECT data::jsonb->'new'->>'tx' AS tx FROM rt_events WHERE data::jsonb->>'op' = 'I' AND (data::jsonb->'key'->>'id')::int = 1;
-- raw text of a few values, as emitted
SELECT substring(data FROM '"f4":[^,]*') AS f4, substring(data FROM '"f8":[^,]*') AS f8,
       substring(data FROM '"nu":[^,]*') AS nu, substring(data FROM '"tstz":"[^"]*"') AS tstz,
       substring(data FROM '"by":"[^"]*"') AS by
FROM rt_events WHERE data::jsonb->>'op' = 'I' AND (data::jsonb->'key'->>'id')::int BETWEEN 1 AND 5
ORDER BY (data::jsonb->'key'->>'id')::int;
-- 1000-digit numbers are JSON numbers with all their digits
SELECT (data::jsonb->'key'->>'id')::int AS id, jsonb_typeof(data::jsonb->'new'->'nu') AS type,
       length(substring(data FROM '"nu":([-0-9.]*)')) AS digits
FROM rt_events WHERE (data::jsonb->'key'->>'id')::int >= 7 ORDER BY 1;

-- json values with line breaks stay on one line (breaks become spaces)
INSERT INTO rt (id, js) VALUES (10, E'{"a":\n  [1,\r\n 2]}');
SELECT substring(data FROM '"js":[^}]*}') AS js
FROM pg_logical_slot_get_changes('rt_slot', NULL, NULL, 'include-transaction', 'false');

-- escapes anywhere in a string: before, inside and after the 8-byte words
-- that the writer skips when they need no escape
INSERT INTO rt (id, tx)
SELECT 100 + row_number() OVER (), repeat('a', i) || c || repeat('b', 17 - i) || c
FROM generate_series(0, 17) i, unnest(ARRAY['"', '\', E'\n', E'\x01', E'\x1f', 'é', '€']) c;
SELECT count(*) AS strings,
       count(*) FILTER (WHERE (jsonb_populate_record(NULL::rt, e->'new')).tx = r.tx) AS same
FROM (SELECT data::jsonb AS e
      FROM pg_logical_slot_get_changes('rt_slot', NULL, NULL, 'include-transaction', 'false')) s
JOIN rt r ON r.id = (e->'key'->>'id')::int;

-- timestamps and dates are formatted by the plugin itself: the same text as
-- the types' output functions under ISO and UTC, at the edges too
INSERT INTO rt (id, tsp, tstz, da) VALUES
 (300, '2026-01-01 00:00:00.5', '2026-01-01 00:00:00.5+00', '2026-01-01'),
 (301, '1999-12-31 23:59:59.000001', '1999-12-31 23:59:59.000001-01', '0001-01-01'),
 (302, '0001-01-01 00:00:00', '0001-01-01 00:00:00+00', '9999-12-31'),
 (303, '9999-12-31 23:59:59.99999', '9999-12-31 23:59:59.99999+00', '10000-01-01'),
 (304, '10000-01-01 00:00:00', '10000-01-01 00:00:00+00', '0001-12-31 BC'),
 (305, '0001-12-31 23:00:00 BC', '0001-12-31 23:00:00+00 BC', 'infinity'),
 (306, 'infinity', '-infinity', '-infinity'),
 (307, '2000-02-29 12:34:56.78', '2000-02-29 12:34:56.78-12:30', '2000-02-29');
CREATE TEMP TABLE rt_ts AS
  SELECT data::jsonb->'new' AS n
  FROM pg_logical_slot_get_changes('rt_slot', NULL, NULL, 'include-transaction', 'false');
SET DateStyle = 'ISO'; SET TimeZone = 'UTC';
SELECT r.id, n->>'tsp' AS tsp, n->>'tstz' AS tstz, n->>'da' AS da,
       n->>'tsp' = r.tsp::text AND n->>'tstz' = r.tstz::text AND n->>'da' = r.da::text AS as_output
FROM rt_ts JOIN rt r ON r.id = (n->>'id')::int ORDER BY r.id;
SET DateStyle = 'SQL, DMY'; SET TimeZone = 'Pacific/Chatham';

-- the one thing that cannot round-trip: a jsonb or json value that is JSON
-- null and an SQL NULL both come out as null
INSERT INTO rt (id, jb) VALUES (11, 'null'), (12, NULL);
SELECT substring(data FROM '"jb":[^,]*') AS jb
FROM pg_logical_slot_get_changes('rt_slot', NULL, NULL, 'include-transaction', 'false');

RESET DateStyle; RESET IntervalStyle; RESET TimeZone; RESET extra_float_digits; RESET bytea_output;
SELECT pg_drop_replication_slot('rt_slot');
DROP TABLE rt, rt_back, rt_ts;
DROP TYPE rt_pair; DROP DOMAIN rt_price; DROP DOMAIN rt_posint; DROP TYPE rt_mood;

-- a database that is not UTF-8: non-ASCII text goes out as \u escapes, so the
-- output is valid UTF-8 JSON and valid LATIN1 text at once
\set regress_db :DBNAME
CREATE DATABASE pgcdc_latin1 ENCODING 'LATIN1' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C';
\c pgcdc_latin1
CREATE TABLE l1 (id int PRIMARY KEY, t text, j json, jb jsonb);
SELECT 'init' FROM pg_create_logical_replication_slot('l1_slot', 'pgcdc');
INSERT INTO l1 VALUES (1, 'caf' || chr(233) || ' "' || chr(255) || '"',
					   json_build_object('caf' || chr(233), chr(255)), jsonb_build_array(chr(233)));
SELECT data FROM pg_logical_slot_get_changes('l1_slot', NULL, NULL, 'include-transaction', 'false')
\gset
SELECT :'data'::jsonb->'new'->>'t' = 'caf' || chr(233) || ' "' || chr(255) || '"' AS same,
       -- (json keeps its text: equal as JSON, its non-ASCII now escaped)
       (jsonb_populate_record(NULL::l1, :'data'::jsonb->'new')).j::jsonb = (SELECT j::jsonb FROM l1) AS same_json,
       (jsonb_populate_record(NULL::l1, :'data'::jsonb->'new')).jb = (SELECT jb FROM l1) AS same_jsonb,
       substring(:'data' FROM '"t":"[^}]*') AS raw;
SELECT pg_drop_replication_slot('l1_slot');
\c :regress_db
DROP DATABASE pgcdc_latin1;
