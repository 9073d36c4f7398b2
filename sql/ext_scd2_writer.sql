-- pgcdc extension: scd2_apply_changes writes a plain batch from C
-- (scd2_writer.c); it must give what its SQL statement gives, batch by
-- batch: the same history, the same counts, the same errors.
CREATE EXTENSION pgcdc;
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
\set SHOW_CONTEXT never

CREATE TABLE item (id int PRIMARY KEY, name text, qty int, note text);
SELECT pgcdc.create_history_table('item', 'hist_c');
SELECT pgcdc.create_history_table('item', 'hist_sql');
-- and a key of two columns, one of them text
CREATE TABLE item2 (region text, id int, name text, qty int, note text, PRIMARY KEY (region, id));
SELECT pgcdc.create_history_table('item2', 'hist2_c');
SELECT pgcdc.create_history_table('item2', 'hist2_sql');
-- as the consumer stages them: position (lsn, seq), commit time, op, row
-- (region: item2's only)
CREATE TABLE changes (op text, _source_lsn pg_lsn, _source_seq int, _commit_ts timestamptz,
					  id int, name text, qty int, note text, region text);
CREATE TABLE applied (LIKE changes);
CREATE TABLE outcome (round int, writer text, counts text, state text, staged boolean,
					  history text, PRIMARY KEY (round, writer));

-- Apply the batch in changes to target with one writer; note what it gave,
-- whether it took the staged path (calls of pgcdc._stage, counted in this
-- transaction) and the whole history after it.
CREATE FUNCTION stage_calls() RETURNS bigint LANGUAGE sql AS $$
	SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions
	 WHERE schemaname = 'pgcdc' AND funcname = '_stage'
$$;
CREATE FUNCTION apply_with(r int, writer text, target regclass, track text[],
						   keys text[] DEFAULT '{id}') RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	res text;
	err text;
	staged bigint := stage_calls();
	history text;
BEGIN
	PERFORM set_config('pgcdc.scd2_writer', writer, true);
	BEGIN
		SELECT ROW(a.*)::text INTO res
		  FROM pgcdc.scd2_apply_changes(target, 'changes', keys, '_source_lsn,_source_seq',
										track_columns => track, valid_from_column => '_commit_ts') a;
	EXCEPTION WHEN OTHERS THEN
		err := SQLSTATE;
	END;
	PERFORM set_config('pgcdc.scd2_writer', '', true);
	EXECUTE format('SELECT md5(string_agg(ROW(h.*)::text, E''\n'' ORDER BY ROW(h.*)::text)) FROM %s h',
				   target) INTO history;
	INSERT INTO outcome VALUES (r, writer, res, err, stage_calls() > staged, history);
END
$$;

-- 400 random batches of 1-24 changes over 6 keys: inserts, updates and
-- deletes whether or not the key has a version; transactions of several
-- changes (one time) and times that repeat across transactions and
-- batches (zero-length versions: collapse, overwrite, drop); now and then a
-- clock that goes back, a replayed change or one twice at one position
-- (staged or refused, by both); track_columns all or two of three.  Each
-- batch goes to both pairs of histories: key id (rounds 1-400), key
-- (region, id) (rounds 10001-10400, where now and then a region is NULL:
-- refused).  Histories compared after every round.
BEGIN;
SET LOCAL track_functions = 'all';
SELECT setseed(0.42);
DO $$
DECLARE
	lsn bigint := 1000;
	seq int := 0;
	clock timestamptz := '2024-01-01';
	n int;
	track text[];
BEGIN
	FOR r IN 1 .. 400 LOOP
		DELETE FROM changes;
		n := 1 + floor(random() * 24)::int;
		FOR i IN 1 .. n LOOP
			IF i = 1 OR random() < 0.4 THEN		-- a new transaction
				lsn := lsn + 1 + floor(random() * 3)::int;
				seq := 0;
				clock := clock + (ARRAY[interval '0', interval '1 second', interval '1 microsecond',
										interval '1 hour'])[1 + floor(random() * 4)::int];
			ELSE
				seq := seq + 1;
			END IF;
			INSERT INTO changes VALUES (
				(ARRAY['I', 'U', 'U', 'D'])[1 + floor(random() * 4)::int],
				pg_lsn('0/0') + lsn, seq,
				CASE WHEN random() < 0.03 THEN clock - interval '1 minute' ELSE clock END,
				1 + floor(random() * 6)::int,
				(ARRAY['ann', 'bob', NULL])[1 + floor(random() * 3)::int],
				(ARRAY[1, 2, NULL])[1 + floor(random() * 3)::int],
				'note ' || floor(random() * 3)::int,
				CASE WHEN random() < 0.003 THEN NULL
					 ELSE (ARRAY['north', 'south'])[1 + floor(random() * 2)::int] END);
		END LOOP;
		IF random() < 0.04 THEN		-- a replay of changes applied before
			INSERT INTO changes SELECT * FROM applied ORDER BY random() LIMIT 3;
		END IF;
		IF random() < 0.02 THEN		-- two changes of a key at one position
			INSERT INTO changes SELECT * FROM changes LIMIT 1;
		END IF;
		track := CASE WHEN random() < 0.3 THEN '{name,qty}' END;
		PERFORM apply_with(r, '', 'hist_c', track);
		PERFORM apply_with(r, 'sql', 'hist_sql', track);
		PERFORM apply_with(10000 + r, '', 'hist2_c', track, '{region,id}');
		PERFORM apply_with(10000 + r, 'sql', 'hist2_sql', track, '{region,id}');
		INSERT INTO applied SELECT * FROM changes;
	END LOOP;
END
$$;

COMMIT;

-- every round gave the same counts (or the same error) and the same
-- history; most were written by the C writer, the others staged by both
SELECT count(*) AS rounds,
	   count(*) FILTER (WHERE c.counts IS NOT DISTINCT FROM s.counts
						AND c.state IS NOT DISTINCT FROM s.state) AS same_result,
	   count(*) FILTER (WHERE c.history = s.history) AS same_history,
	   count(*) FILTER (WHERE NOT c.staged AND c.state IS NULL) > 600 AS mostly_c,
	   count(*) FILTER (WHERE c.staged) > 20 AS some_staged
  FROM outcome c JOIN outcome s USING (round)
 WHERE c.writer = '' AND s.writer = 'sql';
SELECT c.state, count(*) > 0 AS seen FROM outcome c WHERE c.state IS NOT NULL GROUP BY 1 ORDER BY 1;
SELECT (SELECT count(*) FROM hist_c) > 2000 AS many_versions,
	   (SELECT count(*) FROM hist_c WHERE _is_current) AS current_keys,
	   (SELECT count(*) FROM hist2_c) > 2000 AS many_versions_2;

-- values stored out of line (TOAST) in the changes, and NULLs: the same too
DELETE FROM changes;
INSERT INTO changes
SELECT 'U', '0/F0000000'::pg_lsn + g, 0, timestamptz '2029-01-01' + g * interval '1 hour', 1 + g % 6,
	   CASE WHEN g % 2 = 0 THEN NULL ELSE 'big' END, NULL,
	   (SELECT string_agg(md5((g * 10000 + i)::text), '') FROM generate_series(1, 4000) i)
  FROM generate_series(1, 12) g;
SELECT apply_with(1000, '', 'hist_c', NULL), apply_with(1000, 'sql', 'hist_sql', NULL);
SELECT c.counts, c.counts = s.counts AND c.history = s.history AS same
  FROM outcome c JOIN outcome s USING (round)
 WHERE round = 1000 AND c.writer = '' AND s.writer = 'sql';
SELECT count(*) AS big_notes FROM hist_c WHERE length(note) = 128000;

-- A target the C writer leaves to the statement gives the same too: one
-- with a trigger, one with row security.
CREATE TABLE seen (n int);
CREATE FUNCTION count_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.seen VALUES (1); RETURN NEW; END $$;
SELECT pgcdc.create_history_table('item', 'hist_trig');
CREATE TRIGGER hist_trig_count BEFORE INSERT ON hist_trig FOR EACH ROW EXECUTE FUNCTION count_row();
DELETE FROM changes;
INSERT INTO changes VALUES ('I', '0/10', 0, '2024-01-01', 1, 'ann', 1, 'x'),
						   ('U', '0/11', 0, '2024-01-02', 1, 'bob', 1, 'x'),
						   ('I', '0/11', 1, '2024-01-02', 2, 'cy', 2, 'y');
SELECT * FROM pgcdc.scd2_apply_changes('hist_trig', 'changes', '{id}', '_source_lsn,_source_seq',
									   valid_from_column => '_commit_ts');
SELECT count(*) AS trigger_fired FROM seen;
SELECT id, name, _valid_from, _valid_to, _version FROM hist_trig ORDER BY id, _valid_from;

-- row security that refuses bob's row, for a role it applies to
CREATE ROLE scd2_writer_rls;
SELECT pgcdc.create_history_table('item', 'hist_rls');
GRANT ALL ON hist_rls TO scd2_writer_rls;
GRANT SELECT ON changes TO scd2_writer_rls;
ALTER TABLE hist_rls ENABLE ROW LEVEL SECURITY;
CREATE POLICY no_bob ON hist_rls USING (true) WITH CHECK (name <> 'bob');
SET ROLE scd2_writer_rls;
SELECT * FROM pgcdc.scd2_apply_changes('hist_rls', 'changes', '{id}', '_source_lsn,_source_seq',
									   valid_from_column => '_commit_ts');
RESET ROLE;
SELECT count(*) AS rls_versions FROM hist_rls;

-- A role with every privilege but DELETE: refused as the statement refuses it
CREATE ROLE scd2_writer_nodelete;
SELECT pgcdc.create_history_table('item', 'hist_nodel');
GRANT SELECT, INSERT, UPDATE ON hist_nodel TO scd2_writer_nodelete;
GRANT SELECT ON changes TO scd2_writer_nodelete;
SET ROLE scd2_writer_nodelete;
SELECT * FROM pgcdc.scd2_apply_changes('hist_nodel', 'changes', '{id}', '_source_lsn,_source_seq',
									   valid_from_column => '_commit_ts');
RESET ROLE;
GRANT DELETE ON hist_nodel TO scd2_writer_nodelete;
SET ROLE scd2_writer_nodelete;
SELECT * FROM pgcdc.scd2_apply_changes('hist_nodel', 'changes', '{id}', '_source_lsn,_source_seq',
									   valid_from_column => '_commit_ts');
RESET ROLE;
SELECT id, name, _valid_from, _valid_to, _version FROM hist_nodel ORDER BY id, _valid_from;

-- the C writer holds a batch in memory: one of more than 100,000 rows is
-- left to the statement
CREATE TABLE big (LIKE changes);
INSERT INTO big
SELECT 'I', pg_lsn('0/0') + g, 0, timestamptz '2025-01-01' + g * interval '1 second', g, 'n', 1, 'x'
  FROM generate_series(1, 100001) g;
SELECT pgcdc.create_history_table('item', 'hist_big');
BEGIN;
SET LOCAL track_functions = 'all';
SELECT * FROM pgcdc.scd2_apply_changes('hist_big', 'big', '{id}', '_source_lsn,_source_seq',
									   valid_from_column => '_commit_ts');
SELECT f.funcname, f.calls FROM pg_stat_xact_user_functions f
 WHERE f.schemaname = 'pgcdc' AND f.funcname IN ('_scd2_write', '_scd2_fast') ORDER BY 1;
COMMIT;
SELECT count(*), count(*) FILTER (WHERE _is_current) AS current FROM hist_big;

-- anyone may call the C writer with a statement of their own: one whose
-- columns do not have the history's types is refused (nothing is written)
PREPARE not_the_types AS
SELECT 'one'::text AS id, 'ann'::text AS name, 1 AS qty, 'n'::text AS note, 'I'::text AS pgcdc_op,
	   '{1}'::numeric[] AS pgcdc_seq, now() AS pgcdc_vf, '0/1'::pg_lsn AS pgcdc_lsn,
	   1 AS pgcdc_lseq, NULL::bytea AS pgcdc_h;
SELECT pgcdc._scd2_write('hist_c', 'changes', 'not_the_types', '{id}', NULL);
DEALLOCATE not_the_types;

-- _row_hash is sha256(record_send(ROW(tracked columns)::record)) whatever
-- the columns' types (the C writer hashes the changes itself): as the
-- statement stores it, and as documented
CREATE DOMAIN small_int AS int CHECK (VALUE < 1000);
CREATE TABLE typed (id int PRIMARY KEY, n numeric(12,2), u uuid, t timestamptz, f float8, j jsonb,
					a int[], d small_int, b bool, y bytea, v varchar(20), big text);
SELECT pgcdc.create_history_table('typed', 'typed_c'), pgcdc.create_history_table('typed', 'typed_sql');
CREATE TABLE typed_changes (op text, _source_lsn pg_lsn, _source_seq int, _commit_ts timestamptz,
							LIKE typed);
INSERT INTO typed_changes
SELECT CASE WHEN g % 5 = 0 THEN 'D' WHEN g > 6 THEN 'U' ELSE 'I' END, pg_lsn('1/0') + g, 0,
	   timestamptz '2031-01-01' + g * interval '1 minute', g % 6,
	   CASE WHEN g % 4 <> 0 THEN g * 1.25 END, md5(g::text)::uuid,
	   timestamptz '2020-02-29 12:00' + g * interval '1 day', CASE WHEN g % 3 <> 0 THEN g / 7.0 END,
	   jsonb_build_object('g', g, 'l', ARRAY[g, g]), ARRAY[g, NULL, g * 2], g, g % 2 = 0,
	   decode(md5(g::text), 'hex'), 'v' || g,
	   CASE WHEN g % 6 = 1
			THEN (SELECT string_agg(md5((g * 1000 + i)::text), '') FROM generate_series(1, 2000) i) END
  FROM generate_series(1, 30) g;
BEGIN;
SET LOCAL track_functions = 'all';
SELECT * FROM pgcdc.scd2_apply_changes('typed_c', 'typed_changes', '{id}', '_source_lsn,_source_seq',
									   valid_from_column => '_commit_ts');
SELECT f.funcname, f.calls FROM pg_stat_xact_user_functions f
 WHERE f.schemaname = 'pgcdc' AND f.funcname IN ('_scd2_write', '_scd2_fast', '_stage') ORDER BY 1;
COMMIT;
SET pgcdc.scd2_writer = sql;
SELECT * FROM pgcdc.scd2_apply_changes('typed_sql', 'typed_changes', '{id}', '_source_lsn,_source_seq',
									   valid_from_column => '_commit_ts');
RESET pgcdc.scd2_writer;
SELECT count(*) AS versions,
	   count(*) FILTER (WHERE h._row_hash = sha256(record_send(ROW(h.n, h.u, h.t, h.f, h.j, h.a, h.d, h.b,
																	   h.y, h.v, h.big)::record)))
		   AS hash_as_documented,
	   md5(string_agg(ROW(h.*)::text, ',' ORDER BY ROW(h.*)::text)) =
		   (SELECT md5(string_agg(ROW(s.*)::text, ',' ORDER BY ROW(s.*)::text)) FROM typed_sql s)
		   AS same_as_statement
  FROM typed_c h;
-- with track_columns, of those alone
TRUNCATE typed_c;
SELECT * FROM pgcdc.scd2_apply_changes('typed_c', 'typed_changes', '{id}', '_source_lsn,_source_seq',
									   track_columns => '{j,n}', valid_from_column => '_commit_ts');
SELECT count(*) AS versions,
	   count(*) FILTER (WHERE h._row_hash = sha256(record_send(ROW(h.j, h.n)::record)))
		   AS hash_as_documented
  FROM typed_c h;

-- a constraint the C writer's row breaks fails as the statement's would
ALTER TABLE hist_c ADD CONSTRAINT qty_small CHECK (qty < 100);
DELETE FROM changes;
INSERT INTO changes VALUES ('U', 'FF/0', 0, '2030-01-01', 1, 'ann', 500, 'x');
SELECT * FROM pgcdc.scd2_apply_changes('hist_c', 'changes', '{id}', '_source_lsn,_source_seq',
									   valid_from_column => '_commit_ts');

DROP EXTENSION pgcdc;
DROP TABLE item, item2, hist_c, hist_sql, hist2_c, hist2_sql, hist_trig, hist_rls, hist_nodel, hist_big,
	big, changes, applied, outcome, seen, typed, typed_c, typed_sql, typed_changes;
DROP DOMAIN small_int;
DROP FUNCTION apply_with(int, text, regclass, text[], text[]), stage_calls(), count_row();
DROP OWNED BY scd2_writer_nodelete, scd2_writer_rls;
DROP ROLE scd2_writer_nodelete, scd2_writer_rls;
