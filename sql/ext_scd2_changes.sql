-- pgcdc extension: scd2_apply_changes, every change a version
CREATE EXTENSION pgcdc;
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
\set SHOW_CONTEXT never

CREATE TABLE account (id int PRIMARY KEY, owner text, tier text, balance numeric, doc text);
SELECT pgcdc.create_history_table('account', 'account_history');
-- the change table: op, a sequence, an effective time, the row; optional
-- unchanged_toast text[] and _old_key jsonb
CREATE TABLE changes (op text, seq numeric, ts timestamptz, id int, owner text, tier text,
					  balance numeric, doc text, unchanged_toast text[], _old_key jsonb);
CREATE VIEW h AS
SELECT id, owner, tier, balance, left(doc, 12) AS doc, to_char(_valid_from, 'YYYY-MM-DD HH24:MI') AS valid_from,
	   CASE WHEN _valid_to = 'infinity' THEN 'infinity' ELSE to_char(_valid_to, 'YYYY-MM-DD HH24:MI') END AS valid_to,
	   _is_current AS cur, _version AS v, _sequence AS seq, _last_sequence AS last
  FROM account_history;
CREATE VIEW invariants AS
SELECT id, count(*) FILTER (WHERE _is_current) AS current_rows,
	   bool_and(_valid_from < _valid_to) AS positive,
	   bool_and(coalesce(next_from >= _valid_to, true)) AS no_overlap,
	   array_agg(_version ORDER BY _valid_from) = array_agg(_version ORDER BY _version)
		 AND max(_version) = count(*) AS versions_in_order
  FROM (SELECT *, lead(_valid_from) OVER (PARTITION BY id ORDER BY _valid_from) AS next_from
		  FROM account_history) x
 GROUP BY id;

-- N changes to a key give N versions, in source order whatever the order of
-- the rows; a change of a NULL to a value is a change
INSERT INTO changes (op, seq, ts, id, owner, tier, balance, doc) VALUES
	('U', 3, '2024-01-03', 1, 'ann', 'gold', 30, 'd1'),
	('I', 1, '2024-01-01', 1, 'ann', NULL, 10, 'd1'),
	('U', 2, '2024-01-02', 1, 'ann', 'silver', 20, 'd1'),
	('I', 4, '2024-01-01', 2, 'bob', 'gold', 5, 'd2');
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq',
									   valid_from_column => 'ts');
SELECT * FROM h ORDER BY id, valid_from;

-- replaying the same changes changes nothing
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq',
									   valid_from_column => 'ts');
SELECT count(*) FROM account_history;

-- a change that alters no tracked column opens no version, but its
-- untracked columns update the current version
TRUNCATE changes;
INSERT INTO changes (op, seq, ts, id, owner, tier, balance, doc) VALUES
	('U', 5, '2024-01-04', 1, 'ann', 'gold', 31, 'd1'),
	('U', 6, '2024-01-04 12:00', 2, 'bob', 'gold', 6, 'd2');
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq',
									   track_columns => '{owner,tier}', valid_from_column => 'ts');
SELECT * FROM h ORDER BY id, valid_from;

-- changes with the same effective time (one source transaction) collapse
-- into the last of them: no zero-length versions
TRUNCATE changes;
INSERT INTO changes (op, seq, ts, id, owner, tier, balance, doc) VALUES
	('U', 7, '2024-01-05', 2, 'bob', 'silver', 6, 'd2'),
	('U', 8, '2024-01-05', 2, 'bob', 'bronze', 6, 'd2'),
	('U', 9, '2024-01-06', 2, 'bob', 'iron', 6, 'd2'),
	-- back to the earlier state within one transaction: no version at all
	('U', 10, '2024-01-07', 2, 'bob', 'lead', 6, 'd2'),
	('U', 11, '2024-01-07', 2, 'bob', 'iron', 6, 'd2');
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq',
									   valid_from_column => 'ts');
SELECT * FROM h WHERE id = 2 ORDER BY valid_from;

-- a late change (its sequence is before changes already applied) splits
-- the version it falls in; later versions keep values and intervals
TRUNCATE changes;
INSERT INTO changes (op, seq, ts, id, owner, tier, balance, doc) VALUES
	('U', 8.5, '2024-01-05 18:00', 2, 'bob', 'copper', 6, 'd2');
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq',
									   valid_from_column => 'ts');
SELECT * FROM h WHERE id = 2 ORDER BY valid_from;
-- and a late change before the first version
INSERT INTO changes (op, seq, ts, id, owner, tier, balance, doc) VALUES
	('I', 0, '2023-12-31', 1, 'ann', 'new', 0, 'd0');
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq',
									   valid_from_column => 'ts');
SELECT * FROM h WHERE id = 1 ORDER BY valid_from;
-- replayed, they change nothing
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq',
									   valid_from_column => 'ts');
SELECT count(*) FROM account_history;

-- delete closes the current version; a re-insert opens a new one
TRUNCATE changes;
INSERT INTO changes (op, seq, ts, id, owner, tier, balance, doc) VALUES
	('D', 20, '2024-02-01', 1, NULL, NULL, NULL, NULL),
	('I', 21, '2024-02-03', 1, 'ann', 'gold', 0, 'd1'),
	('D', 22, '2024-02-04', 3, NULL, NULL, NULL, NULL);	-- a key never seen
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq',
									   valid_from_column => 'ts');
SELECT * FROM h WHERE id = 1 ORDER BY valid_from;
-- a late change in the gap after the delete is a re-insert there
TRUNCATE changes;
INSERT INTO changes (op, seq, ts, id, owner, tier, balance, doc) VALUES
	('I', 20, '2024-02-02', 1, 'ann', 'briefly', 0, 'd1');
-- (at the delete's own position it is a replay, skipped)
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq',
									   valid_from_column => 'ts');
UPDATE changes SET seq = 20.5;
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq',
									   valid_from_column => 'ts');
SELECT * FROM h WHERE id = 1 ORDER BY valid_from;

-- a truncate closes every current version; changes after it apply after it
TRUNCATE changes;
INSERT INTO changes (op, seq, ts, id, owner, tier, balance, doc) VALUES
	('U', 30, '2024-03-01', 2, 'bob', 'zinc', 6, 'd2'),
	('T', 31, '2024-03-02', NULL, NULL, NULL, NULL, NULL),
	('I', 32, '2024-03-03', 2, 'bob', 'tin', 6, 'd2');
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq',
									   valid_from_column => 'ts');
SELECT * FROM h WHERE valid_to >= '2024-03' OR cur ORDER BY id, valid_from;
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq',
									   valid_from_column => 'ts');

-- a key update closes the old key's version and opens the new key's
TRUNCATE changes;
INSERT INTO changes (op, seq, ts, id, owner, tier, balance, doc, _old_key) VALUES
	('U', 40, '2024-04-01', 7, 'bob', 'tin', 6, 'd2', '{"id": 2}');
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq',
									   valid_from_column => 'ts');
SELECT * FROM h WHERE id IN (2, 7) AND (valid_to >= '2024-04' OR cur) ORDER BY id, valid_from;

-- unchanged TOAST: a column listed in unchanged_toast keeps its value,
-- from an earlier change of the batch or from the current version
TRUNCATE changes;
INSERT INTO changes (op, seq, ts, id, owner, tier, balance, doc, unchanged_toast) VALUES
	('I', 50, '2024-05-01', 8, 'cy', 'a', 1, repeat('x', 3000), NULL),
	('U', 51, '2024-05-02', 8, 'cy', 'b', 1, NULL, '{doc}'),
	('U', 52, '2024-05-03', 8, 'cy', 'c', 1, NULL, '{doc}');
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq',
									   valid_from_column => 'ts');
TRUNCATE changes;
INSERT INTO changes (op, seq, ts, id, owner, tier, balance, doc, unchanged_toast) VALUES
	('U', 53, '2024-05-04', 8, 'cy', 'd', 1, NULL, '{doc}');
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq',
									   valid_from_column => 'ts');
SELECT id, tier, length(doc) AS doc_length, _valid_from::date, _valid_to::date, _version
  FROM account_history WHERE id = 8 ORDER BY _valid_from;

-- a source clock that goes backwards never inverts an interval, nor merges
-- two transactions: the change before it lasts 1 µs
TRUNCATE changes;
INSERT INTO changes (op, seq, ts, id, owner, tier, balance, doc) VALUES
	('I', 60, '2024-06-10', 9, 'di', 'a', 1, NULL),
	('U', 61, '2024-06-01', 9, 'di', 'b', 1, NULL),
	('U', 62, '2024-06-12', 9, 'di', 'c', 1, NULL);
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq',
									   valid_from_column => 'ts');
SELECT * FROM h WHERE id = 9 ORDER BY valid_from;
SELECT tier, _valid_from, _valid_to - _valid_from AS length FROM account_history
 WHERE id = 9 AND NOT _is_current ORDER BY _valid_from;

-- CDC-shaped changes: order by (_source_lsn, _source_seq), time from _commit_ts
CREATE TABLE cdc (op text, _source_lsn pg_lsn, _source_seq int, _commit_ts timestamptz,
				  id int, owner text, tier text, balance numeric, doc text);
INSERT INTO cdc VALUES
	('U', '0/2000', 1, '2024-07-02', 9, 'di', 'e', 1, NULL),
	('U', '0/1F00', 3, '2024-07-01', 9, 'di', 'd', 1, NULL),
	('I', '0/1F00', 4, '2024-07-01', 10, 'ed', 'a', 1, NULL);
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'cdc', '{id}', '_source_lsn, _source_seq',
									   valid_from_column => '_commit_ts');
SELECT id, tier, _source_lsn, _source_seq, to_char(_valid_from, 'MM-DD') AS valid_from, _version
  FROM account_history WHERE id IN (9, 10) AND _valid_from >= '2024-07-01' ORDER BY id, _valid_from;

-- without valid_from_column the effective time is now(): one instant
TRUNCATE changes;
INSERT INTO changes (op, seq, id, owner, tier, balance) VALUES
	('I', 70, 11, 'fay', 'a', 1), ('U', 71, 11, 'fay', 'b', 1);
BEGIN;
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq');
SELECT id, tier, _valid_from = now() AS at_now, _is_current, _version
  FROM account_history WHERE id = 11;
COMMIT;

SELECT * FROM invariants ORDER BY id;

-- errors; none of them leaves anything behind
SELECT count(*) AS rows_before FROM account_history;
TRUNCATE changes;
INSERT INTO changes (op, seq, ts, id) VALUES ('X', 100, '2024-08-01', 1);
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq', valid_from_column => 'ts');
UPDATE changes SET op = NULL;
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq', valid_from_column => 'ts');
UPDATE changes SET op = 'U', seq = NULL;
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq', valid_from_column => 'ts');
UPDATE changes SET seq = 100, id = NULL;
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq', valid_from_column => 'ts');
UPDATE changes SET id = 1, ts = NULL;
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq', valid_from_column => 'ts');
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'nosuch');
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'owner');
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', NULL);
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq', 'kind');
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq', NULL);
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq', valid_from_column => 'owner');
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq', valid_from_column => 'nosuch');
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{nosuch}', 'seq');
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq', track_columns => '{nosuch}');
SELECT * FROM pgcdc.scd2_apply_changes('account', 'changes', '{id}', 'seq');
SELECT * FROM pgcdc.scd2_apply_changes('account_history', NULL, '{id}', 'seq');
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'h', '{id}', 'seq');
SELECT count(*) AS rows_after FROM account_history;

-- A plain batch (only I, U and D, in order after what the history holds, no
-- unchanged TOAST, no key change, no truncate) is applied by one prepared
-- statement; anything else is staged.  Both give the same history: apply
-- every batch to two histories, the second forced onto the staged path by
-- an empty unchanged_toast (which changes nothing else).
CREATE TABLE item (k1 int, k2 text, name text, qty int, note text, PRIMARY KEY (k1, k2));
INSERT INTO item VALUES (1, 'a', 'one', 1, 'n'), (2, 'a', 'two', 2, 'n'), (3, 'a', 'three', 3, 'n'),
	(4, 'a', 'four', 4, 'n');
SELECT pgcdc.create_history_table('item', 'item_fast');
SELECT pgcdc.create_history_table('item', 'item_staged');
SELECT * FROM pgcdc.scd2_merge('item_fast', 'item', '{k1,k2}', valid_at => '2024-01-01');
SELECT * FROM pgcdc.scd2_merge('item_staged', 'item', '{k1,k2}', valid_at => '2024-01-01');
-- key 4 gets a current "deleted" record
DELETE FROM item WHERE k1 = 4;
SELECT * FROM pgcdc.scd2_merge('item_fast', 'item', '{k1,k2}', valid_at => '2024-01-02',
							   hard_deletes => 'new_record');
SELECT * FROM pgcdc.scd2_merge('item_staged', 'item', '{k1,k2}', valid_at => '2024-01-02',
							   hard_deletes => 'new_record');
CREATE TABLE item_changes (op text, _source_lsn pg_lsn, _source_seq int, _commit_ts timestamptz,
						   k1 int, k2 text, name text, qty int, note text, unchanged_toast text[]);
CREATE FUNCTION apply_both(track text[] DEFAULT NULL) RETURNS TABLE (path text, i bigint, u bigint, d bigint, n bigint)
LANGUAGE plpgsql AS $$
BEGIN
	UPDATE item_changes SET unchanged_toast = NULL;
	RETURN QUERY SELECT 'fast', * FROM pgcdc.scd2_apply_changes('item_fast', 'item_changes', '{k1,k2}',
		'_source_lsn,_source_seq', track_columns => track, valid_from_column => '_commit_ts');
	UPDATE item_changes SET unchanged_toast = '{}';
	RETURN QUERY SELECT 'staged', * FROM pgcdc.scd2_apply_changes('item_staged', 'item_changes', '{k1,k2}',
		'_source_lsn,_source_seq', track_columns => track, valid_from_column => '_commit_ts');
END
$$;
CREATE VIEW item_diff AS
SELECT 'only fast' AS side, * FROM (SELECT * FROM item_fast EXCEPT ALL SELECT * FROM item_staged) a
UNION ALL
SELECT 'only staged', * FROM (SELECT * FROM item_staged EXCEPT ALL SELECT * FROM item_fast) b;
-- statements prepared by this session and how often they ran (the read
-- query of the C writer, which writes the fast side)
CREATE VIEW fast_runs AS
SELECT count(*) AS statements, sum(generic_plans + custom_plans) AS runs
  FROM pg_prepared_statements
 WHERE statement LIKE '%AS pgcdc_h%' AND statement NOT LIKE '%WITH pgcdc_s%'
   AND statement LIKE '%public.item_changes %';

INSERT INTO item_changes (op, _source_lsn, _source_seq, _commit_ts, k1, k2, name, qty, note) VALUES
	-- new keys, one of them with several changes, two of them in one transaction
	('I', '0/100', 1, '2024-02-01', 5, 'a', 'five', 5, 'n'),
	('U', '0/200', 1, '2024-02-02', 5, 'a', 'FIVE', 5, 'n'),
	('U', '0/200', 2, '2024-02-02', 5, 'a', 'Five', 5, 'n'),
	('U', '0/300', 1, '2024-02-03', 5, 'a', 'Five', 6, 'n'),	-- no tracked change with track {name}
	('D', '0/400', 1, '2024-02-04', 5, 'a', NULL, NULL, NULL),
	('I', '0/500', 1, '2024-02-05', 5, 'a', 'five again', 5, 'n'),
	-- an update, a no-op update, a delete, a delete of a key never seen
	('U', '0/100', 2, '2024-02-01', 1, 'a', 'ONE', 1, 'n'),
	('U', '0/100', 3, '2024-02-01', 2, 'a', 'two', 2, 'n'),
	('D', '0/100', 4, '2024-02-01', 3, 'a', NULL, NULL, NULL),
	('D', '0/100', 5, '2024-02-01', 9, 'z', NULL, NULL, NULL),
	-- back after a new_record delete
	('I', '0/100', 6, '2024-02-01', 4, 'a', 'four', 4, 'n'),
	-- a clock that goes backwards
	('I', '0/600', 1, '2024-02-10', 6, 'b', 'six', 6, 'n'),
	('U', '0/700', 1, '2024-02-09', 6, 'b', 'SIX', 6, 'n'),
	('U', '0/800', 1, '2024-02-11', 6, 'b', 'Six', 6, 'n');
SELECT * FROM apply_both('{name}');
SELECT * FROM item_diff;
SELECT * FROM fast_runs;
-- the same shape again (target, changes, arguments): the statement is
-- reused, not prepared again
TRUNCATE item_changes;
INSERT INTO item_changes (op, _source_lsn, _source_seq, _commit_ts, k1, k2, name, qty, note) VALUES
	-- at the very instant the current version started: overwritten in place,
	-- and a delete at that instant removes the version
	('U', '0/900', 1, '2024-02-11', 6, 'b', 'SiX', 6, 'n'),
	('D', '0/900', 2, '2024-02-05', 5, 'a', NULL, NULL, NULL),
	('U', '0/900', 3, '2024-03-01', 1, 'a', 'ONE', 7, 'changed untracked'),
	('U', '0/900', 4, '2024-03-01', 2, 'a', 'TWO', 2, 'n'),
	('U', '0/A00', 1, '2024-03-02', 2, 'a', 'TWO', 3, 'n'),
	('D', '0/B00', 1, '2024-03-03', 2, 'a', NULL, NULL, NULL);
SELECT * FROM apply_both('{name}');
SELECT * FROM item_diff;
SELECT * FROM fast_runs;
-- a late change among in-order ones: nothing is applied twice, the batch
-- takes the staged path as a whole
TRUNCATE item_changes;
INSERT INTO item_changes (op, _source_lsn, _source_seq, _commit_ts, k1, k2, name, qty, note) VALUES
	('U', '0/150', 1, '2024-02-01 12:00', 1, 'a', 'late one', 1, 'n'),
	('I', '0/C00', 1, '2024-03-04', 7, 'a', 'seven', 7, 'n');
SELECT * FROM apply_both('{name}');
SELECT * FROM item_diff;
SELECT * FROM fast_runs;
-- replayed, a plain batch changes nothing either; statements deallocated
-- meanwhile are prepared again
DEALLOCATE ALL;
SELECT * FROM apply_both('{name}');
SELECT * FROM item_diff;
SELECT * FROM fast_runs;
SELECT k1, k2, name, qty, note, _valid_from::date, _valid_to::date, _is_current, _is_deleted,
	   _version, _source_lsn, _source_seq, _sequence, _last_sequence
  FROM item_fast ORDER BY k1, k2, _valid_from;
-- a null key fails the batch on the fast path as on the staged one
TRUNCATE item_changes;
INSERT INTO item_changes (op, _source_lsn, _source_seq, _commit_ts, k1, k2, name) VALUES
	('I', '0/D00', 1, '2024-03-05', 8, 'a', 'eight'), ('I', '0/D00', 2, '2024-03-05', 8, NULL, 'x');
SELECT * FROM apply_both('{name}');
UPDATE item_changes SET unchanged_toast = '{}';
SELECT * FROM pgcdc.scd2_apply_changes('item_staged', 'item_changes', '{k1,k2}', '_source_lsn,_source_seq');
SELECT count(*) FROM item_fast WHERE k1 = 8;
-- two changes of one key at one position: an error on both paths
TRUNCATE item_changes;
INSERT INTO item_changes (op, _source_lsn, _source_seq, _commit_ts, k1, k2, name) VALUES
	('I', '0/E00', 1, '2024-03-06', 9, 'a', 'nine'), ('U', '0/E00', 1, '2024-03-06', 9, 'a', 'NINE');
SELECT * FROM pgcdc.scd2_apply_changes('item_fast', 'item_changes', '{k1,k2}', '_source_lsn,_source_seq');
UPDATE item_changes SET unchanged_toast = '{}';
SELECT * FROM pgcdc.scd2_apply_changes('item_staged', 'item_changes', '{k1,k2}', '_source_lsn,_source_seq');
SELECT count(*) FROM item_fast WHERE k1 = 9;
DROP VIEW item_diff, fast_runs;
DROP FUNCTION apply_both;
DROP TABLE item, item_fast, item_staged, item_changes;

-- Random batches, the same on both paths: the same histories and counts.
-- Few keys and values, so that keys change several times in a batch, at
-- the same instant, with the clock going backwards, back and forth.
SELECT setseed(0.25);
CREATE TABLE rnd (id int, k text, a text, b int, PRIMARY KEY (id, k));
SELECT pgcdc.create_history_table('rnd', 'rnd_fast');
SELECT pgcdc.create_history_table('rnd', 'rnd_staged');
CREATE TABLE rnd_changes (op text, _source_lsn pg_lsn, _source_seq int, _commit_ts timestamptz,
						  id int, k text, a text, b int, unchanged_toast text[]);
DO $$
DECLARE
	s int := 0;
	t timestamptz := '2024-01-01';
	rf record;
	rs record;
	track text[];
BEGIN
	FOR i IN 1 .. 60 LOOP
		TRUNCATE rnd_changes;
		FOR j IN 1 .. 1 + (random() * 30)::int LOOP
			s := s + 1;
			t := t + CASE WHEN random() < 0.3 THEN interval '0'
						  WHEN random() < 0.15 THEN interval '-1 hour'
						  ELSE interval '1 hour' END;
			INSERT INTO rnd_changes
			SELECT (ARRAY['I', 'U', 'D'])[1 + floor(random() * 3)::int],
				   ('0/' || to_hex(s * 16))::pg_lsn, 1 + (random() * 3)::int, t,
				   1 + (random() * 12)::int, (ARRAY['x', 'y'])[1 + floor(random() * 2)::int],
				   'a' || (random() * 2)::int, CASE WHEN random() < 0.2 THEN NULL ELSE (random() * 1)::int END,
				   NULL;
		END LOOP;
		track := CASE WHEN i % 3 = 0 THEN '{a}'::text[] END;
		SELECT * INTO rf FROM pgcdc.scd2_apply_changes('rnd_fast', 'rnd_changes', '{id,k}',
			'_source_lsn,_source_seq', track_columns => track, valid_from_column => '_commit_ts');
		UPDATE rnd_changes SET unchanged_toast = '{}';
		SELECT * INTO rs FROM pgcdc.scd2_apply_changes('rnd_staged', 'rnd_changes', '{id,k}',
			'_source_lsn,_source_seq', track_columns => track, valid_from_column => '_commit_ts');
		IF rf::text <> rs::text OR EXISTS (SELECT * FROM rnd_fast EXCEPT ALL SELECT * FROM rnd_staged)
		   OR EXISTS (SELECT * FROM rnd_staged EXCEPT ALL SELECT * FROM rnd_fast) THEN
			RAISE EXCEPTION 'batch %: fast % and staged % differ', i, rf, rs;
		END IF;
	END LOOP;
END
$$;
SELECT count(*) AS versions, count(*) FILTER (WHERE _is_current) AS current_rows,
	   count(DISTINCT (id, k)) AS keys FROM rnd_fast;
DROP TABLE rnd, rnd_fast, rnd_staged, rnd_changes;

-- Late arrivals: the history depends on the changes, not on the order
-- they arrive in.
CREATE TABLE ord (id int PRIMARY KEY, x int, y text);
SELECT pgcdc.create_history_table('ord', 'ord_ref');
SELECT pgcdc.create_history_table('ord', 'ord_late');
CREATE TABLE ord_all (id int, x int, y text, op text, seq bigint, ts timestamptz, batch int);
CREATE TABLE ord_changes (id int, x int, y text, op text, seq bigint, ts timestamptz);
CREATE VIEW ord_diff AS
SELECT count(*) AS differences FROM (
	(SELECT id, x, _valid_from, _valid_to, _is_current, _version FROM ord_ref
	 EXCEPT ALL SELECT id, x, _valid_from, _valid_to, _is_current, _version FROM ord_late)
	UNION ALL
	(SELECT id, x, _valid_from, _valid_to, _is_current, _version FROM ord_late
	 EXCEPT ALL SELECT id, x, _valid_from, _valid_to, _is_current, _version FROM ord_ref)) d;
-- apply the batches in the given order
CREATE FUNCTION ord_apply(batches int[], track text[] DEFAULT NULL) RETURNS SETOF ord_late
LANGUAGE plpgsql AS $$
DECLARE
	b int;
BEGIN
	TRUNCATE ord_ref, ord_late, ord_changes;
	INSERT INTO ord_changes SELECT id, x, y, op, seq, ts FROM ord_all;
	PERFORM pgcdc.scd2_apply_changes('ord_ref', 'ord_changes', '{id}', 'seq', 'op', track, 'ts');
	FOREACH b IN ARRAY batches LOOP
		TRUNCATE ord_changes;
		INSERT INTO ord_changes SELECT id, x, y, op, seq, ts FROM ord_all WHERE batch = b;
		PERFORM pgcdc.scd2_apply_changes('ord_late', 'ord_changes', '{id}', 'seq', 'op', track, 'ts');
	END LOOP;
	RETURN QUERY SELECT * FROM ord_late ORDER BY id, _valid_from;
END
$$;
-- a late change inside a version that a later delete closed splits it
INSERT INTO ord_all VALUES (1, 1, 'a', 'I', 1, '2024-01-01', 1), (1, 2, 'b', 'U', 2, '2024-01-02', 1),
	(1, 2, 'b', 'D', 4, '2024-01-04', 1), (1, 3, 'c', 'U', 3, '2024-01-03', 2);
SELECT id, x, _valid_from::date, _valid_to::date, _is_current, _version, _sequence, _last_sequence
  FROM ord_apply('{1,2,2,1}');
SELECT * FROM ord_diff;
-- a late change of a tracked column before a change of untracked columns
-- only: the version resumes at that change (it had the version's values)
TRUNCATE ord_all;
INSERT INTO ord_all VALUES (1, 1, 'a', 'I', 1, '2024-01-01', 1), (1, 1, 'b', 'U', 3, '2024-01-03', 1),
	(1, 2, 'c', 'U', 2, '2024-01-02', 2);
SELECT id, x, y, _valid_from::date, _valid_to::date, _is_current, _version, _sequence, _last_sequence
  FROM ord_apply('{1,2,2}', '{x}');
SELECT * FROM ord_diff;
-- a late change that makes the next change a no-op: one version, not two
TRUNCATE ord_all;
INSERT INTO ord_all VALUES (1, 1, 'a', 'I', 1, '2024-01-01', 1), (1, 2, 'b', 'U', 3, '2024-01-03', 1),
	(1, 2, 'c', 'U', 2, '2024-01-02', 2);
SELECT id, x, y, _valid_from::date, _valid_to::date, _is_current, _version, _sequence, _last_sequence
  FROM ord_apply('{1,2,2}', '{x}');
SELECT * FROM ord_diff;
-- a late change at a version's very start (later in order than the change
-- that opened it) that puts the values of the version before back: one
-- version, as in order
TRUNCATE ord_all;
INSERT INTO ord_all VALUES (1, 1, 'a', 'I', 1, '2024-01-01', 1), (1, 2, 'b', 'U', 2, '2024-01-02', 1),
	(1, 1, 'c', 'U', 3, '2024-01-02', 2), (1, 3, 'd', 'U', 4, '2024-01-04', 1);
SELECT id, x, y, _valid_from::date, _valid_to::date, _is_current, _version, _sequence, _last_sequence
  FROM ord_apply('{1,2}', '{x}');
SELECT * FROM ord_diff;
-- Random changes to a few keys, cut into random batches applied in random
-- order with random replays, give the history of applying them in order.
-- (Not here: a delete that arrives when its key has no version open, and
-- several untracked-only changes in one version; the README says why.)
SELECT setseed(0.5);
DO $$
DECLARE
	live boolean[];
	t timestamptz;
	k int;
	o text;
	d bigint;
	batches int[];
BEGIN
	FOR trial IN 1 .. 25 LOOP
		TRUNCATE ord_all;
		live := array_fill(false, ARRAY[4]);
		t := '2024-01-01';
		FOR i IN 1 .. 40 LOOP
			-- every key's insert comes first, in the first batch applied
			k := CASE WHEN i <= 4 THEN i ELSE 1 + floor(random() * 4)::int END;
			IF random() < 0.7 THEN t := t + interval '1 hour'; END IF;	-- else the same instant
			o := CASE WHEN NOT live[k] THEN 'I' WHEN random() < 0.1 THEN 'D' ELSE 'U' END;
			live[k] := o <> 'D';
			INSERT INTO ord_all VALUES (k, floor(random() * 3)::int, 'y' || i, o, i, t,
										CASE WHEN i <= 4 THEN 0 ELSE floor(random() * 6)::int + 1 END);
		END LOOP;
		-- deletes only where every change before them is in a batch applied before
		batches := ARRAY(SELECT b FROM generate_series(1, 6) b ORDER BY random());
		DELETE FROM ord_all a WHERE a.op = 'D' AND EXISTS (
			SELECT FROM ord_all e WHERE e.id = a.id AND e.seq < a.seq
			   AND array_position(batches, e.batch) > array_position(batches, a.batch));
		batches := 0 || batches || ARRAY(SELECT b FROM generate_series(1, 6) b WHERE random() < 0.3);
		PERFORM ord_apply(batches);
		SELECT differences INTO d FROM ord_diff;
		IF d <> 0 THEN
			RAISE EXCEPTION 'trial %: % rows differ when the batches arrive as %', trial, d, batches;
		END IF;
	END LOOP;
END
$$;
-- a late delete before a change of untracked columns only that was
-- absorbed into the version: the version resumes at that change, numbered
TRUNCATE ord_all;
INSERT INTO ord_all VALUES (1, 1, 'a', 'I', 1, '2024-01-01', 1), (1, 1, 'b', 'U', 3, '2024-01-03', 1),
	(1, 1, 'a', 'D', 2, '2024-01-02', 2);
SELECT id, x, y, _valid_from::date, _valid_to::date, _is_current, _version, _sequence, _last_sequence
  FROM ord_apply('{1,2}', '{x}');
SELECT * FROM ord_diff;
-- Late changes are applied in rounds, a key's next one in each: 300 keys
-- with 1 to 6 late changes each, in one batch, give the in-order history.
TRUNCATE ord_all;
INSERT INTO ord_all
SELECT k, (j * k) % 3, 'y' || j, CASE WHEN j = 0 THEN 'I' WHEN (j + k) % 7 = 0 THEN 'D'
										WHEN (j + k) % 7 = 1 AND j > 1 THEN 'I' ELSE 'U' END,
	   j * 2 + CASE WHEN j % 2 = 1 AND j <= 2 * (k % 6) + 1 THEN 1 ELSE 0 END,
	   '2024-01-01'::timestamptz + j * interval '1 hour',
	   CASE WHEN j % 2 = 1 AND j <= 2 * (k % 6) + 1 THEN 2 ELSE 1 END
  FROM generate_series(1, 300) k, generate_series(0, 14) j;
SELECT count(*) FILTER (WHERE batch = 2) AS late_changes, count(DISTINCT id) FILTER (WHERE batch = 2) AS keys
  FROM ord_all;
SELECT count(*) AS versions FROM ord_apply('{1,2,2}');
SELECT * FROM ord_diff;
SELECT count(*) AS misnumbered FROM (
	SELECT _version, row_number() OVER (PARTITION BY id ORDER BY _valid_from) AS n FROM ord_late) v
 WHERE _version <> n;
DROP FUNCTION ord_apply;
DROP VIEW ord_diff;
DROP TABLE ord, ord_ref, ord_late, ord_all, ord_changes;

-- an update that changes the key and leaves a TOASTed column unchanged: the
-- new key's version takes the value from the old key (earlier in the batch,
-- through a chain of key changes, or from its current version)
CREATE TABLE keyed (id int PRIMARY KEY, v text, big text);
SELECT pgcdc.create_history_table('keyed', 'keyed_hist');
CREATE TABLE keyed_changes (op text, _source_lsn pg_lsn, _source_seq int, _commit_ts timestamptz,
							id int, v text, big text, unchanged_toast text[], _old_key jsonb);
INSERT INTO keyed_changes VALUES
	('I', '0/10', 1, '2024-01-01', 1, 'a', 'BIG', NULL, NULL),
	('U', '0/20', 1, '2024-01-02', 2, 'a', NULL, '{big}', '{"id": 1}'),
	('U', '0/30', 1, '2024-01-03', 3, 'b', NULL, '{big}', '{"id": 2}'),
	-- another chain, with an update of the middle key between its key changes
	('I', '0/10', 2, '2024-01-01', 10, 'x', 'BIG10', NULL, NULL),
	('U', '0/20', 2, '2024-01-02', 11, 'x', NULL, '{big}', '{"id": 10}'),
	('U', '0/28', 1, '2024-01-02 12:00', 11, 'y', NULL, '{big}', NULL),
	('U', '0/30', 2, '2024-01-03', 12, 'z', NULL, '{big}', '{"id": 11}');
SELECT * FROM pgcdc.scd2_apply_changes('keyed_hist', 'keyed_changes', '{id}', '_source_lsn,_source_seq',
									   valid_from_column => '_commit_ts');
TRUNCATE keyed_changes;
INSERT INTO keyed_changes VALUES ('U', '0/50', 1, '2024-01-05', 4, 'd', NULL, '{big}', '{"id": 3}');
SELECT * FROM pgcdc.scd2_apply_changes('keyed_hist', 'keyed_changes', '{id}', '_source_lsn,_source_seq',
									   valid_from_column => '_commit_ts');
SELECT id, v, big, _valid_from::date, _valid_to::date, _is_current FROM keyed_hist ORDER BY id, _version;
DROP TABLE keyed, keyed_hist, keyed_changes;

-- a late change with unchanged TOAST takes the value of the version it splits
CREATE TABLE toasted (id int PRIMARY KEY, x int, big text);
SELECT pgcdc.create_history_table('toasted', 'toasted_hist');
CREATE TABLE toasted_changes (op text, seq int, ts timestamptz, id int, x int, big text, unchanged_toast text[]);
INSERT INTO toasted_changes VALUES ('I', 1, '2024-01-01', 1, 1, 'BIG', NULL),
	('U', 3, '2024-01-03', 1, 3, NULL, '{big}');
SELECT * FROM pgcdc.scd2_apply_changes('toasted_hist', 'toasted_changes', '{id}', 'seq', valid_from_column => 'ts');
TRUNCATE toasted_changes;
INSERT INTO toasted_changes VALUES ('U', 2, '2024-01-02', 1, 2, NULL, '{big}');
SELECT * FROM pgcdc.scd2_apply_changes('toasted_hist', 'toasted_changes', '{id}', 'seq', valid_from_column => 'ts');
SELECT x, big, _valid_from::date, _valid_to::date, _version FROM toasted_hist ORDER BY _valid_from;
DROP TABLE toasted, toasted_hist, toasted_changes;

-- A history table made by hand with the spec's system columns only: merges
-- work as they are; scd2_apply_changes adds the position columns it needs
CREATE TABLE plain_src (id int PRIMARY KEY, v text);
INSERT INTO plain_src VALUES (1, 'a');
CREATE TABLE plain_hist (id int, v text, _valid_from timestamptz, _valid_to timestamptz,
						 _is_current boolean, _is_deleted boolean, _version int, _row_hash bytea,
						 _source_lsn pg_lsn, _source_seq int);
SELECT * FROM pgcdc.scd2_merge('plain_hist', 'plain_src', '{id}', valid_at => '2024-01-01');
CREATE TABLE plain_changes (op text, seq int, ts timestamptz, id int, v text);
INSERT INTO plain_changes VALUES ('U', 1, '2024-02-01', 1, 'b');
SELECT * FROM pgcdc.scd2_apply_changes('plain_hist', 'plain_changes', '{id}', 'seq',
									   valid_from_column => 'ts');
SELECT id, v, _valid_from::date, _valid_to::date, _is_current, _version, _sequence, _last_sequence
  FROM plain_hist ORDER BY _valid_from;
-- a column of that name but another type: not ours
ALTER TABLE plain_hist DROP COLUMN _last_at;
ALTER TABLE plain_hist ADD COLUMN _last_at text;
SELECT * FROM pgcdc.scd2_apply_changes('plain_hist', 'plain_changes', '{id}', 'seq',
									   valid_from_column => 'ts');
DROP TABLE plain_src, plain_hist, plain_changes;

-- A batch applied again with the next one (a job re-run after a failure):
-- the replayed half changes nothing, the new half applies, and the history is
-- the one of applying each once.  3,000 keys, each inserted, updated and
-- deleted or updated again.
CREATE TABLE big_src (id int PRIMARY KEY, v text);
CREATE TABLE big_changes (op text, seq int, ts timestamptz, id int, v text);
INSERT INTO big_changes
SELECT c.op, g * 3 + c.n, timestamptz '2024-01-01' + (g * 3 + c.n) * interval '1 second', g,
	   CASE WHEN c.op <> 'D' THEN c.op || g END
  FROM generate_series(1, 3000) g,
	   LATERAL (VALUES ('I', 0), ('U', 1), (CASE WHEN g % 3 = 0 THEN 'D' ELSE 'U' END, 2)) c(op, n);
SELECT pgcdc.create_history_table('big_src', 'big_once');
SELECT pgcdc.create_history_table('big_src', 'big_again');
CREATE VIEW big_first AS SELECT * FROM big_changes WHERE seq < 4500;
SELECT * FROM pgcdc.scd2_apply_changes('big_once', 'big_changes', '{id}', 'seq',
									   valid_from_column => 'ts');
SELECT * FROM pgcdc.scd2_apply_changes('big_again', 'big_first', '{id}', 'seq',
									   valid_from_column => 'ts');
SELECT * FROM pgcdc.scd2_apply_changes('big_again', 'big_changes', '{id}', 'seq',
									   valid_from_column => 'ts');
SELECT * FROM pgcdc.scd2_apply_changes('big_again', 'big_changes', '{id}', 'seq',
									   valid_from_column => 'ts');
SELECT count(*) AS versions,
	   (SELECT count(*) FROM (SELECT id, v, _valid_from, _valid_to, _is_current, _version,
								     _sequence, _last_sequence FROM big_once
							  EXCEPT ALL
							  SELECT id, v, _valid_from, _valid_to, _is_current, _version,
									 _sequence, _last_sequence FROM big_again) d) AS differ
  FROM big_again;
DROP VIEW big_first;
DROP TABLE big_src, big_changes, big_once, big_again;

-- Many staged calls in one transaction reuse their work tables: the locks
-- they hold do not grow with the number of calls (a new table each call ran
-- out of max_locks_per_transaction in a long quarantine replay), also when
-- the calls alternate between targets of other column types.
CREATE TABLE lk (id int PRIMARY KEY, x int);
SELECT pgcdc.create_history_table('lk', 'lk_h');
CREATE TABLE lk_m (id int PRIMARY KEY, x int, _source_lsn pg_lsn, _source_seq int, _synced_at timestamptz);
CREATE TABLE lk_m2 (id bigint PRIMARY KEY, x numeric, _source_lsn pg_lsn, _source_seq int, _synced_at timestamptz);
CREATE TABLE lk_c (id int, x int, op text, seq bigint, ts timestamptz, _source_lsn pg_lsn, _source_seq int);
CREATE TABLE lk_locks (calls int, locks bigint);
BEGIN;
DO $$
BEGIN
	FOR i IN 1 .. 60 LOOP
		TRUNCATE lk_c;
		-- a change in order and a late one: staging, late rounds, mirror
		INSERT INTO lk_c VALUES
			(i % 4, i, CASE WHEN i <= 4 THEN 'I' ELSE 'U' END, i * 2,
			 '2024-01-01'::timestamptz + i * interval '1 hour', ('0/' || to_hex(i * 16))::pg_lsn, 0),
			(i % 4, -i, 'U', i * 2 - 9, '2024-01-01'::timestamptz + i * interval '1 hour' - interval '270 minutes',
			 ('0/' || to_hex(i * 16 - 8))::pg_lsn, 0);
		PERFORM pgcdc.scd2_apply_changes('lk_h', 'lk_c', '{id}', 'seq', 'op', NULL, 'ts');
		PERFORM pgcdc.apply_mirror('lk_m', 'lk_c', '{id}');
		PERFORM pgcdc.apply_mirror('lk_m2', 'lk_c', '{id}');
		IF i IN (10, 60) THEN
			INSERT INTO lk_locks SELECT i, count(*) FROM pg_locks WHERE pid = pg_backend_pid();
		END IF;
	END LOOP;
END
$$;
COMMIT;
SELECT (SELECT locks FROM lk_locks WHERE calls = 60) - (SELECT locks FROM lk_locks WHERE calls = 10)
	   AS more_locks_after_50_more_calls;
SELECT count(*) AS versions, count(*) FILTER (WHERE _is_current) AS current_rows,
	   count(*) FILTER (WHERE _version <> n) AS misnumbered
  FROM (SELECT *, row_number() OVER (PARTITION BY id ORDER BY _valid_from) AS n FROM lk_h) h;
SELECT id, x FROM lk_m ORDER BY id;
SELECT count(*) AS rows_that_differ FROM (SELECT id, x FROM lk_m EXCEPT SELECT id, x FROM lk_m2) d;
DROP TABLE lk, lk_h, lk_m, lk_m2, lk_c, lk_locks;

-- The staged path (here: for unchanged TOAST) runs its statements prepared
-- and, when the role the session logged in as is no superuser, keeps its
-- work tables for the session: a batch like the one before, in a
-- transaction of its own, prepares nothing and runs those statements again.
-- A superuser's session (whatever role it switches to: SET ROLE, SET
-- SESSION AUTHORIZATION) drops them at commit, as one of its roles could
-- neither use nor drop another's, unless it asks to keep them.  Discarding
-- the session's temp tables or prepared statements, or rolling back a call
-- that made the tables, breaks nothing.
SELECT current_user AS regress_superuser \gset
CREATE ROLE pgcdc_st_app LOGIN;
CREATE ROLE pgcdc_st_other;
GRANT pgcdc_st_other TO pgcdc_st_app;
CREATE TABLE st (id int PRIMARY KEY, x int, doc text);
SELECT pgcdc.create_history_table('st', 'st_h');
CREATE TABLE st_c (id int, x int, doc text, op text, seq bigint, unchanged_toast text[]);
GRANT ALL ON st_h, st_c TO pgcdc_st_app, pgcdc_st_other;
INSERT INTO st_c VALUES (1, 1, 'big', 'I', 1, NULL), (2, 1, 'big', 'I', 2, NULL),
	(1, 2, NULL, 'U', 3, '{doc}');
SELECT * FROM pgcdc.scd2_apply_changes('st_h', 'st_c', '{id}', 'seq');
SELECT to_regclass('pg_temp._pgcdc_stage') IS NOT NULL AS superuser_stage_kept;
SET ROLE pgcdc_st_app;
TRUNCATE st_c;
INSERT INTO st_c VALUES (2, 2, NULL, 'U', 4, '{doc}');
SELECT * FROM pgcdc.scd2_apply_changes('st_h', 'st_c', '{id}', 'seq');
RESET ROLE;
SET SESSION AUTHORIZATION pgcdc_st_app;
TRUNCATE st_c;
INSERT INTO st_c VALUES (1, 3, NULL, 'U', 5, '{doc}');
SELECT * FROM pgcdc.scd2_apply_changes('st_h', 'st_c', '{id}', 'seq');
SELECT to_regclass('pg_temp._pgcdc_stage') IS NOT NULL AS kept_under_session_authorization;
RESET SESSION AUTHORIZATION;
SET SESSION AUTHORIZATION pgcdc_st_other;
TRUNCATE st_c;
INSERT INTO st_c VALUES (2, 3, NULL, 'U', 6, '{doc}');
SELECT * FROM pgcdc.scd2_apply_changes('st_h', 'st_c', '{id}', 'seq');
RESET SESSION AUTHORIZATION;
-- a session that switches no roles may ask for them to be kept
SET pgcdc.keep_work_tables = on;
TRUNCATE st_c;
INSERT INTO st_c VALUES (1, 4, NULL, 'U', 7, '{doc}');
SELECT * FROM pgcdc.scd2_apply_changes('st_h', 'st_c', '{id}', 'seq');
SELECT to_regclass('pg_temp._pgcdc_stage') IS NOT NULL AS kept_when_asked;
RESET pgcdc.keep_work_tables;
DISCARD TEMP;
-- a session that logged in as a role that is no superuser
\c - pgcdc_st_app
TRUNCATE st_c;
INSERT INTO st_c VALUES (2, 4, NULL, 'U', 8, '{doc}');
SELECT * FROM pgcdc.scd2_apply_changes('st_h', 'st_c', '{id}', 'seq');
SELECT to_regclass('pg_temp._pgcdc_stage') IS NOT NULL AS stage_kept_after_commit;
TRUNCATE st_c;
INSERT INTO st_c VALUES (2, 5, NULL, 'U', 9, '{doc}'), (1, 5, NULL, 'U', 10, '{doc}');
SELECT * FROM pgcdc.scd2_apply_changes('st_h', 'st_c', '{id}', 'seq');
CREATE TEMP TABLE st_before AS
	SELECT name, generic_plans + custom_plans AS runs FROM pg_prepared_statements
	 WHERE name LIKE 'pgcdc\_%';
TRUNCATE st_c;
INSERT INTO st_c VALUES (2, 6, NULL, 'U', 11, '{doc}'), (1, 6, NULL, 'U', 12, '{doc}');
SELECT * FROM pgcdc.scd2_apply_changes('st_h', 'st_c', '{id}', 'seq');
SELECT count(*) FILTER (WHERE b.name IS NULL) AS prepared_by_this_call,
	   count(*) FILTER (WHERE p.generic_plans + p.custom_plans > b.runs) >= 10 AS ran_ten_or_more_again
  FROM pg_prepared_statements p LEFT JOIN st_before b USING (name)
 WHERE p.name LIKE 'pgcdc\_%';
-- another role of the session can neither use nor replace them
SET ROLE pgcdc_st_other;
TRUNCATE st_c;
INSERT INTO st_c VALUES (2, 99, NULL, 'U', 13, '{doc}');
SELECT * FROM pgcdc.scd2_apply_changes('st_h', 'st_c', '{id}', 'seq');
RESET ROLE;
DISCARD TEMP;
TRUNCATE st_c;
INSERT INTO st_c VALUES (2, 7, NULL, 'U', 13, '{doc}');
SELECT * FROM pgcdc.scd2_apply_changes('st_h', 'st_c', '{id}', 'seq');
DEALLOCATE ALL;
TRUNCATE st_c;
INSERT INTO st_c VALUES (1, 7, NULL, 'U', 14, '{doc}');
SELECT * FROM pgcdc.scd2_apply_changes('st_h', 'st_c', '{id}', 'seq');
DISCARD TEMP;
BEGIN;
TRUNCATE st_c;
INSERT INTO st_c VALUES (1, 99, NULL, 'U', 15, '{doc}');
SELECT * FROM pgcdc.scd2_apply_changes('st_h', 'st_c', '{id}', 'seq');
ROLLBACK;
TRUNCATE st_c;
INSERT INTO st_c VALUES (2, 8, NULL, 'U', 15, '{doc}');
SELECT * FROM pgcdc.scd2_apply_changes('st_h', 'st_c', '{id}', 'seq');
\c - :regress_superuser
SELECT id, x, doc, _version, _is_current, _sequence FROM st_h ORDER BY id, _valid_from;
DROP TABLE st, st_h, st_c;
DROP ROLE pgcdc_st_app, pgcdc_st_other;

DROP EXTENSION pgcdc;
DROP VIEW h, invariants;
DROP TABLE account, account_history, changes, cdc;
