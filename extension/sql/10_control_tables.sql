/* ------------------------------------------------------------------------
 * 1. Control tables
 * ------------------------------------------------------------------------ */

CREATE TABLE pgcdc.pipeline (
	name		text PRIMARY KEY CHECK (name OPERATOR(pg_catalog.<>) ''),
	slot_name	text NOT NULL UNIQUE
				CHECK (slot_name OPERATOR(pg_catalog.~) '^[a-z0-9_]{1,63}$'),
	created_at	timestamptz NOT NULL DEFAULT pg_catalog.now(),
	paused		boolean NOT NULL DEFAULT false,
	options		jsonb NOT NULL DEFAULT '{}'
				CHECK (pg_catalog.jsonb_typeof(options) OPERATOR(pg_catalog.=) 'object')
);
COMMENT ON TABLE pgcdc.pipeline IS 'one row per pipeline: a replication slot and the table maps it feeds';

-- source_table and target are stored in canonical quoted form,
-- format('%I.%I', schema, table), so that equal names compare equal.
CREATE TABLE pgcdc.table_map (
	pipeline	text NOT NULL REFERENCES pgcdc.pipeline (name)
				ON UPDATE CASCADE ON DELETE CASCADE,
	source_table text NOT NULL,
	target		text NOT NULL,
	mode		text NOT NULL DEFAULT 'mirror'
				CHECK (mode OPERATOR(pg_catalog.=) ANY (ARRAY['mirror', 'scd2', 'append'])),
	key_columns	text[] CHECK (pg_catalog.cardinality(key_columns) OPERATOR(pg_catalog.>) 0),
	track_columns text[] CHECK (pg_catalog.cardinality(track_columns) OPERATOR(pg_catalog.>) 0),
	ignore_columns text[],
	soft_delete	boolean NOT NULL DEFAULT false,
	source_schema text NOT NULL,
	source_name	text NOT NULL,
	PRIMARY KEY (pipeline, source_table, target),
	-- a target has one writer: two maps into one target would fight over its rows
	UNIQUE (target),
	CONSTRAINT soft_delete_needs_mirror
		CHECK (NOT soft_delete OR mode OPERATOR(pg_catalog.=) 'mirror'),
	CONSTRAINT track_columns_need_scd2
		CHECK (track_columns IS NULL OR mode OPERATOR(pg_catalog.=) 'scd2')
);
COMMENT ON TABLE pgcdc.table_map IS 'which source table feeds which target, and how';

CREATE TABLE pgcdc.checkpoint (
	pipeline	text PRIMARY KEY REFERENCES pgcdc.pipeline (name)
				ON UPDATE CASCADE ON DELETE CASCADE,
	commit_lsn	pg_lsn,
	end_lsn		pg_lsn,
	commit_ts	timestamptz,
	applied_at	timestamptz,
	source_lsn	pg_lsn,			-- source's WAL position as last seen
	source_seen_at timestamptz,
	transactions bigint NOT NULL DEFAULT 0,
	events		bigint NOT NULL DEFAULT 0,
	batches		bigint NOT NULL DEFAULT 0,
	quarantined	bigint NOT NULL DEFAULT 0,
	-- mapped source tables the consumer saw renamed or dropped, whose
	-- changes under the old name the checkpoint has not passed yet: kept
	-- here so that a new consumer process goes on where the last one was
	source_moves jsonb
);
COMMENT ON TABLE pgcdc.checkpoint IS 'per pipeline: the last source transaction applied, written in the same transaction as the data';

CREATE TABLE pgcdc.batch (
	id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	pipeline	text NOT NULL REFERENCES pgcdc.pipeline (name)
				ON UPDATE CASCADE ON DELETE CASCADE,
	first_lsn	pg_lsn,
	last_lsn	pg_lsn,
	started_at	timestamptz NOT NULL DEFAULT pg_catalog.now(),
	finished_at	timestamptz,
	duration_ms	double precision,
	transactions bigint NOT NULL DEFAULT 0,
	inserts		bigint NOT NULL DEFAULT 0,
	updates		bigint NOT NULL DEFAULT 0,
	deletes		bigint NOT NULL DEFAULT 0,
	truncates	bigint NOT NULL DEFAULT 0,
	applied		bigint NOT NULL DEFAULT 0,
	skipped		bigint NOT NULL DEFAULT 0,
	quarantined	bigint NOT NULL DEFAULT 0,
	status		text NOT NULL DEFAULT 'ok'
				CHECK (status OPERATOR(pg_catalog.=) ANY (ARRAY['ok', 'partial', 'failed'])),
	error		text
);
CREATE INDEX batch_pipeline_id ON pgcdc.batch (pipeline, id);
COMMENT ON TABLE pgcdc.batch IS 'one row per applied batch';

CREATE TABLE pgcdc.quarantine (
	id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	pipeline	text,
	source_table text,
	target		text,
	commit_lsn	pg_lsn,
	seq			integer,
	op			text CHECK (op OPERATOR(pg_catalog.=) ANY (ARRAY['I', 'U', 'D', 'T', 'M'])),
	event		jsonb NOT NULL,
	error_code	text NOT NULL CHECK (error_code OPERATOR(pg_catalog.~) '^[0-9A-Z]{5}$'),
	error_message text NOT NULL,
	error_detail text,
	quarantined_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	attempts	integer NOT NULL DEFAULT 1,
	status		text NOT NULL DEFAULT 'open'
				CHECK (status OPERATOR(pg_catalog.=) ANY (ARRAY['open', 'replayed', 'discarded'])),
	resolved_at	timestamptz,
	note		text,
	CONSTRAINT resolved_when_closed
		CHECK ((status OPERATOR(pg_catalog.=) 'open') OPERATOR(pg_catalog.=) (resolved_at IS NULL))
);
CREATE INDEX quarantine_open ON pgcdc.quarantine (pipeline, id)
	WHERE status OPERATOR(pg_catalog.=) 'open';
COMMENT ON TABLE pgcdc.quarantine IS 'events that could not be applied, with the error, until replayed or discarded';

-- Keys a mirror's hard deletes (and truncates: key {}) removed while the
-- target had open quarantined events: replaying an older event must not
-- bring them back.  Kept only while such events are open.
CREATE TABLE pgcdc.mirror_tombstone (
	target		text NOT NULL,		-- pgcdc._qname of the target
	key			jsonb NOT NULL,		-- the key columns as an object; {} for a truncate
	source_lsn	pg_lsn NOT NULL,
	source_seq	integer NOT NULL,
	PRIMARY KEY (target, key)
);
COMMENT ON TABLE pgcdc.mirror_tombstone IS 'mirror rows deleted while older quarantined events were open';

CREATE TABLE pgcdc.rule (
	pipeline	text NOT NULL REFERENCES pgcdc.pipeline (name)
				ON UPDATE CASCADE ON DELETE CASCADE,
	source_table text NOT NULL,
	name		text NOT NULL CHECK (name OPERATOR(pg_catalog.<>) ''),
	check_expr	text NOT NULL,
	created_at	timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (pipeline, source_table, name)
);
COMMENT ON TABLE pgcdc.rule IS 'data-quality rules: an event whose new row fails one is quarantined';

-- pg_dump keeps the users' rows of the control tables.
SELECT pg_catalog.pg_extension_config_dump('pgcdc.pipeline', '');
SELECT pg_catalog.pg_extension_config_dump('pgcdc.table_map', '');
SELECT pg_catalog.pg_extension_config_dump('pgcdc.checkpoint', '');
SELECT pg_catalog.pg_extension_config_dump('pgcdc.batch', '');
SELECT pg_catalog.pg_extension_config_dump('pgcdc.quarantine', '');
SELECT pg_catalog.pg_extension_config_dump('pgcdc.rule', '');
SELECT pg_catalog.pg_extension_config_dump('pgcdc.mirror_tombstone', '');

CREATE VIEW pgcdc.status AS
SELECT p.name AS pipeline,
	   p.slot_name,
	   p.paused,
	   c.commit_lsn,
	   c.end_lsn,
	   c.commit_ts,
	   c.applied_at,
	   c.source_lsn,
	   c.source_lsn OPERATOR(pg_catalog.-) c.end_lsn AS lag_bytes,
	   pg_catalog.date_part('epoch', c.applied_at OPERATOR(pg_catalog.-) c.commit_ts) AS lag_seconds,
	   coalesce(c.transactions, 0) AS transactions,
	   coalesce(c.events, 0) AS events,
	   (SELECT pg_catalog.count(*) FROM pgcdc.quarantine q
		 WHERE q.pipeline OPERATOR(pg_catalog.=) p.name
		   AND q.status OPERATOR(pg_catalog.=) 'open') AS open_quarantine,
	   b.status AS last_batch_status,
	   b.finished_at AS last_batch_at,
	   b.error AS last_batch_error,
	   c.source_moves		-- renames and drops the consumer is following
  FROM pgcdc.pipeline p
  LEFT JOIN pgcdc.checkpoint c ON c.pipeline OPERATOR(pg_catalog.=) p.name
  LEFT JOIN LATERAL (SELECT b.status, b.finished_at, b.error FROM pgcdc.batch b
					  WHERE b.pipeline OPERATOR(pg_catalog.=) p.name
					  ORDER BY b.id DESC LIMIT 1) b ON true;
COMMENT ON VIEW pgcdc.status IS 'per pipeline: checkpoint, lag, open quarantine, last batch';
