/*
 * pgcdc--1.0.0.sql: the pgcdc extension, version 1.0.0.
 *
 * Sections:
 *   1. control tables and the status view
 *   2. internal helpers (name parsing, column lookup, errors)
 *   3. pipeline, table map and rule management
 *   4. SCD2 history: create_history_table, scd2_merge, scd2_apply_changes
 *   5. mirror apply
 *   6. rules and quarantine
 *   7. privileges
 *
 * Every function pins search_path to pg_catalog, pg_temp, and user
 * identifiers reach dynamic SQL only through format('%I') / quote_ident or
 * as regclass output, so neither hostile objects on the caller's path nor
 * odd table and column names change what runs.  Functions that resolve a
 * table name given as text are thin SQL wrappers that pass the caller's
 * current_schema() to the pinned implementation: the pinned path would
 * otherwise hide the caller's schema.
 */

\echo Use "CREATE EXTENSION pgcdc" to load this file. \quit

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
	quarantined	bigint NOT NULL DEFAULT 0
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
	   b.error AS last_batch_error
  FROM pgcdc.pipeline p
  LEFT JOIN pgcdc.checkpoint c ON c.pipeline OPERATOR(pg_catalog.=) p.name
  LEFT JOIN LATERAL (SELECT b.status, b.finished_at, b.error FROM pgcdc.batch b
					  WHERE b.pipeline OPERATOR(pg_catalog.=) p.name
					  ORDER BY b.id DESC LIMIT 1) b ON true;
COMMENT ON VIEW pgcdc.status IS 'per pipeline: checkpoint, lag, open quarantine, last batch';

/* ------------------------------------------------------------------------
 * 2. Internal helpers
 * ------------------------------------------------------------------------ */

-- Raise an error; usable inside SQL expressions (CASE ... ELSE pgcdc._fail()).
CREATE FUNCTION pgcdc._fail(code text, message text, detail text DEFAULT NULL,
							hint text DEFAULT NULL)
RETURNS timestamptz LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF detail IS NULL AND hint IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message;
	ELSIF detail IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message, HINT = hint;
	ELSIF hint IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message, DETAIL = detail;
	END IF;
	RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message, DETAIL = detail, HINT = hint;
END
$$;

-- Canonical form of a table name given in SQL identifier syntax, as regclass
-- input reads it: 'orders', 'public.orders', '"My Schema"."Orders"'.
-- Unqualified names take default_schema (the caller's current_schema()).
CREATE FUNCTION pgcdc._qualify(name text, default_schema text, arg text)
RETURNS text LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	parts text[];
BEGIN
	IF name IS NULL THEN
		RAISE EXCEPTION '% must not be null', arg USING ERRCODE = '22004';
	END IF;
	BEGIN
		parts := parse_ident(name);
	EXCEPTION WHEN invalid_parameter_value THEN
		parts := NULL;
	END;
	IF parts IS NULL OR cardinality(parts) > 2 OR '' = ANY (parts) THEN
		RAISE EXCEPTION 'invalid table name for %: %', arg, name
			USING ERRCODE = '42602',
				  HINT = 'Write the name as SQL does: orders, public.orders or "My Schema"."Orders".';
	END IF;
	IF cardinality(parts) = 1 THEN
		IF default_schema IS NULL THEN
			RAISE EXCEPTION 'no schema has been selected to hold %', name
				USING ERRCODE = '3F000';
		END IF;
		parts := ARRAY[default_schema, parts[1]];
	END IF;
	RETURN format('%I.%I', parts[1], parts[2]);
END
$$;

-- The user columns of a relation, in column order.
CREATE FUNCTION pgcdc._columns(rel regclass)
RETURNS TABLE (attname text, atttype text, typid oid, notnull boolean)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid, a.attnotnull
	  FROM pg_attribute a
	 WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
	 ORDER BY a.attnum
$$;

-- Check a text[] of column names: not null, no null or duplicate element,
-- every name a column of each relation given.  Returns the array.
CREATE FUNCTION pgcdc._check_columns(cols text[], arg text, VARIADIC rels regclass[])
RETURNS text[] LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c text;
	r regclass;
BEGIN
	IF cols IS NULL THEN
		RAISE EXCEPTION '% must not be null', arg USING ERRCODE = '22004';
	END IF;
	IF cardinality(cols) = 0 THEN
		RAISE EXCEPTION '% must not be empty', arg USING ERRCODE = '22023';
	END IF;
	IF array_position(cols, NULL) IS NOT NULL THEN
		RAISE EXCEPTION '% must not contain null', arg USING ERRCODE = '22004';
	END IF;
	IF (SELECT count(DISTINCT x) FROM unnest(cols) x) <> cardinality(cols) THEN
		RAISE EXCEPTION '% names a column twice', arg USING ERRCODE = '42701';
	END IF;
	FOREACH r IN ARRAY rels LOOP
		FOREACH c IN ARRAY cols LOOP
			IF NOT EXISTS (SELECT 1 FROM pgcdc._columns(r) WHERE attname = c) THEN
				RAISE EXCEPTION 'column "%" named in % does not exist in %', c, arg, r
					USING ERRCODE = '42703';
			END IF;
		END LOOP;
	END LOOP;
	RETURN cols;
END
$$;

-- A regclass argument: not null, and a table (not a view or sequence).
CREATE FUNCTION pgcdc._check_table(rel regclass, arg text)
RETURNS regclass LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF rel IS NULL THEN
		RAISE EXCEPTION '% must not be null', arg USING ERRCODE = '22004';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = rel AND relkind IN ('r', 'p')) THEN
		RAISE EXCEPTION '% % is not a table', arg, rel USING ERRCODE = '42809';
	END IF;
	RETURN rel;
END
$$;

-- Columns every SCD2 history table has (besides the source's columns).
CREATE FUNCTION pgcdc._scd2_system_columns()
RETURNS TABLE (attname text, atttype text) LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	VALUES ('_valid_from', 'timestamp with time zone'),
		   ('_valid_to', 'timestamp with time zone'),
		   ('_is_current', 'boolean'),
		   ('_is_deleted', 'boolean'),
		   ('_version', 'integer'),
		   ('_row_hash', 'bytea'),
		   ('_source_lsn', 'pg_lsn'),
		   ('_source_seq', 'integer'),
		   ('_sequence', 'numeric[]'),
		   ('_last_sequence', 'numeric[]')
$$;

CREATE FUNCTION pgcdc._check_scd2(target regclass)
RETURNS regclass LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	missing record;
BEGIN
	PERFORM pgcdc._check_table(target, 'target');
	SELECT s.attname, s.atttype INTO missing
	  FROM pgcdc._scd2_system_columns() s
	 WHERE NOT EXISTS (SELECT 1 FROM pgcdc._columns(target) c
						WHERE c.attname = s.attname AND c.atttype = s.atttype)
	 LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'table % is not an SCD2 history table', target
			USING ERRCODE = '42809',
				  DETAIL = format('Column %I of type %s is missing.', missing.attname, missing.atttype),
				  HINT = 'Create it with pgcdc.create_history_table.';
	END IF;
	RETURN target;
END
$$;

-- SQL text comparing l.col and r.col for equality with the type's own
-- default equality operator, schema-qualified (OPERATOR(schema.=)), so that
-- a key of a type from another schema (citext, ...) still compares right
-- while nothing is looked up on the caller's path.
CREATE FUNCTION pgcdc._eq(l text, r text, typid oid)
RETURNS text LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	opr text;
BEGIN
	SELECT format('OPERATOR(%I.%s)', n.nspname, o.oprname) INTO opr
	  FROM pg_opclass c
	  JOIN pg_am am ON am.oid = c.opcmethod AND am.amname = 'btree'
	  JOIN pg_amop ao ON ao.amopfamily = c.opcfamily AND ao.amopstrategy = 3
					 AND ao.amoplefttype = c.opcintype AND ao.amoprighttype = c.opcintype
	  JOIN pg_operator o ON o.oid = ao.amopopr
	  JOIN pg_namespace n ON n.oid = o.oprnamespace
	 WHERE c.opcdefault
	   AND (c.opcintype = typid
			OR c.opcintype = (SELECT t.typbasetype FROM pg_type t WHERE t.oid = typid))
	 LIMIT 1;
	IF opr IS NULL THEN
		RAISE EXCEPTION 'key column type % has no default btree operator class',
			format_type(typid, NULL) USING ERRCODE = '42883';
	END IF;
	RETURN format('%s %s %s', l, opr, r);
END
$$;

-- "l.k1 = r.k1 AND l.k2 = r.k2" for the key columns of rel.
CREATE FUNCTION pgcdc._key_join(l text, r text, rel regclass, keys text[])
RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT string_agg(pgcdc._eq(format('%s.%I', l, k), format('%s.%I', r, k), c.typid),
					  ' AND ' ORDER BY o)
	  FROM unnest(keys) WITH ORDINALITY AS u(k, o)
	  JOIN pgcdc._columns(rel) c ON c.attname = u.k
$$;

-- "prefix.a, prefix.b" (or "a, b" when prefix is null).
CREATE FUNCTION pgcdc._list(cols text[], prefix text DEFAULT NULL)
RETURNS text LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(string_agg(CASE WHEN prefix IS NULL THEN quote_ident(c)
									ELSE prefix || '.' || quote_ident(c) END,
							   ', ' ORDER BY o), '')
	  FROM unnest(cols) WITH ORDINALITY AS u(c, o)
$$;

-- NULL-safe, delimiter-free hash of some columns: SHA-256 of the binary
-- (send) image of ROW(columns), which holds each value's type, length and
-- bytes, and is the same whatever the session's DateStyle or TimeZone.
CREATE FUNCTION pgcdc._hash_expr(cols text[], prefix text)
RETURNS text LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT format('pg_catalog.sha256(pg_catalog.record_send(ROW(%s)::record))',
				  CASE WHEN cardinality(cols) = 0 THEN 'NULL::integer'
					   ELSE pgcdc._list(cols, prefix) END)
$$;

-- "ROW(a.x, a.y)::record OPERATOR(pg_catalog.*=) ROW(b.x, b.y)::record":
-- binary-image equality as REFRESH MATERIALIZED VIEW CONCURRENTLY uses it;
-- NULLs compare as values and no type needs an equality operator.
CREATE FUNCTION pgcdc._same_expr(cols text[], l text, r text)
RETURNS text LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN cardinality(cols) = 0 THEN 'true'
				ELSE format('ROW(%s)::record OPERATOR(pg_catalog.*=) ROW(%s)::record',
							pgcdc._list(cols, l), pgcdc._list(cols, r)) END
$$;

/* ------------------------------------------------------------------------
 * 3. Pipelines, table maps, rules
 * ------------------------------------------------------------------------ */

CREATE FUNCTION pgcdc._pipeline_must_exist(pipeline text)
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF pipeline IS NULL THEN
		RAISE EXCEPTION 'pipeline must not be null' USING ERRCODE = '22004';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pgcdc.pipeline p WHERE p.name = pipeline) THEN
		RAISE EXCEPTION 'pipeline "%" does not exist', pipeline USING ERRCODE = '42704';
	END IF;
END
$$;

CREATE FUNCTION pgcdc.create_pipeline(name text, slot_name text DEFAULT NULL,
									  options jsonb DEFAULT '{}')
RETURNS pgcdc.pipeline LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	result pgcdc.pipeline;
BEGIN
	IF name IS NULL OR name = '' THEN
		RAISE EXCEPTION 'pipeline name must not be null or empty' USING ERRCODE = '22004';
	END IF;
	IF options IS NULL OR jsonb_typeof(options) <> 'object' THEN
		RAISE EXCEPTION 'options of pipeline "%" must be a JSON object', name
			USING ERRCODE = '22023';
	END IF;
	slot_name := coalesce(slot_name,
						  left('pgcdc_' || regexp_replace(lower(name), '[^a-z0-9_]', '_', 'g'), 63));
	IF slot_name !~ '^[a-z0-9_]{1,63}$' THEN
		RAISE EXCEPTION 'invalid replication slot name "%"', slot_name
			USING ERRCODE = '42602',
				  HINT = 'Slot names use only lower-case letters, digits and underscores, at most 63 of them.';
	END IF;
	IF EXISTS (SELECT 1 FROM pgcdc.pipeline p WHERE p.name = create_pipeline.name) THEN
		RAISE EXCEPTION 'pipeline "%" already exists', name USING ERRCODE = '42710';
	END IF;
	IF EXISTS (SELECT 1 FROM pgcdc.pipeline p WHERE p.slot_name = create_pipeline.slot_name) THEN
		RAISE EXCEPTION 'replication slot "%" is already used by another pipeline', slot_name
			USING ERRCODE = '42710';
	END IF;
	INSERT INTO pgcdc.pipeline (name, slot_name, options)
	VALUES (name, slot_name, options)
	RETURNING * INTO result;
	RETURN result;
END
$$;

CREATE FUNCTION pgcdc.drop_pipeline(name text)
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM pgcdc._pipeline_must_exist(name);
	-- table maps, rules, checkpoint and batch log go with it (ON DELETE CASCADE);
	-- quarantined events stay until discarded.
	DELETE FROM pgcdc.pipeline p WHERE p.name = drop_pipeline.name;
END
$$;

CREATE FUNCTION pgcdc._set_paused(name text, paused boolean)
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM pgcdc._pipeline_must_exist(name);
	UPDATE pgcdc.pipeline p SET paused = _set_paused.paused WHERE p.name = _set_paused.name;
END
$$;

CREATE FUNCTION pgcdc.pause_pipeline(name text)
RETURNS void LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pgcdc._set_paused(name, true) $$;

CREATE FUNCTION pgcdc.resume_pipeline(name text)
RETURNS void LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pgcdc._set_paused(name, false) $$;

-- Check an optional column list argument: null is fine, else as _check_columns
-- against whichever of the relations exist locally.
CREATE FUNCTION pgcdc._check_optional_columns(cols text[], arg text, VARIADIC names text[])
RETURNS void LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n text;
	rels regclass[] := '{}';
BEGIN
	IF cols IS NULL THEN
		RETURN;
	END IF;
	FOREACH n IN ARRAY names LOOP
		IF to_regclass(n) IS NOT NULL THEN
			rels := rels || to_regclass(n);
		END IF;
	END LOOP;
	PERFORM pgcdc._check_columns(cols, arg, VARIADIC rels);
END
$$;

CREATE FUNCTION pgcdc._add_table(caller_schema text, pipeline text, source_table text,
								 target text, mode text, key_columns text[],
								 track_columns text[], ignore_columns text[],
								 soft_delete boolean)
RETURNS pgcdc.table_map LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	src text;
	tgt text;
	other pgcdc.table_map;
	result pgcdc.table_map;
BEGIN
	PERFORM pgcdc._pipeline_must_exist(pipeline);
	src := pgcdc._qualify(source_table, caller_schema, 'source_table');
	tgt := CASE WHEN target IS NULL THEN src
				ELSE pgcdc._qualify(target, caller_schema, 'target') END;
	IF mode IS NULL OR mode NOT IN ('mirror', 'scd2', 'append') THEN
		RAISE EXCEPTION 'unknown mode "%" for table map of %', mode, src
			USING ERRCODE = '22023', HINT = 'Mode is one of mirror, scd2 or append.';
	END IF;
	IF soft_delete IS NULL THEN
		RAISE EXCEPTION 'soft_delete must not be null' USING ERRCODE = '22004';
	END IF;
	IF soft_delete AND mode <> 'mirror' THEN
		RAISE EXCEPTION 'soft_delete applies to mirror mode only, not %', mode
			USING ERRCODE = '22023';
	END IF;
	IF track_columns IS NOT NULL AND mode <> 'scd2' THEN
		RAISE EXCEPTION 'track_columns applies to scd2 mode only, not %', mode
			USING ERRCODE = '22023';
	END IF;
	PERFORM pgcdc._check_optional_columns(key_columns, 'key_columns', src, tgt);
	PERFORM pgcdc._check_optional_columns(track_columns, 'track_columns', src, tgt);
	PERFORM pgcdc._check_optional_columns(ignore_columns, 'ignore_columns', src);
	IF key_columns && ignore_columns OR track_columns && ignore_columns THEN
		RAISE EXCEPTION 'ignore_columns overlaps key_columns or track_columns'
			USING ERRCODE = '22023';
	END IF;
	SELECT * INTO other FROM pgcdc.table_map m WHERE m.target = tgt;
	IF FOUND THEN
		RAISE EXCEPTION 'target % is already fed by % in pipeline "%"', tgt,
			other.source_table, other.pipeline
			USING ERRCODE = '42710',
				  HINT = 'A target has one table map; remove that one first.';
	END IF;
	INSERT INTO pgcdc.table_map (pipeline, source_table, target, mode, key_columns,
								 track_columns, ignore_columns, soft_delete,
								 source_schema, source_name)
	VALUES (pipeline, src, tgt, mode, key_columns, track_columns, ignore_columns,
			soft_delete, (parse_ident(src))[1], (parse_ident(src))[2])
	RETURNING * INTO result;
	RETURN result;
END
$$;

-- The public entry points that take table names as text run without a
-- pinned search_path only long enough to read the caller's current_schema().
CREATE FUNCTION pgcdc.add_table(pipeline text, source_table text, target text DEFAULT NULL,
								mode text DEFAULT 'mirror', key_columns text[] DEFAULT NULL,
								track_columns text[] DEFAULT NULL,
								ignore_columns text[] DEFAULT NULL,
								soft_delete boolean DEFAULT false)
RETURNS pgcdc.table_map LANGUAGE sql
AS $$
	SELECT pgcdc._add_table(pg_catalog.current_schema(), $1, $2, $3, $4, $5, $6, $7, $8)
$$;

CREATE FUNCTION pgcdc._remove_table(caller_schema text, pipeline text, source_table text,
									target text)
RETURNS integer LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	src text;
	tgt text;
	n integer;
BEGIN
	PERFORM pgcdc._pipeline_must_exist(pipeline);
	src := pgcdc._qualify(source_table, caller_schema, 'source_table');
	tgt := CASE WHEN target IS NULL THEN NULL
				ELSE pgcdc._qualify(target, caller_schema, 'target') END;
	DELETE FROM pgcdc.table_map m
	 WHERE m.pipeline = _remove_table.pipeline AND m.source_table = src
	   AND (tgt IS NULL OR m.target = tgt);
	GET DIAGNOSTICS n = ROW_COUNT;
	IF n = 0 THEN
		RAISE EXCEPTION 'pipeline "%" has no table map for %', pipeline,
			src || CASE WHEN tgt IS NULL THEN '' ELSE ' into ' || tgt END
			USING ERRCODE = '42704';
	END IF;
	RETURN n;
END
$$;

-- Removes the maps of source_table (only the one into target, if given);
-- returns how many.
CREATE FUNCTION pgcdc.remove_table(pipeline text, source_table text, target text DEFAULT NULL)
RETURNS integer LANGUAGE sql
AS $$
	SELECT pgcdc._remove_table(pg_catalog.current_schema(), $1, $2, $3)
$$;

-- Check a rule expression: one expression (C parser check, nothing runs),
-- and, for every local table it will be evaluated against, boolean and made
-- of that table's columns.  LIMIT 0: planned, never executed.
CREATE FUNCTION pgcdc._parse_rule_expr(check_expr text)
RETURNS void LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'pgcdc_parse_rule_expr';

CREATE FUNCTION pgcdc._check_rule(check_expr text, rel regclass)
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF check_expr IS NULL THEN
		RAISE EXCEPTION 'check_expr must not be null' USING ERRCODE = '22004';
	END IF;
	PERFORM pgcdc._parse_rule_expr(check_expr);
	IF rel IS NOT NULL THEN
		EXECUTE format('SELECT CASE WHEN (%s) THEN 1 END FROM %s LIMIT 0', check_expr, rel);
	END IF;
END
$$;

CREATE FUNCTION pgcdc._add_rule(caller_schema text, pipeline text, source_table text,
								name text, check_expr text)
RETURNS pgcdc.rule LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	src text;
	rel regclass;
	result pgcdc.rule;
BEGIN
	PERFORM pgcdc._pipeline_must_exist(pipeline);
	src := pgcdc._qualify(source_table, caller_schema, 'source_table');
	IF name IS NULL OR name = '' THEN
		RAISE EXCEPTION 'rule name must not be null or empty' USING ERRCODE = '22004';
	END IF;
	PERFORM pgcdc._check_rule(check_expr, NULL);
	-- type-check against the source table when it is here, and against the
	-- targets it feeds (whose columns the staged rows carry)
	FOR rel IN
		SELECT to_regclass(src)
		UNION
		SELECT to_regclass(m.target) FROM pgcdc.table_map m
		 WHERE m.pipeline = _add_rule.pipeline AND m.source_table = src
		   AND m.mode <> 'append'
	LOOP
		IF rel IS NOT NULL THEN
			PERFORM pgcdc._check_rule(check_expr, rel);
		END IF;
	END LOOP;
	IF EXISTS (SELECT 1 FROM pgcdc.rule r WHERE r.pipeline = _add_rule.pipeline
				  AND r.source_table = src AND r.name = _add_rule.name) THEN
		RAISE EXCEPTION 'rule "%" for % already exists in pipeline "%"', name, src, pipeline
			USING ERRCODE = '42710';
	END IF;
	INSERT INTO pgcdc.rule (pipeline, source_table, name, check_expr)
	VALUES (pipeline, src, name, check_expr)
	RETURNING * INTO result;
	RETURN result;
END
$$;

CREATE FUNCTION pgcdc.add_rule(pipeline text, source_table text, name text, check_expr text)
RETURNS pgcdc.rule LANGUAGE sql
AS $$
	SELECT pgcdc._add_rule(pg_catalog.current_schema(), $1, $2, $3, $4)
$$;

CREATE FUNCTION pgcdc._drop_rule(caller_schema text, pipeline text, source_table text,
								 name text)
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	src text;
BEGIN
	PERFORM pgcdc._pipeline_must_exist(pipeline);
	src := pgcdc._qualify(source_table, caller_schema, 'source_table');
	DELETE FROM pgcdc.rule r WHERE r.pipeline = _drop_rule.pipeline
	   AND r.source_table = src AND r.name = _drop_rule.name;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'rule "%" for % does not exist in pipeline "%"', name, src, pipeline
			USING ERRCODE = '42704';
	END IF;
END
$$;

CREATE FUNCTION pgcdc.drop_rule(pipeline text, source_table text, name text)
RETURNS void LANGUAGE sql
AS $$
	SELECT pgcdc._drop_rule(pg_catalog.current_schema(), $1, $2, $3)
$$;

/* ------------------------------------------------------------------------
 * 4. SCD2 history
 *
 * A history table is the source's columns plus the scd2 system columns
 * (pgcdc._scd2_system_columns).  Intervals are half-open [_valid_from,
 * _valid_to); the current version has _valid_to = 'infinity'.  _sequence is
 * the source position (sequence_by, as numeric[]) of the change that opened
 * the version and _last_sequence that of the last change applied to it
 * (including the delete that closed it): together they recognise replays
 * and late arrivals.  Versions written by scd2_merge have neither.
 * ------------------------------------------------------------------------ */

CREATE FUNCTION pgcdc._key_of(rel regclass)
RETURNS text[] LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	-- primary key, else the replica identity index
	SELECT array_agg(a.attname::text ORDER BY k.o)
	  FROM (SELECT i.indexrelid, i.indkey
			  FROM pg_index i
			 WHERE i.indrelid = rel AND (i.indisprimary OR i.indisreplident)
			 ORDER BY i.indisprimary DESC LIMIT 1) i
	 CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, o)
	  JOIN pg_attribute a ON a.attrelid = rel AND a.attnum = k.attnum
$$;

CREATE FUNCTION pgcdc._create_history_table(caller_schema text, source regclass,
											target text, key_columns text[])
RETURNS regclass LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	tgt text;
	keys text;
	clash text;
BEGIN
	PERFORM pgcdc._check_table(source, 'source');
	tgt := pgcdc._qualify(target, caller_schema, 'target');
	IF to_regclass(tgt) IS NOT NULL THEN
		RAISE EXCEPTION 'relation % already exists', tgt USING ERRCODE = '42P07';
	END IF;
	IF key_columns IS NULL THEN
		key_columns := pgcdc._key_of(source);
		IF key_columns IS NULL THEN
			RAISE EXCEPTION 'table % has no primary key or replica identity index', source
				USING ERRCODE = '22023', HINT = 'Pass key_columns.';
		END IF;
	END IF;
	PERFORM pgcdc._check_columns(key_columns, 'key_columns', source);
	SELECT c.attname INTO clash
	  FROM pgcdc._columns(source) c JOIN pgcdc._scd2_system_columns() s USING (attname)
	 LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'column "%" of % has the name of an SCD2 system column', clash, source
			USING ERRCODE = '42701';
	END IF;
	keys := pgcdc._list(key_columns);

	-- LIKE copies columns, types, collations and NOT NULL; not the key
	-- (history has many rows per key), defaults, identity or generation.
	EXECUTE format('CREATE TABLE %s (LIKE %s)', tgt, source);
	EXECUTE format($f$
		ALTER TABLE %s
			ADD COLUMN _valid_from timestamptz NOT NULL,
			ADD COLUMN _valid_to timestamptz NOT NULL DEFAULT 'infinity',
			ADD COLUMN _is_current boolean NOT NULL DEFAULT true,
			ADD COLUMN _is_deleted boolean NOT NULL DEFAULT false,
			ADD COLUMN _version integer NOT NULL DEFAULT 1,
			ADD COLUMN _row_hash bytea,
			ADD COLUMN _source_lsn pg_lsn,
			ADD COLUMN _source_seq integer,
			ADD COLUMN _sequence numeric[],
			ADD COLUMN _last_sequence numeric[],
			ADD CONSTRAINT %I CHECK (_valid_from < _valid_to),
			ADD CONSTRAINT %I CHECK (_is_current = (_valid_to = 'infinity'))$f$,
		tgt, left((parse_ident(tgt))[2], 50) || '_interval',
		left((parse_ident(tgt))[2], 50) || '_current');
	-- one current row per key, whatever runs concurrently
	EXECUTE format('CREATE UNIQUE INDEX ON %s (%s) WHERE _is_current', tgt, keys);
	EXECUTE format('CREATE UNIQUE INDEX ON %s (%s, _valid_from)', tgt, keys);
	-- current "deleted" records (hard_deletes => new_record) are few; find them fast
	EXECUTE format('CREATE INDEX ON %s (%s) WHERE _is_current AND _is_deleted', tgt, keys);
	RETURN tgt::regclass;
END
$$;

CREATE FUNCTION pgcdc.create_history_table(source regclass, target text,
										   key_columns text[] DEFAULT NULL)
RETURNS regclass LANGUAGE sql
AS $$
	SELECT pgcdc._create_history_table(pg_catalog.current_schema(), $1, $2, $3)
$$;

-- Does rel have a unique, non-partial index on a subset of cols, all NOT NULL?
-- Then cols identify rows and need no duplicate check.
CREATE FUNCTION pgcdc._unique_key(rel regclass, cols text[])
RETURNS boolean LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT NOT EXISTS (SELECT 1 FROM pgcdc._columns(rel) c
						WHERE c.attname = ANY (cols) AND NOT c.notnull)
	   AND EXISTS (SELECT 1 FROM pg_index i
					WHERE i.indrelid = rel AND i.indisunique AND i.indisvalid
					  AND i.indpred IS NULL AND i.indexprs IS NULL
					  AND (SELECT bool_and(a.attname::text = ANY (cols))
							 FROM unnest(i.indkey::int2[]) k(attnum)
							 JOIN pg_attribute a ON a.attrelid = rel AND a.attnum = k.attnum))
$$;

-- Error unless every row of rel (as sql, a FROM item aliased s) has a
-- distinct, non-null key.
CREATE FUNCTION pgcdc._check_unique_key(rel regclass, cols text[], what text)
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	bad record;
BEGIN
	IF pgcdc._unique_key(rel, cols) THEN
		RETURN;
	END IF;
	EXECUTE format('SELECT ROW(%s)::text AS k, count(*) AS n FROM %s s GROUP BY %s '
				   'HAVING count(*) > 1 OR bool_or(%s) LIMIT 1',
				   pgcdc._list(cols, 's'), rel, pgcdc._list(cols, 's'),
				   (SELECT string_agg(format('s.%I IS NULL', c), ' OR ') FROM unnest(cols) c))
	INTO bad;
	IF bad.n > 1 THEN
		RAISE EXCEPTION 'key % is not unique in % %', bad.k, what, rel
			USING ERRCODE = '23505', DETAIL = format('%s rows have this key.', bad.n);
	ELSIF bad.n IS NOT NULL THEN
		RAISE EXCEPTION 'key % in % % contains null', bad.k, what, rel
			USING ERRCODE = '23502';
	END IF;
END
$$;

-- Target's user columns (not system columns) that rel also has, in target order.
CREATE FUNCTION pgcdc._shared_columns(target regclass, rel regclass)
RETURNS text[] LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(array_agg(t.attname ORDER BY t.ord), '{}')
	  FROM (SELECT c.attname, row_number() OVER () AS ord FROM pgcdc._columns(target) c) t
	 WHERE t.attname NOT IN (SELECT attname FROM pgcdc._scd2_system_columns())
	   AND t.attname NOT IN ('_synced_at')
	   AND EXISTS (SELECT 1 FROM pgcdc._columns(rel) r WHERE r.attname = t.attname)
$$;

-- "s.a AS a, s.b::integer AS b": rel's columns as the target's types.
CREATE FUNCTION pgcdc._cast_list(target regclass, rel regclass, cols text[], prefix text)
RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(string_agg(
		CASE WHEN t.typid = r.typid THEN format('%s.%I AS %I', prefix, u.c, u.c)
			 ELSE format('%s.%I::%s AS %I', prefix, u.c, t.atttype, u.c) END,
		', ' ORDER BY u.o), '')
	  FROM unnest(cols) WITH ORDINALITY AS u(c, o)
	  JOIN pgcdc._columns(target) t ON t.attname = u.c
	  JOIN pgcdc._columns(rel) r ON r.attname = u.c
$$;

-- track_columns, checked, or by default every shared column but the key.
CREATE FUNCTION pgcdc._tracked(target regclass, rel regclass, key_columns text[],
							   track_columns text[], data_cols text[])
RETURNS text[] LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF track_columns IS NULL THEN
		RETURN ARRAY(SELECT c FROM unnest(data_cols) c WHERE c <> ALL (key_columns));
	END IF;
	PERFORM pgcdc._check_columns(track_columns, 'track_columns', target, rel);
	IF track_columns && ARRAY(SELECT attname FROM pgcdc._scd2_system_columns()) THEN
		RAISE EXCEPTION 'track_columns must not name SCD2 system columns' USING ERRCODE = '22023';
	END IF;
	RETURN track_columns;
END
$$;

CREATE FUNCTION pgcdc.scd2_merge(target regclass, snapshot regclass, key_columns text[],
								 track_columns text[] DEFAULT NULL,
								 valid_at timestamptz DEFAULT now(),
								 hard_deletes text DEFAULT 'invalidate')
RETURNS TABLE (inserted bigint, updated bigint, deleted bigint, unchanged bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	data_cols text[];
	tracked text[];
	snap text;
	close_to text;
	changed text;
	sql text;
BEGIN
	PERFORM pgcdc._check_scd2(target);
	PERFORM pgcdc._check_table(snapshot, 'snapshot');
	PERFORM pgcdc._check_columns(key_columns, 'key_columns', target, snapshot);
	IF valid_at IS NULL OR NOT isfinite(valid_at) THEN
		RAISE EXCEPTION 'valid_at must be a finite time, not %', coalesce(valid_at::text, 'null')
			USING ERRCODE = '22023';
	END IF;
	IF hard_deletes IS NULL OR hard_deletes NOT IN ('ignore', 'invalidate', 'new_record') THEN
		RAISE EXCEPTION 'unknown hard_deletes "%"', hard_deletes
			USING ERRCODE = '22023', HINT = 'Use ignore, invalidate or new_record.';
	END IF;
	data_cols := pgcdc._shared_columns(target, snapshot);
	tracked := pgcdc._tracked(target, snapshot, key_columns, track_columns, data_cols);

	-- Serialise writers of this target (readers are not blocked); every
	-- statement below runs after the lock, so it sees the other's commit.
	EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', target);
	PERFORM pgcdc._check_unique_key(snapshot, key_columns, 'snapshot');

	snap := format('(SELECT %s FROM %s s)', pgcdc._cast_list(target, snapshot, data_cols, 's'),
				   snapshot);
	-- A version must not end where (or before) it starts.
	close_to := format($f$CASE WHEN t._valid_from < $1 THEN $1 ELSE pgcdc._fail('22023',
		pg_catalog.format('valid_at %%s is not later than the current version of key %%s in %%s',
						  $1, ROW(%s)::text, %L),
		NULL, 'Versions never have zero or negative length; pass a later valid_at.') END$f$,
		pgcdc._list(key_columns, 't'), target::text);
	changed := CASE hard_deletes
		WHEN 'ignore' THEN format('EXISTS (SELECT 1 FROM %s s WHERE %s AND NOT (%s))', snap,
								  pgcdc._key_join('s', 't', target, key_columns),
								  pgcdc._same_expr(tracked, 's', 't'))
		ELSE format('NOT EXISTS (SELECT 1 FROM %s s WHERE %s AND %s)', snap,
					pgcdc._key_join('s', 't', target, key_columns),
					pgcdc._same_expr(tracked, 's', 't')) END;

	sql := format($f$
WITH closed_live AS (
	-- current versions that changed (or, unless ignore, vanished)
	UPDATE %1$s t SET _valid_to = %4$s, _is_current = false
	 WHERE t._is_current AND NOT t._is_deleted AND %5$s
	RETURNING t.*
), closed_dead AS (
	-- "deleted" records (new_record) whose key is back
	UPDATE %1$s t SET _valid_to = %4$s, _is_current = false
	 WHERE t._is_current AND t._is_deleted
	   AND EXISTS (SELECT 1 FROM %2$s s WHERE %6$s)
	RETURNING t.*
), closed AS (
	SELECT * FROM closed_live UNION ALL SELECT * FROM closed_dead
), todo AS (
	SELECT s.*, c._version AS c_version, c._is_deleted AS c_deleted,
		   cur._valid_from IS NULL AS is_new
	  FROM %2$s s
	  LEFT JOIN %1$s cur ON %7$s AND cur._is_current
	  LEFT JOIN closed c ON %8$s
	 WHERE cur._valid_from IS NULL OR c._valid_from IS NOT NULL
), ins AS (
	INSERT INTO %1$s (%9$s, _valid_from, _valid_to, _is_current, _is_deleted, _version, _row_hash)
	SELECT %10$s, $1, 'infinity', true, false,
		   coalesce(s.c_version, (SELECT max(h._version) FROM %1$s h WHERE %11$s), 0) + 1,
		   %12$s
	  FROM todo s
), gone AS (
	SELECT c.* FROM closed c
	 WHERE NOT c._is_deleted AND NOT EXISTS (SELECT 1 FROM todo s WHERE %8$s)
), dead AS (
	INSERT INTO %1$s (%9$s, _valid_from, _valid_to, _is_current, _is_deleted, _version, _row_hash)
	SELECT %13$s, $1, 'infinity', true, true, c._version + 1, c._row_hash
	  FROM gone c WHERE $2
)
SELECT (SELECT count(*) FROM todo WHERE is_new OR c_deleted),
	   (SELECT count(*) FROM todo WHERE NOT is_new AND NOT c_deleted),
	   (SELECT count(*) FROM gone),
	   (SELECT count(*) FROM %3$s)
	   - (SELECT count(*) FROM todo)$f$,
		target, snap, snapshot, close_to,
		changed,
		pgcdc._key_join('s', 't', target, key_columns),
		pgcdc._key_join('cur', 's', target, key_columns),
		pgcdc._key_join('c', 's', target, key_columns),
		pgcdc._list(data_cols), pgcdc._list(data_cols, 's'),
		pgcdc._key_join('h', 's', target, key_columns),
		pgcdc._hash_expr(tracked, 's'),
		pgcdc._list(data_cols, 'c'));
	EXECUTE sql INTO inserted, updated, deleted, unchanged USING valid_at, hard_deletes = 'new_record';
	RETURN NEXT;
END
$$;
