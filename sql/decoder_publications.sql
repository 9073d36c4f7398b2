-- publications: only tables in the named publications, with their publish
-- actions, and membership as of each change (like pgoutput).
\set ECHO none
\i test/decoder_helpers.sql
\set ECHO all

CREATE SCHEMA pubs;
CREATE TABLE pub_a (id int PRIMARY KEY);
CREATE TABLE pub_b (id int PRIMARY KEY);
CREATE TABLE pubs.c (id int PRIMARY KEY);
CREATE TABLE pub_parted (id int PRIMARY KEY) PARTITION BY RANGE (id);
CREATE TABLE pub_parted_1 PARTITION OF pub_parted FOR VALUES FROM (0) TO (100);
CREATE PUBLICATION p_ins FOR TABLE pub_a WITH (publish = 'insert');
CREATE PUBLICATION p_schema FOR TABLES IN SCHEMA pubs;
CREATE PUBLICATION p_parted FOR TABLE pub_parted;
CREATE PUBLICATION "P Quoted" FOR TABLE pub_b WITH (publish = 'delete');

SELECT 'init' FROM pg_create_logical_replication_slot('pub_slot', 'pgcdc');

INSERT INTO pub_a VALUES (1);
UPDATE pub_a SET id = 2;            -- p_ins does not publish updates
INSERT INTO pub_b VALUES (1);       -- not in p_ins or p_schema (yet)
INSERT INTO pubs.c VALUES (1);      -- in p_schema
INSERT INTO pub_parted VALUES (5);  -- a partition of a published table
ALTER PUBLICATION p_ins ADD TABLE pub_b;
INSERT INTO pub_b VALUES (2);       -- now in p_ins
ALTER PUBLICATION p_ins DROP TABLE pub_a;
INSERT INTO pub_a VALUES (3);       -- no longer published
ALTER PUBLICATION p_ins SET (publish = 'insert, delete');
DELETE FROM pub_b WHERE id = 1;     -- deletes published from now on
DELETE FROM pubs.c;
BEGIN;
INSERT INTO pub_a VALUES (4);
ALTER PUBLICATION p_ins ADD TABLE pub_a;   -- in the middle of a transaction
INSERT INTO pub_a VALUES (5);
COMMIT;

SELECT e::jsonb->>'op' AS op, e::jsonb->>'schema' AS schema, e::jsonb->>'table' AS tbl,
       e::jsonb->'key' AS key
FROM ev('pub_slot', 'publications', 'p_ins,p_schema,p_parted', 'include-transaction', 'false') e;

-- quoted publication names use SQL identifier syntax, as in pgoutput
DELETE FROM pub_b;
INSERT INTO pub_b VALUES (9);
SELECT e::jsonb->>'op' AS op, e::jsonb->>'table' AS tbl, e::jsonb->'key' AS key
FROM ev('pub_slot', 'publications', '"P Quoted"', 'include-transaction', 'false') e;

-- a FOR ALL TABLES publication and the actions option combine
CREATE PUBLICATION p_all FOR ALL TABLES;
INSERT INTO pub_a VALUES (10);
DELETE FROM pub_a WHERE id = 10;
SELECT e::jsonb->>'op' AS op, e::jsonb->>'table' AS tbl, e::jsonb->'key' AS key
FROM ev('pub_slot', 'publications', 'p_all', 'actions', 'delete', 'include-transaction', 'false') e;

SELECT pg_drop_replication_slot('pub_slot');
DROP PUBLICATION p_ins, p_schema, p_parted, "P Quoted", p_all;
DROP TABLE pub_a, pub_b, pub_parted;
DROP SCHEMA pubs CASCADE;
