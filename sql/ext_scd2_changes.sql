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

-- a source clock that goes backwards never inverts an interval
TRUNCATE changes;
INSERT INTO changes (op, seq, ts, id, owner, tier, balance, doc) VALUES
	('I', 60, '2024-06-10', 9, 'di', 'a', 1, NULL),
	('U', 61, '2024-06-01', 9, 'di', 'b', 1, NULL),
	('U', 62, '2024-06-12', 9, 'di', 'c', 1, NULL);
SELECT * FROM pgcdc.scd2_apply_changes('account_history', 'changes', '{id}', 'seq',
									   valid_from_column => 'ts');
SELECT * FROM h WHERE id = 9 ORDER BY valid_from;

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

DROP EXTENSION pgcdc;
DROP VIEW h, invariants;
DROP TABLE account, account_history, changes, cdc;
