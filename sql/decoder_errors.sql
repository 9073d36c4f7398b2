-- Bad options are errors with an errcode, the option's name and a hint;
-- they are raised before anything is consumed, so nothing is lost.
\set ECHO none
\i test/decoder_helpers.sql
\set ECHO all

CREATE TABLE err_t (id int PRIMARY KEY);
SELECT 'init' FROM pg_create_logical_replication_slot('err_slot', 'pgcdc');
INSERT INTO err_t VALUES (1);

-- SQLSTATE, message, detail and hint of decoding with these options
CREATE FUNCTION try_options(VARIADIC opts text[]) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  st text; msg text; det text; hnt text;
BEGIN
  PERFORM * FROM pg_logical_slot_peek_changes('err_slot', NULL, NULL, VARIADIC opts);
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                          det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
  RETURN st || ': ' || msg || coalesce(E'\nDETAIL: ' || nullif(det, ''), '')
         || coalesce(E'\nHINT: ' || nullif(hnt, ''), '');
END $$;

SELECT try_options('no-such-option', 'x');
SELECT try_options('messages', 'true', 'messages', 'false');
SELECT try_options('skip-empty-xacts', 'maybe');
SELECT try_options('include-transaction', '');
SELECT try_options('format-version', '2');
SELECT try_options('actions', 'insert,upsert');
SELECT try_options('actions', 'insert,"delete');
SELECT try_options('origin', 'local');
SELECT try_options('tables', 'no_dot');
SELECT try_options('tables', 'a.b.c');
SELECT try_options('tables', 'public.');
SELECT try_options('tables', '.t');
SELECT try_options('tables', 'public.a,,public.b');
SELECT try_options('tables', '');
SELECT try_options('exclude-tables', 'public.a\');
SELECT try_options('message-prefixes', 'a\');
SELECT try_options('message-prefixes', ' ');
SELECT try_options('actions', '');
SELECT try_options('publications', '');
SELECT try_options('publications', 'a,"b');
SELECT try_options('pack-bytes', '-1');
SELECT try_options('pack-bytes', '1048577');
SELECT try_options('pack-bytes', '64k');
-- a publication that does not exist fails at the first change, as in pgoutput
SELECT try_options('publications', 'no_such_pub');
-- valid options for contrast
SELECT try_options('tables', 'public.err_t', 'actions', 'insert', 'origin', 'none', 'format-version', '1');

-- nothing was consumed by the failed calls
SELECT * FROM ev('err_slot');

SELECT pg_drop_replication_slot('err_slot');
DROP FUNCTION try_options(text[]);
DROP TABLE err_t;
