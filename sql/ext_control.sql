-- pgcdc extension: control tables, pipelines, table maps, rules, status view
CREATE EXTENSION pgcdc;
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
\set SHOW_CONTEXT never

-- the objects the extension made
SELECT c.relname, c.relkind FROM pg_class c
 WHERE c.relnamespace = 'pgcdc'::regnamespace AND c.relkind IN ('r', 'v')
 ORDER BY 1;
SELECT p.proname FROM pg_proc p
 WHERE p.pronamespace = 'pgcdc'::regnamespace AND p.proname !~ '^_'
 ORDER BY 1;
-- every function pins search_path (the C functions too, though they run
-- no SQL), except the SQL wrappers that read the caller's current_schema()
-- and call a pinned implementation
SELECT p.proname FROM pg_proc p
 WHERE p.pronamespace = 'pgcdc'::regnamespace
   AND NOT coalesce(p.proconfig @> '{"search_path=pg_catalog, pg_temp"}', false)
 ORDER BY 1;

-- pipelines
SELECT name, slot_name, paused, options FROM pgcdc.create_pipeline('shop');
SELECT name, slot_name, options FROM pgcdc.create_pipeline('Billing EU', options => '{"batch": 10}');
SELECT name, slot_name FROM pgcdc.create_pipeline('ops', 'ops_slot');
SELECT pgcdc.pause_pipeline('shop');
SELECT name, paused FROM pgcdc.pipeline ORDER BY name;
SELECT pgcdc.resume_pipeline('shop');
SELECT name, paused FROM pgcdc.pipeline ORDER BY name;
-- errors
SELECT pgcdc.create_pipeline(NULL);
SELECT pgcdc.create_pipeline('');
SELECT pgcdc.create_pipeline('shop');
SELECT pgcdc.create_pipeline('shop2', 'pgcdc_shop');
SELECT pgcdc.create_pipeline('x', 'Bad-Slot');
SELECT pgcdc.create_pipeline('x', options => '[1]');
SELECT pgcdc.pause_pipeline('nope');
SELECT pgcdc.drop_pipeline('nope');
SELECT pgcdc.drop_pipeline(NULL);
-- the table's own constraints hold for direct writes too
INSERT INTO pgcdc.pipeline (name, slot_name, created_at, options)
VALUES ('y', 'y', '2026-01-01', '"x"');

-- table maps: names as SQL writes them, stored canonical
CREATE SCHEMA "My Schema";
CREATE TABLE "My Schema"."Orders" (id int PRIMARY KEY, "Total" numeric, note text);
CREATE TABLE public.customers (id int PRIMARY KEY, name text);
SELECT pipeline, source_table, target, mode, key_columns, source_schema, source_name
  FROM pgcdc.add_table('shop', '"My Schema"."Orders"');
SELECT pipeline, source_table, target, mode, track_columns
  FROM pgcdc.add_table('shop', '"My Schema"."Orders"', 'public.orders_history', 'scd2',
					   track_columns => '{Total}');
SELECT pipeline, source_table, target, mode, soft_delete
  FROM pgcdc.add_table('shop', 'customers', 'Customers_Mirror', soft_delete => true);
SELECT pipeline, source_table, target, mode FROM pgcdc.add_table('ops', 'audit.events', 'events_log', 'append');
SELECT pipeline, source_table, target, mode FROM pgcdc.table_map ORDER BY pipeline, target;
-- errors
SELECT pgcdc.add_table('nope', 'customers');
SELECT pgcdc.add_table('shop', 'customers', 'c2', 'history');
SELECT pgcdc.add_table('shop', 'customers', 'c2', NULL);
-- (a source table in another database: its columns cannot be checked here)
SELECT pgcdc.add_table('shop', 'elsewhere.t', 'c2', key_columns => '{_source_lsn}');
SELECT pgcdc.add_table('shop', 'elsewhere.t', 'c2', 'scd2', track_columns => '{name,_valid_from}');
SELECT pgcdc.add_table('shop', '"My Schema"."Orders"');
SELECT pgcdc.add_table('ops', 'customers', 'Customers_Mirror');
SELECT pgcdc.add_table('shop', 'customers', 'c3', 'scd2', soft_delete => true);
SELECT pgcdc.add_table('shop', 'customers', 'c3', 'mirror', track_columns => '{name}');
SELECT pgcdc.add_table('shop', 'customers', 'c3', key_columns => '{nosuch}');
SELECT pgcdc.add_table('shop', 'customers', 'c3', key_columns => '{id,id}');
SELECT pgcdc.add_table('shop', 'customers', 'c3', key_columns => '{}');
SELECT pgcdc.add_table('shop', 'customers', 'c3', key_columns => ARRAY[NULL]::text[]);
SELECT pgcdc.add_table('shop', 'customers', 'c3', key_columns => '{id}', ignore_columns => '{id}');
SELECT pgcdc.add_table('shop', 'a.b.c.d');
SELECT pgcdc.add_table('shop', '"unterminated');
SELECT pgcdc.add_table('shop', NULL);
INSERT INTO pgcdc.table_map (pipeline, source_table, target, mode, source_schema, source_name)
VALUES ('ghost', 'public.t', 'public.t', 'mirror', 'public', 't');
INSERT INTO pgcdc.table_map (pipeline, source_table, target, mode, source_schema, source_name)
VALUES ('shop', 'public.t', 'public.t', 'upsert', 'public', 't');
SELECT pgcdc.remove_table('shop', 'customers');
SELECT pgcdc.remove_table('shop', 'customers');
SELECT pgcdc.remove_table('shop', '"My Schema"."Orders"', 'orders_history');
SELECT pipeline, source_table, target FROM pgcdc.table_map ORDER BY pipeline, target;

-- rules: one boolean expression over the table's columns
SELECT pipeline, source_table, name, check_expr
  FROM pgcdc.add_rule('shop', '"My Schema"."Orders"', 'total_not_negative', '"Total" >= 0');
SELECT name FROM pgcdc.add_rule('shop', '"My Schema"."Orders"', 'has note', 'note IS NOT NULL OR "Total" = 0');
-- a table that is not here can only be parsed
SELECT name FROM pgcdc.add_rule('ops', 'audit.events', 'kind', 'kind IN (''a'', ''b'')');
-- errors
SELECT pgcdc.add_rule('shop', '"My Schema"."Orders"', 'total_not_negative', 'true');
SELECT pgcdc.add_rule('shop', '"My Schema"."Orders"', 'r', 'nosuch > 0');
SELECT pgcdc.add_rule('shop', '"My Schema"."Orders"', 'r', '"Total" + 1');
SELECT pgcdc.add_rule('shop', '"My Schema"."Orders"', 'r', '"Total" > 0); DROP TABLE "My Schema"."Orders"; SELECT (1');
SELECT pgcdc.add_rule('ops', 'audit.events', 'r', 'true; DROP TABLE customers');
SELECT name, check_expr FROM pgcdc.add_rule('ops', 'audit.events', 'r', 'true -- comment');
SELECT pgcdc.add_rule('ops', 'audit.events', 'r2', 'x > (SELECT max(id) FROM customers)');
SELECT pgcdc.add_rule('ops', 'audit.events', 'r2', 'x > 1 FROM customers');
SELECT pgcdc.add_rule('ops', 'audit.events', 'r2', 'x >');
-- a rule judges one row: no aggregate or window function
SELECT pgcdc.add_rule('ops', 'audit.events', 'r2', 'count(*) > 0');
SELECT pgcdc.add_rule('ops', 'audit.events', 'r2', 'row_number() OVER () > 0');
SELECT pgcdc.add_rule('shop', '"My Schema"."Orders"', 'r', 'sum("Total") > 0');
SELECT pgcdc.add_rule('ops', 'audit.events', 'r2', NULL);
SELECT pgcdc.add_rule('ops', 'audit.events', NULL, 'true');
SELECT pgcdc.add_rule('nope', 'audit.events', 'r2', 'true');
SELECT pgcdc.drop_rule('shop', '"My Schema"."Orders"', 'has note');
SELECT pgcdc.drop_rule('shop', '"My Schema"."Orders"', 'has note');
SELECT pipeline, source_table, name, check_expr FROM pgcdc.rule ORDER BY 1, 2, 3;
-- the table is still there
SELECT count(*) FROM "My Schema"."Orders";

-- status: checkpoint, lag, open quarantine, last batch
INSERT INTO pgcdc.checkpoint (pipeline, commit_lsn, end_lsn, commit_ts, applied_at, source_lsn,
							  transactions, events)
VALUES ('shop', '0/1000', '0/1050', '2026-01-01 00:00:00+00', '2026-01-01 00:00:02.5+00',
		'0/2050', 3, 12);
INSERT INTO pgcdc.batch (pipeline, first_lsn, last_lsn, status, error)
VALUES ('shop', '0/900', '0/1000', 'ok', NULL), ('shop', '0/1000', '0/1050', 'partial', 'one event quarantined');
SELECT pgcdc.quarantine_event('shop', NULL, NULL,
	'{"op": "I", "commit_lsn": "0/1000", "seq": 1, "schema": "public", "table": "customers", "new": {"id": 1}}',
	'23505', 'duplicate key');
-- table names are stored as table_map holds them; the pipeline must exist
SELECT pgcdc.quarantine_event('shop', 'customers', '"My Schema"."Orders"', '{"op": "I"}', '23505',
							  'duplicate key') AS qid \gset
SELECT source_table, target FROM pgcdc.quarantine WHERE id = :qid;
DELETE FROM pgcdc.quarantine WHERE target = '"My Schema"."Orders"';
SELECT pgcdc.quarantine_event('nope', 'customers', 'c', '{"op": "I"}', '23505', 'duplicate key');
SELECT pipeline, slot_name, paused, commit_lsn, end_lsn, lag_bytes, lag_seconds, transactions,
	   events, open_quarantine, last_batch_status, last_batch_error
  FROM pgcdc.status ORDER BY pipeline;

-- a source table renamed at the source: its maps, rules and quarantined
-- events follow it, and so does the comment of a target the consumer made
CREATE TABLE "Renamed Target" (id int);
SELECT target FROM pgcdc.add_table('ops', 'src.old', '"Renamed Target"');
SELECT target FROM pgcdc.add_table('ops', 'src.old', 'rt_log', 'append');
SELECT name FROM pgcdc.add_rule('ops', 'src.old', 'positive', 'id > 0');
COMMENT ON TABLE "Renamed Target" IS 'src.old: created by pgcdc_consumer, which adds the columns added there to it; copied at 0/10';
SELECT pgcdc.quarantine_event('ops', 'src.old', '"Renamed Target"', '{"op": "I"}', '23514', 'rule') > 0 AS quarantined;
SELECT pgcdc.rename_source_table('ops', 'src.old', '"New Schema"."New"');
SELECT source_table, source_schema, source_name, target FROM pgcdc.table_map
 WHERE pipeline = 'ops' ORDER BY target;
SELECT source_table, name FROM pgcdc.rule WHERE pipeline = 'ops' ORDER BY 1, 2;
SELECT source_table, target FROM pgcdc.quarantine WHERE pipeline = 'ops';
SELECT obj_description('"Renamed Target"'::regclass, 'pg_class');
-- errors: no such map, a name the pipeline maps already, bad arguments
SELECT pgcdc.rename_source_table('ops', 'src.old', 'src.newer');
SELECT pgcdc.rename_source_table('ops', '"New Schema"."New"', 'audit.events');
SELECT pgcdc.rename_source_table('ops', '"New Schema"."New"', NULL);
SELECT pgcdc.rename_source_table('ops', '"New Schema"."New"', 'a.b.c');
SELECT pgcdc.rename_source_table('nope', 'src.old', 'src.newer');
SELECT count(*) FROM pgcdc.table_map WHERE source_table = '"New Schema"."New"';
DELETE FROM pgcdc.quarantine WHERE pipeline = 'ops';
SELECT pgcdc.remove_table('ops', '"New Schema"."New"');
DROP TABLE "Renamed Target";

-- dropping a pipeline takes its maps, rules, checkpoint and batches, and
-- the consumer's replication origin (each origin holds a replication state
-- slot until dropped)
SELECT pg_replication_origin_create('pgcdc_shop') > 0 AS origin_created;
SELECT pgcdc.drop_pipeline('shop');
SELECT (SELECT count(*) FROM pgcdc.table_map WHERE pipeline = 'shop') AS maps,
	   (SELECT count(*) FROM pgcdc.rule WHERE pipeline = 'shop') AS rules,
	   (SELECT count(*) FROM pgcdc.checkpoint WHERE pipeline = 'shop') AS checkpoints,
	   (SELECT count(*) FROM pgcdc.batch WHERE pipeline = 'shop') AS batches,
	   (SELECT count(*) FROM pgcdc.quarantine WHERE pipeline = 'shop') AS quarantined,
	   pg_replication_origin_oid('pgcdc_shop') IS NULL AS origin_dropped;
-- an origin a session (a running consumer) uses stays, with a warning
SELECT name FROM pgcdc.create_pipeline('busy');
SELECT pg_replication_origin_create('pgcdc_busy') > 0 AS origin_created;
SELECT pg_replication_origin_session_setup('pgcdc_busy');
SELECT pgcdc.drop_pipeline('busy');
SELECT count(*) AS pipelines FROM pgcdc.pipeline WHERE name = 'busy';
SELECT pg_replication_origin_session_reset();
SELECT pg_replication_origin_drop('pgcdc_busy');

DROP EXTENSION pgcdc;
DROP SCHEMA "My Schema" CASCADE;
DROP TABLE public.customers;
