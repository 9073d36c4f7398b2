-- What key and old carry under each REPLICA IDENTITY, including key changes.
\set ECHO none
\i test/decoder_helpers.sql
\set ECHO all

CREATE TABLE ri_default (id int PRIMARY KEY, v text, w int);
CREATE TABLE ri_nopk (id int, v text);
CREATE TABLE ri_full (id int PRIMARY KEY, v text, w int);
ALTER TABLE ri_full REPLICA IDENTITY FULL;
CREATE TABLE ri_full_nopk (id int, v text);
ALTER TABLE ri_full_nopk REPLICA IDENTITY FULL;
CREATE TABLE ri_index (id int PRIMARY KEY, code text NOT NULL, region int NOT NULL, v text);
CREATE UNIQUE INDEX ri_index_code ON ri_index (region, code);
ALTER TABLE ri_index REPLICA IDENTITY USING INDEX ri_index_code;
CREATE TABLE ri_nothing (id int PRIMARY KEY, v text);
ALTER TABLE ri_nothing REPLICA IDENTITY NOTHING;
CREATE TABLE ri_composite (b int, a int, v text, PRIMARY KEY (a, b));

SELECT 'init' FROM pg_create_logical_replication_slot('ri_slot', 'pgcdc');

-- DEFAULT: key from the primary key; a key change carries the old key
INSERT INTO ri_default VALUES (1, 'a', 1);
UPDATE ri_default SET v = 'b' WHERE id = 1;
UPDATE ri_default SET id = 2 WHERE id = 1;
DELETE FROM ri_default WHERE id = 2;
SELECT * FROM ev('ri_slot', 'include-transaction', 'false');

-- DEFAULT without a primary key: no key
INSERT INTO ri_nopk VALUES (1, 'a');
UPDATE ri_nopk SET v = 'b';
DELETE FROM ri_nopk;
SELECT * FROM ev('ri_slot', 'include-transaction', 'false');

-- FULL: the primary key as key, the whole old row as old
INSERT INTO ri_full VALUES (1, 'a', 1);
UPDATE ri_full SET v = NULL WHERE id = 1;
UPDATE ri_full SET id = 2 WHERE id = 1;
DELETE FROM ri_full;
SELECT * FROM ev('ri_slot', 'include-transaction', 'false');

-- FULL without a primary key: the whole row is the key
INSERT INTO ri_full_nopk VALUES (1, 'a');
UPDATE ri_full_nopk SET v = 'b';
DELETE FROM ri_full_nopk;
SELECT * FROM ev('ri_slot', 'include-transaction', 'false');

-- USING INDEX: the index columns, in index order
INSERT INTO ri_index VALUES (1, 'x', 7, 'a');
UPDATE ri_index SET v = 'b';
UPDATE ri_index SET code = 'y';
DELETE FROM ri_index;
SELECT * FROM ev('ri_slot', 'include-transaction', 'false');

-- NOTHING: key is null, deletes say only which table
INSERT INTO ri_nothing VALUES (1, 'a');
UPDATE ri_nothing SET v = 'b';
DELETE FROM ri_nothing;
SELECT * FROM ev('ri_slot', 'include-transaction', 'false');

-- a composite primary key, in index order
INSERT INTO ri_composite VALUES (1, 2, 'a');
UPDATE ri_composite SET b = 3;
SELECT * FROM ev('ri_slot', 'include-transaction', 'false');

-- the identity changes mid-stream: events follow the catalog as of the change
INSERT INTO ri_default VALUES (5, 'a', 5);
ALTER TABLE ri_default REPLICA IDENTITY FULL;
UPDATE ri_default SET v = 'b';
ALTER TABLE ri_default ADD COLUMN extra text DEFAULT 'e';
UPDATE ri_default SET w = 6;
ALTER TABLE ri_default DROP COLUMN v;
DELETE FROM ri_default;
SELECT * FROM ev('ri_slot', 'include-transaction', 'false');

SELECT pg_drop_replication_slot('ri_slot');
DROP TABLE ri_default, ri_nopk, ri_full, ri_full_nopk, ri_index, ri_nothing, ri_composite;
