-- pgcdc extension: apply_mirror, the (_source_lsn, _source_seq) guard, rules,
-- quarantine, replay and discard
CREATE EXTENSION pgcdc;
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
\set SHOW_CONTEXT never

-- a mirror target: the source's columns plus the mirror system columns
CREATE TABLE orders (id int PRIMARY KEY, status text, amount numeric, doc text,
					 _source_lsn pg_lsn, _source_seq int, _synced_at timestamptz);
-- the staging table the consumer COPYs into
CREATE TABLE staging (op text, _source_lsn pg_lsn, _source_seq int, _commit_ts timestamptz,
					  id int, status text, amount numeric, doc text,
					  unchanged_toast text[], _old_key jsonb);
CREATE VIEW m AS SELECT id, status, amount, left(doc, 5) AS doc, length(doc) AS doc_len,
						_source_lsn, _source_seq, _synced_at IS NOT NULL AS synced FROM orders;

INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc) VALUES
	('I', '0/100', 1, 1, 'new', 10, repeat('a', 3000)),
	('I', '0/100', 2, 2, 'new', 20, 'b'),
	('U', '0/200', 1, 1, 'paid', 10, NULL),
	('I', '0/200', 2, 3, 'new', 30, 'c'),
	('D', '0/300', 1, 3, NULL, NULL, NULL);
UPDATE staging SET unchanged_toast = '{doc}' WHERE op = 'U';
SELECT * FROM pgcdc.apply_mirror('orders', 'staging', '{id}');
SELECT * FROM m ORDER BY id;

-- older events never move a row back in time; newer ones apply
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc) VALUES
	('U', '0/100', 1, 1, 'stale', 0, 'x'),			-- older than the row
	('U', '0/200', 1, 1, 'replayed', 0, 'x'),		-- the row's own position
	('U', '0/1F0', 9, 2, 'older', 0, 'x'),			-- same LSN order, older
	('U', '0/400', 1, 2, 'shipped', 20, 'b');		-- newer
SELECT * FROM pgcdc.apply_mirror('orders', 'staging', '{id}');
SELECT * FROM m ORDER BY id;

-- a key change (a U whose _old_key differs) deletes the old key's row and
-- writes the new key's
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc, _old_key) VALUES
	('U', '0/500', 1, 20, 'shipped', 20, 'b', '{"id": 2}');
SELECT * FROM pgcdc.apply_mirror('orders', 'staging', '{id}');
SELECT * FROM m ORDER BY id;

-- truncate empties the target; events after it in the batch stay
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc) VALUES
	('T', '0/600', 1, NULL, NULL, NULL, NULL),
	('I', '0/600', 2, 5, 'new', 50, 'e');
SELECT * FROM pgcdc.apply_mirror('orders', 'staging', '{id}');
SELECT * FROM m ORDER BY id;

-- soft delete: the row stays, flagged, and keeps its position
-- (made by hand with the spec's column types, no defaults: inserted rows are
-- not deleted all the same)
CREATE TABLE orders_soft (id int PRIMARY KEY, status text, amount numeric, doc text,
						  _source_lsn pg_lsn, _source_seq int, _synced_at timestamptz,
						  _is_deleted boolean);
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc) VALUES
	('I', '0/100', 1, 1, 'new', 10, 'a'),
	('I', '0/100', 2, 2, 'new', 20, 'b');
SELECT * FROM pgcdc.apply_mirror('orders_soft', 'staging', '{id}', soft_delete => true);
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc) VALUES
	('D', '0/200', 1, 1, NULL, NULL, NULL);
SELECT * FROM pgcdc.apply_mirror('orders_soft', 'staging', '{id}', soft_delete => true);
SELECT id, status, _source_lsn, _source_seq, _is_deleted FROM orders_soft ORDER BY id;
-- an older update does not resurrect it; a truncate flags every row; a
-- newer insert brings it back
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc) VALUES
	('U', '0/150', 1, 1, 'zombie', 10, 'a');
SELECT * FROM pgcdc.apply_mirror('orders_soft', 'staging', '{id}', soft_delete => true);
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc) VALUES
	('T', '0/250', 1, NULL, NULL, NULL, NULL);
SELECT * FROM pgcdc.apply_mirror('orders_soft', 'staging', '{id}', soft_delete => true);
SELECT id, status, _source_lsn, _source_seq, _is_deleted FROM orders_soft ORDER BY id;
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc) VALUES
	('I', '0/300', 1, 1, 'back', 10, 'a');
SELECT * FROM pgcdc.apply_mirror('orders_soft', 'staging', '{id}', soft_delete => true);
SELECT id, status, _source_lsn, _source_seq, _is_deleted FROM orders_soft ORDER BY id;
-- soft delete in one batch leaves what one batch per change would: a key
-- inserted and deleted in the batch is inserted flagged with its last
-- values (7); a flagged row takes the batch's update before the delete (2);
-- a key never seen has nothing to flag (8)
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc) VALUES
	('I', '0/400', 1, 7, 'new', 70, 'g'),
	('U', '0/400', 2, 7, 'paid', 71, 'g'),
	('D', '0/410', 1, 7, NULL, NULL, NULL),
	('U', '0/410', 2, 2, 'shipped', 22, 'b'),
	('D', '0/420', 1, 2, NULL, NULL, NULL),
	('D', '0/420', 2, 8, NULL, NULL, NULL);
SELECT * FROM pgcdc.apply_mirror('orders_soft', 'staging', '{id}', soft_delete => true);
SELECT id, status, amount, doc, _source_lsn, _source_seq, _is_deleted FROM orders_soft ORDER BY id;
-- the same through the staged path: a key written before a truncate is
-- flagged at the truncate (9); unchanged TOAST comes from the batch (10)
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc) VALUES
	('I', '0/500', 1, 9, 'new', 90, 'i'),
	('T', '0/500', 2, NULL, NULL, NULL, NULL),
	('I', '0/500', 3, 10, 'new', 100, 'j'),
	('U', '0/510', 1, 10, 'paid', 101, NULL),
	('D', '0/520', 1, 10, NULL, NULL, NULL);
UPDATE staging SET unchanged_toast = '{doc}' WHERE _source_lsn = '0/510';
SELECT * FROM pgcdc.apply_mirror('orders_soft', 'staging', '{id}', soft_delete => true);
SELECT id, status, amount, doc, _source_lsn, _source_seq, _is_deleted FROM orders_soft ORDER BY id;
-- a replayed batch changes nothing
SELECT * FROM pgcdc.apply_mirror('orders_soft', 'staging', '{id}', soft_delete => true);

-- errors
SELECT * FROM pgcdc.apply_mirror('orders', 'staging', '{id}', soft_delete => true);
SELECT * FROM pgcdc.apply_mirror('staging', 'staging', '{id}');
SELECT * FROM pgcdc.apply_mirror('orders', 'm', '{id}');
SELECT * FROM pgcdc.apply_mirror('orders', 'staging', '{nosuch}');
SELECT * FROM pgcdc.apply_mirror('orders', 'staging', '{id}', NULL);
SELECT * FROM pgcdc.apply_mirror('orders', 'staging', '{id}', op_column => 'kind');
CREATE TABLE bare (op text, id int, status text);
SELECT * FROM pgcdc.apply_mirror('orders', 'bare', '{id}');

-- rules send failing rows to the quarantine instead of the target
SELECT name FROM pgcdc.create_pipeline('shop');
SELECT mode FROM pgcdc.add_table('shop', 'public.orders', 'public.orders', key_columns => '{id}');
SELECT name FROM pgcdc.add_rule('shop', 'public.orders', 'amount_positive', 'amount > 0');
SELECT name FROM pgcdc.add_rule('shop', 'public.orders', 'known_status',
	'status IN (''new'', ''paid'', ''shipped'') -- the order life cycle');
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, _commit_ts, id, status, amount, doc) VALUES
	('I', '0/700', 1, '2024-01-01', 6, 'new', 60, 'f'),
	('I', '0/700', 2, '2024-01-01', 7, 'new', -1, 'g'),
	('I', '0/700', 3, '2024-01-01', 8, 'lost', 80, 'h'),
	('U', '0/800', 1, '2024-01-02', 5, 'paid', -50, 'e'),
	('D', '0/800', 2, '2024-01-02', 6, NULL, NULL, NULL);
SELECT pgcdc.apply_rules('shop', 'public.orders', 'staging', 'public.orders');
SELECT op, id FROM staging ORDER BY _source_lsn, _source_seq;
SELECT * FROM pgcdc.apply_mirror('orders', 'staging', '{id}');
SELECT * FROM m ORDER BY id;
SELECT id, pipeline, source_table, target, commit_lsn, seq, op, event, error_code, error_message,
	   error_detail, attempts, status
  FROM pgcdc.quarantine ORDER BY id;

-- the consumer records other failures the same way
SELECT pgcdc.quarantine_event('shop', 'public.orders', 'public.orders',
	'{"op": "U", "commit_lsn": "0/550", "seq": 1, "ts": "2023-12-31 00:00:00+00", "schema": "public",
	  "table": "orders", "key": {"id": 5}, "new": {"id": 5, "status": "new", "amount": 49, "doc": "old"}}',
	'40P01', 'deadlock detected', 'Process 1 waits for ShareLock.');
SELECT pgcdc.quarantine_event('shop', 'public.orders', 'public.orders', '[]', '23505', 'x');
SELECT pgcdc.quarantine_event('shop', 'public.orders', 'public.orders', '{}', 'oops', 'x');

-- replay: the rule failures fail again (errors refreshed, attempts
-- counted); the deadlock victim applies, but it is older than the row
-- (0/550 < 0/600), so the row does not go back in time
SELECT * FROM pgcdc.quarantine_replay(pipeline => 'shop');
SELECT * FROM m WHERE id = 5;
SELECT id, error_code, error_message, attempts, status FROM pgcdc.quarantine ORDER BY id;
-- fix the cause of one; replay it alone
SELECT pgcdc.drop_rule('shop', 'public.orders', 'known_status');
SELECT * FROM pgcdc.quarantine_replay(3);
SELECT * FROM m ORDER BY id;
-- discard the rest with a note
SELECT pgcdc.quarantine_discard(1, 'negative amount, fixed at the source');
SELECT pgcdc.quarantine_discard(2, 'negative amount, fixed at the source');
SELECT id, attempts, status, resolved_at IS NOT NULL AS resolved, note
  FROM pgcdc.quarantine ORDER BY id;
SELECT * FROM pgcdc.quarantine_replay();
-- errors
SELECT pgcdc.quarantine_discard(1, 'again');
SELECT pgcdc.quarantine_discard(99, 'none');
SELECT pgcdc.quarantine_discard(NULL, 'none');
SELECT * FROM pgcdc.quarantine_replay(4);
SELECT * FROM pgcdc.quarantine_replay(99);
SELECT * FROM pgcdc.quarantine_replay(pipeline => 'nope');
SELECT pgcdc.apply_rules('nope', 'public.orders', 'staging');
SELECT pgcdc.apply_rules('shop', 'public.orders', 'staging', op_column => 'kind');
-- an event whose table map is gone fails, and stays open
SELECT pgcdc.quarantine_event('shop', 'public.gone', NULL,
	'{"op": "I", "commit_lsn": "0/900", "seq": 1, "new": {"id": 1}}', '42P01', 'relation does not exist');
SELECT * FROM pgcdc.quarantine_replay(5);
SELECT id, error_code, error_message, attempts, status FROM pgcdc.quarantine WHERE id = 5;
SELECT * FROM pgcdc.quarantine_replay(5, 'other');

-- data columns may have any name that does not start with pgcdc_, even the
-- short ones the apply's own SQL uses as aliases
CREATE TABLE short_names (id int PRIMARY KEY, u int, t text, x text,
	_source_lsn pg_lsn, _source_seq int, _synced_at timestamptz);
CREATE TEMP TABLE short_ch (id int, u int, t text, x text, op text, _source_lsn pg_lsn,
	_source_seq int, unchanged_toast text[]);
INSERT INTO short_ch VALUES (1, 1, 'a', 'b', 'I', '0/10', 1, NULL),
	(1, 2, NULL, 'c', 'U', '0/20', 1, '{t}');
SELECT * FROM pgcdc.apply_mirror('short_names', 'pg_temp.short_ch', '{id}');
SELECT id, u, t, x FROM short_names;

-- a plain batch (no truncate, unchanged TOAST or key change) is applied by
-- one statement, or one MERGE if it has one event per key, prepared once per
-- session and batch shape and reused
DEALLOCATE ALL;
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc) VALUES
	('I', '0/A00', 1, 30, 'new', 1, 'p'), ('U', '0/A00', 2, 30, 'paid', 1, 'p'),
	('I', '0/A00', 3, 31, 'new', 2, 'q'), ('D', '0/A00', 4, 31, NULL, NULL, NULL),
	('U', '0/A00', 5, 5, 'shipped', 50, 'e');
SELECT * FROM pgcdc.apply_mirror('orders', 'staging', '{id}');
SELECT count(*) AS statements FROM pg_prepared_statements WHERE name LIKE 'pgcdc\_%';
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc) VALUES
	('D', '0/B00', 1, 30, NULL, NULL, NULL), ('I', '0/B00', 2, 32, 'new', 3, 'r');
SELECT * FROM pgcdc.apply_mirror('orders', 'staging', '{id}');
SELECT * FROM m WHERE id >= 30 OR id = 5 ORDER BY id;
-- (the first batch has two events on keys 30 and 31: the one statement; the
-- second one event per key: the MERGE; one query says whether each is plain
-- and has one event per key, the plain one alone is for track_counts off)
SELECT CASE WHEN statement ~ 'WITH pgcdc_m' THEN 'apply' WHEN statement ~ 'MERGE INTO' THEN 'merge'
			WHEN statement ~ 'GROUP BY' THEN 'rows and keys' ELSE 'plain' END AS statement,
	   generic_plans + custom_plans AS runs
  FROM pg_prepared_statements WHERE name LIKE 'pgcdc\_%' ORDER BY 1;
-- a statement of the same name prepared by someone else is replaced, not run
CREATE TABLE canary (x int);
DO $$
DECLARE
	n text := (SELECT name FROM pg_prepared_statements WHERE statement ~ 'WITH pgcdc_m');
BEGIN
	EXECUTE format('DEALLOCATE %I', n);
	EXECUTE format('PREPARE %I AS WITH c AS (INSERT INTO public.canary VALUES (1)) '
				   'SELECT 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint', n);
END
$$;
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc) VALUES
	('I', '0/C00', 1, 33, 'new', 4, 's');
SELECT * FROM pgcdc.apply_mirror('orders', 'staging', '{id}');
SELECT count(*) AS canary FROM canary;
SELECT id, status FROM orders WHERE id = 33;
-- with track_counts off there are no statistics to count a MERGE's rows by:
-- the one statement applies a batch of one event per key
SET track_counts = off;
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc) VALUES
	('I', '0/C05', 1, 34, 'new', 5, 't');
SELECT * FROM pgcdc.apply_mirror('orders', 'staging', '{id}');
RESET track_counts;
SELECT id, status FROM orders WHERE id = 34;
SELECT generic_plans + custom_plans AS apply_runs FROM pg_prepared_statements WHERE statement ~ 'WITH pgcdc_m';
DELETE FROM orders WHERE id = 34;
-- a new column in the target and the changes is a new shape: new statements
ALTER TABLE orders ADD COLUMN note text;
ALTER TABLE staging ADD COLUMN note text;
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc, note) VALUES
	('U', '0/C10', 1, 33, 'paid', 4, 's', 'with a note');
SELECT * FROM pgcdc.apply_mirror('orders', 'staging', '{id}');
SELECT id, status, note FROM orders WHERE id = 33;
ALTER TABLE orders DROP COLUMN note;
ALTER TABLE staging DROP COLUMN note;
-- a null key or an unknown op fails the whole batch: nothing is applied
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc) VALUES
	('I', '0/D00', 1, 34, 'new', 5, 't'), ('I', '0/D00', 2, NULL, 'new', 6, 'u');
SELECT * FROM pgcdc.apply_mirror('orders', 'staging', '{id}');
UPDATE staging SET op = 'X', id = 35 WHERE id IS NULL;
SELECT * FROM pgcdc.apply_mirror('orders', 'staging', '{id}');
SELECT count(*) AS applied FROM orders WHERE id >= 34;

-- hard deletes while older events are quarantined leave tombstones: a
-- replay of such an event does not bring the row back
SELECT pgcdc.quarantine_event('shop', 'public.orders', 'public.orders',
	'{"op": "I", "commit_lsn": "0/E00", "seq": 1, "ts": "2024-02-01 00:00:00+00", "schema": "public",
	  "table": "orders", "new": {"id": 50, "status": "new", "amount": 1, "doc": "z"}}',
	'23505', 'duplicate key value') AS q1 \gset
SELECT pgcdc.quarantine_event('shop', 'public.orders', 'public.orders',
	'{"op": "I", "commit_lsn": "0/E00", "seq": 2, "ts": "2024-02-01 00:00:00+00", "schema": "public",
	  "table": "orders", "new": {"id": 51, "status": "new", "amount": 1, "doc": "z"}}',
	'23505', 'duplicate key value') AS q2 \gset
SELECT pgcdc.quarantine_event('shop', 'public.orders', 'public.orders',
	'{"op": "I", "commit_lsn": "0/E00", "seq": 3, "ts": "2024-02-01 00:00:00+00", "schema": "public",
	  "table": "orders", "new": {"id": 52, "status": "new", "amount": 1, "doc": "z"}}',
	'23505', 'duplicate key value') AS q3 \gset
-- key 50: updated (the target gets the row), then deleted in another
-- batch; key 51: updated and deleted in one batch (the target never has it)
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc) VALUES
	('U', '0/E10', 1, 50, 'paid', 2, 'z');
SELECT * FROM pgcdc.apply_mirror('orders', 'staging', '{id}');
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc) VALUES
	('D', '0/E20', 1, 50, NULL, NULL, NULL),
	('U', '0/E10', 2, 51, 'paid', 2, 'z'), ('D', '0/E20', 2, 51, NULL, NULL, NULL);
SELECT * FROM pgcdc.apply_mirror('orders', 'staging', '{id}');			-- one statement
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc, _old_key) VALUES
	('I', '0/E30', 1, 53, 'new', 2, 'z', NULL),
	('U', '0/E40', 1, 52, 'moved', 2, 'z', '{"id": 53}'),
	('D', '0/E50', 1, 52, NULL, NULL, NULL, NULL);
SELECT * FROM pgcdc.apply_mirror('orders', 'staging', '{id}');			-- staged (key change)
SELECT target, key, source_lsn, source_seq FROM pgcdc.mirror_tombstone ORDER BY key::text;
SELECT * FROM pgcdc.quarantine_replay(:q1);
SELECT * FROM pgcdc.quarantine_replay(:q2);
SELECT * FROM pgcdc.quarantine_replay(:q3);
SELECT count(*) AS resurrected FROM orders WHERE id IN (50, 51, 52, 53);
SELECT count(*) AS tombstones_left FROM pgcdc.mirror_tombstone;
-- a truncate buries every key older than it
SELECT pgcdc.quarantine_event('shop', 'public.orders', 'public.orders',
	'{"op": "U", "commit_lsn": "0/F00", "seq": 1, "ts": "2024-02-01 00:00:00+00", "schema": "public",
	  "table": "orders", "key": {"id": 5}, "new": {"id": 5, "status": "old", "amount": 5, "doc": "e"}}',
	'40001', 'could not serialize access') AS q4 \gset
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc) VALUES
	('T', '0/F10', 1, NULL, NULL, NULL, NULL);
SELECT * FROM pgcdc.apply_mirror('orders', 'staging', '{id}');
SELECT * FROM pgcdc.quarantine_replay(:q4);
SELECT count(*) AS rows_after_truncate FROM orders;
-- without open events no tombstone is kept
TRUNCATE staging;
INSERT INTO staging (op, _source_lsn, _source_seq, id, status, amount, doc) VALUES
	('I', '0/F20', 1, 60, 'new', 1, 'z'), ('D', '0/F30', 1, 60, NULL, NULL, NULL);
SELECT * FROM pgcdc.apply_mirror('orders', 'staging', '{id}');
SELECT count(*) AS tombstones FROM pgcdc.mirror_tombstone;

-- the events of one target replay together, and by halves when that fails:
-- an event that fails alone (71, a rule; the event of a gone table map, in
-- its own group) stays open with its error, the rest apply in source order
-- (70 inserted and then deleted)
SELECT count(pgcdc.quarantine_event('shop', 'public.orders', 'public.orders',
	jsonb_build_object('op', e.op, 'commit_lsn', e.lsn, 'seq', 1, 'ts', '2024-03-01 00:00:00+00',
					   'schema', 'public', 'table', 'orders', 'key', jsonb_build_object('id', e.id))
	  || CASE WHEN e.op <> 'D' THEN jsonb_build_object('new', jsonb_build_object('id', e.id, 'status', 'new',
																				'amount', e.amount, 'doc', 'r'))
			  ELSE '{}' END,
	'23505', 'x'))
  FROM (VALUES ('I', '0/F40', 70, 1), ('I', '0/F41', 71, -1), ('I', '0/F42', 72, 2),
			   ('D', '0/F43', 70, NULL), ('I', '0/F44', 74, 4)) e(op, lsn, id, amount);
SELECT * FROM pgcdc.quarantine_replay(pipeline => 'shop');
SELECT event->'key'->>'id' AS id, event->>'op' AS op, status, error_code, attempts
  FROM pgcdc.quarantine WHERE commit_lsn >= '0/F40' ORDER BY commit_lsn;
SELECT id, status, amount FROM orders WHERE id >= 70 ORDER BY id;

-- an update that changes the key and leaves a TOASTed column unchanged: the
-- value comes from the old key (earlier in the batch, through a chain of key
-- changes, or from the target's row)
CREATE TABLE keyed (id int PRIMARY KEY, v text, big text, _source_lsn pg_lsn, _source_seq int,
					_synced_at timestamptz);
CREATE TABLE keyed_changes (op text, _source_lsn pg_lsn, _source_seq int, id int, v text, big text,
							unchanged_toast text[], _old_key jsonb);
INSERT INTO keyed_changes VALUES
	('I', '0/10', 1, 1, 'a', 'BIG', NULL, NULL),
	('U', '0/20', 1, 2, 'a', NULL, '{big}', '{"id": 1}'),
	('U', '0/30', 1, 3, 'b', NULL, '{big}', '{"id": 2}'),
	('U', '0/40', 1, 3, 'c', NULL, '{big}', NULL);
SELECT * FROM pgcdc.apply_mirror('keyed', 'keyed_changes', '{id}');
TRUNCATE keyed_changes;
INSERT INTO keyed_changes VALUES ('U', '0/50', 1, 4, 'd', NULL, '{big}', '{"id": 3}');
SELECT * FROM pgcdc.apply_mirror('keyed', 'keyed_changes', '{id}');
SELECT id, v, big FROM keyed;
DROP TABLE keyed, keyed_changes;

-- where the consumer may COPY a batch's new keys straight into a mirror
-- (consumer/born.c): a table MERGE may write, with a unique index on key
-- columns that checks at once; the answer is the transaction's now()
CREATE TABLE born_ok (id int PRIMARY KEY, code text, v int);
CREATE TABLE born_wide (a int, b int, v int, UNIQUE (a));
CREATE TABLE born_none (id int, v int);
CREATE TABLE born_other (id int, code text UNIQUE, v int);
CREATE TABLE born_partial (id int, v int);
CREATE UNIQUE INDEX ON born_partial (id) WHERE v > 0;
CREATE TABLE born_deferred (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, v int);
CREATE TABLE born_ruled (id int PRIMARY KEY, v int);
CREATE RULE born_ruled_r AS ON INSERT TO born_ruled WHERE new.v < 0 DO INSTEAD NOTHING;
CREATE TABLE born_secure (id int PRIMARY KEY, v int);
ALTER TABLE born_secure ENABLE ROW LEVEL SECURITY;
CREATE TABLE born_parent (id int PRIMARY KEY, v int) PARTITION BY RANGE (id);
BEGIN;
SELECT t, k, coalesce(pgcdc._mirror_copy_ok(t, k) = now(), false) AS copy_ok
  FROM (VALUES ('born_ok'::regclass, '{id}'::text[]), ('born_ok', '{code}'), ('born_ok', '{id,code}'),
			   ('born_wide', '{a,b}'), ('born_wide', '{b}'), ('born_none', '{id}'), ('born_other', '{id}'),
			   ('born_partial', '{id}'), ('born_deferred', '{id}'), ('born_ruled', '{id}'),
			   ('born_secure', '{id}'), ('born_parent', '{id}')) x(t, k);
COMMIT;
DROP TABLE born_ok, born_wide, born_none, born_other, born_partial, born_deferred, born_ruled,
	born_secure, born_parent;

DROP EXTENSION pgcdc;
DROP VIEW m;
DROP TABLE orders, orders_soft, staging, bare, short_names, canary;
