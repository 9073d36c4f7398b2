-- TOASTed values: changed ones are in new, unchanged ones are named in
-- unchanged_toast and never written as null.
\set ECHO none
\i test/decoder_helpers.sql
\set ECHO all

CREATE TABLE tt (id int PRIMARY KEY, small text, big text, big2 text);
ALTER TABLE tt ALTER COLUMN big SET STORAGE EXTERNAL;
ALTER TABLE tt ALTER COLUMN big2 SET STORAGE EXTERNAL;
CREATE TABLE tt_full (id int PRIMARY KEY, small text, big text);
ALTER TABLE tt_full ALTER COLUMN big SET STORAGE EXTERNAL;
ALTER TABLE tt_full REPLICA IDENTITY FULL;

SELECT 'init' FROM pg_create_logical_replication_slot('tt_slot', 'pgcdc');

INSERT INTO tt VALUES (1, 's', repeat('a', 10000), repeat('b', 9000));
UPDATE tt SET small = 't' WHERE id = 1;                 -- both big values unchanged
UPDATE tt SET big = repeat('c', 12000) WHERE id = 1;    -- big changed, big2 unchanged
UPDATE tt SET big2 = NULL, small = NULL WHERE id = 1;   -- set to null: a value, not unchanged
DELETE FROM tt;
INSERT INTO tt_full VALUES (1, 's', repeat('d', 8000));
UPDATE tt_full SET small = 'u';
DELETE FROM tt_full;

SELECT e->>'op' AS op, e->>'table' AS tbl,
       (SELECT string_agg(k || '=' || coalesce(length(v), -1)::text, ' ' ORDER BY k)
          FROM jsonb_each_text(e->'new') AS n(k, v)) AS new_lengths,
       (SELECT string_agg(k || '=' || coalesce(length(v), -1)::text, ' ' ORDER BY k)
          FROM jsonb_each_text(e->'old') AS o(k, v)) AS old_lengths,
       e->'unchanged_toast' AS unchanged_toast,
       left(e->'new'->>'big', 3) AS big_starts
FROM (SELECT data::jsonb AS e
      FROM pg_logical_slot_get_changes('tt_slot', NULL, NULL, 'include-transaction', 'false')) s;

-- the same through the reorder buffer's spill files (64kB work_mem in the tests)
BEGIN;
INSERT INTO tt SELECT g, 'x', repeat(chr(64 + g % 26), 5000 + g), NULL FROM generate_series(1, 60) g;
UPDATE tt SET small = 'y';
COMMIT;
SELECT e->>'op' AS op, count(*),
       count(*) FILTER (WHERE length(e->'new'->>'big') = 5000 + (e->'key'->>'id')::int) AS big_complete,
       count(*) FILTER (WHERE e->'unchanged_toast' = '["big"]') AS big_unchanged,
       count(*) FILTER (WHERE e->'new' ? 'big' AND e->'new'->'big' = 'null') AS big_null
FROM (SELECT data::jsonb AS e
      FROM pg_logical_slot_get_changes('tt_slot', NULL, NULL, 'include-transaction', 'false')) s
GROUP BY 1 ORDER BY 1;

-- a key stored out of line is logged as the old key by every update, changed or
-- not: "old" only when it changed
CREATE TABLE tt_key (k text PRIMARY KEY, v int);
ALTER TABLE tt_key ALTER COLUMN k SET STORAGE EXTERNAL;
INSERT INTO tt_key VALUES (repeat('k', 2600), 1);
UPDATE tt_key SET v = 2;
UPDATE tt_key SET k = repeat('j', 2600), v = 3;
UPDATE tt_key SET k = repeat('j', 2600), v = 4;
SELECT e->>'op' AS op, e->'new'->>'v' AS v, length(e->'key'->>'k') AS key_len, left(e->'key'->>'k', 1) AS key,
       e ? 'old' AS has_old, left(e->'old'->>'k', 1) AS old_key, e->'unchanged_toast' AS unchanged_toast
FROM (SELECT data::jsonb AS e
      FROM pg_logical_slot_get_changes('tt_slot', NULL, NULL, 'include-transaction', 'false')) s;

SELECT pg_drop_replication_slot('tt_slot');
DROP TABLE tt, tt_full, tt_key;
