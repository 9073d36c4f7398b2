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

-- A regclass argument: not null, and a table; or, for a relation that is only read (inputs: a
-- snapshot, a change table), a view, materialized view or foreign table too.
CREATE FUNCTION pgcdc._check_table(rel regclass, arg text, inputs boolean DEFAULT false)
RETURNS regclass LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF rel IS NULL THEN
		RAISE EXCEPTION '% must not be null', arg USING ERRCODE = '22004';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = rel AND relkind = ANY (
				   CASE WHEN inputs THEN '{r,p,v,m,f}'::"char"[] ELSE '{r,p}'::"char"[] END)) THEN
		RAISE EXCEPTION '% % is not a table%', arg, rel, CASE WHEN inputs THEN ' or view' ELSE '' END
			USING ERRCODE = '42809';
	END IF;
	RETURN rel;
END
$$;

-- Internal column names in the generated SQL start with pgcdc_; user
-- columns must not, or they would be shadowed.
CREATE FUNCTION pgcdc._check_reserved(cols text[])
RETURNS text[] LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	bad text;
BEGIN
	SELECT c INTO bad FROM unnest(cols) c WHERE c LIKE 'pgcdc\_%' LIMIT 1;
	IF bad IS NOT NULL THEN
		RAISE EXCEPTION 'column name "%" is reserved: names starting with pgcdc_ are pgcdc''s', bad
			USING ERRCODE = '42939';
	END IF;
	RETURN cols;
END
$$;

-- Columns every SCD2 history table has (besides the source's columns).
-- The position columns (not in the spec's list) are how scd2_apply_changes
-- recognises replays and late arrivals; scd2_merge does without them.
CREATE FUNCTION pgcdc._scd2_system_columns()
RETURNS TABLE (attname text, atttype text, is_position boolean) LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	VALUES ('_valid_from', 'timestamp with time zone', false),
		   ('_valid_to', 'timestamp with time zone', false),
		   ('_is_current', 'boolean', false),
		   ('_is_deleted', 'boolean', false),
		   ('_version', 'integer', false),
		   ('_row_hash', 'bytea', false),
		   ('_source_lsn', 'pg_lsn', false),
		   ('_source_seq', 'integer', false),
		   ('_sequence', 'numeric[]', true),
		   ('_last_sequence', 'numeric[]', true),
		   ('_last_at', 'timestamp with time zone', true)
$$;

-- A target with the spec's system columns is an SCD2 table; with positions,
-- the position columns it lacks are added (as the consumer adds system
-- columns to an existing target).
CREATE FUNCTION pgcdc._check_scd2(target regclass, positions boolean DEFAULT false)
RETURNS regclass LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	missing record;
	added text;
BEGIN
	PERFORM pgcdc._check_table(target, 'target');
	SELECT s.attname, s.atttype INTO missing
	  FROM pgcdc._scd2_system_columns() s
	 WHERE NOT EXISTS (SELECT 1 FROM pgcdc._columns(target) c
						WHERE c.attname = s.attname AND c.atttype = s.atttype)
	   AND NOT s.is_position
	 LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'table % is not an SCD2 history table', target
			USING ERRCODE = '42809',
				  DETAIL = format('Column %I of type %s is missing.', missing.attname, missing.atttype),
				  HINT = 'Create it with pgcdc.create_history_table.';
	END IF;
	IF positions THEN
		SELECT string_agg(format('ADD COLUMN %I %s', s.attname, s.atttype), ', ') INTO added
		  FROM pgcdc._scd2_system_columns() s
		 WHERE s.is_position AND NOT EXISTS (SELECT 1 FROM pgcdc._columns(target) c
										   WHERE c.attname = s.attname);
		IF added IS NOT NULL THEN
			EXECUTE format('ALTER TABLE %s %s', target, added);
			RAISE NOTICE 'added the position columns scd2_apply_changes needs to table %', target;
		END IF;
		-- a column of that name but another type is not ours
		PERFORM pgcdc._check_scd2_types(target);
	END IF;
	RETURN target;
END
$$;

CREATE FUNCTION pgcdc._check_scd2_types(target regclass)
RETURNS void LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	wrong record;
BEGIN
	SELECT s.attname, s.atttype INTO wrong
	  FROM pgcdc._scd2_system_columns() s JOIN pgcdc._columns(target) c USING (attname)
	 WHERE c.atttype <> s.atttype
	 LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'table % is not an SCD2 history table', target
			USING ERRCODE = '42809',
				  DETAIL = format('Column %I is not of type %s.', wrong.attname, wrong.atttype);
	END IF;
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

-- rel's schema-qualified name, also for a temporary table (whose regclass
-- text is unqualified and could be taken for a CTE of the same name).
CREATE FUNCTION pgcdc._qname(rel regclass)
RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT format('%I.%I', n.nspname, c.relname)
	  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	 WHERE c.oid = rel
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

-- Work tables live in pg_temp and are dropped at commit; a second call in
-- the same transaction drops the previous call's first.
CREATE FUNCTION pgcdc._drop_temp(VARIADIC names text[])
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n text;
BEGIN
	FOREACH n IN ARRAY names LOOP
		IF to_regclass('pg_temp.' || quote_ident(n)) IS NOT NULL THEN
			EXECUTE format('DROP TABLE pg_temp.%I', n);
		END IF;
	END LOOP;
END
$$;

-- The name of a session prepared statement for query, prepared on first use:
-- generated SQL is planned once per session and shape (the name is the
-- text's md5) and re-planned by PostgreSQL only when a table it reads
-- changes.  A statement of that name with other text (prepared by someone
-- else in this session) is replaced, never run.
CREATE FUNCTION pgcdc._prepared(query text, types text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	-- the parameter types (if any) are part of the name, after the text
	stmt text := 'pgcdc_' || md5(query || coalesce(E'\n' || types, ''));
	want text := format('PREPARE %I%s AS %s', stmt,
						CASE WHEN types IS NOT NULL THEN '(' || types || ')' ELSE '' END, query);
	have text;
BEGIN
	SELECT p.statement INTO have FROM pg_prepared_statements p WHERE p.name = stmt;
	IF have IS DISTINCT FROM want THEN
		IF have IS NOT NULL THEN
			EXECUTE format('DEALLOCATE %I', stmt);
		END IF;
		EXECUTE want;
	END IF;
	RETURN stmt;
END
$$;

-- The name of a session setting that holds the statements a function
-- prepared for a call of this shape: everything their text depends on (the
-- arguments, the names and columns of both relations, the source of the
-- functions in code that write them), hashed.  A later call of the same
-- shape runs them without checking and generating them again.
CREATE FUNCTION pgcdc._shape(code text[], target regclass, changes regclass, VARIADIC args text[])
RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT 'pgcdc.shape_' || md5(concat_ws(E'\n',
		(SELECT string_agg(quote_nullable(a), ',' ORDER BY o) FROM unnest(args) WITH ORDINALITY u(a, o)),
		(SELECT string_agg(concat_ws(' ', quote_ident(n.nspname), quote_ident(c.relname), c.relkind,
									 a.attnum, quote_ident(a.attname), a.atttypid, a.atttypmod),
						   ',' ORDER BY c.oid = target DESC, a.attnum)
		   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
		  WHERE c.oid IN (target, changes)),
		(SELECT string_agg(md5(p.prosrc), ',' ORDER BY p.proname)
		   FROM pg_proc p
		  WHERE p.pronamespace = 'pgcdc'::regnamespace AND p.proname = ANY (code))))
$$;

-- The statements cached under shape, if all n are still prepared (DEALLOCATE
-- ALL or an aborted transaction loses them) and each is one _prepared made:
-- its name is the md5 of its text.
CREATE FUNCTION pgcdc._cached(shape text, n integer)
RETURNS text[] LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	stmts text[] := string_to_array(current_setting(shape, true), ' ');
BEGIN
	IF cardinality(stmts) = n AND
	   (SELECT count(*) FROM pg_prepared_statements p
		 WHERE p.name = ANY (stmts)
		   AND p.name = 'pgcdc_' || md5(substr(p.statement,
											   length(format('PREPARE %I AS ', p.name)) + 1))) = n THEN
		RETURN stmts;
	END IF;
	RETURN NULL;
END
$$;

-- The query that says whether a batch of change rows is plain: ops I, U and
-- D only, none of the columns not_null null, no unchanged TOAST, no key
-- change.  One pass over the routing columns only (a view over staged
-- events does not build its rows for it).  A batch that is not plain takes
-- the staged path, which also says what is wrong with a bad one.
CREATE FUNCTION pgcdc._plain_sql(changes regclass, op_column text, not_null text[])
RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT format($f$
		SELECT pg_catalog.count(*) FILTER (WHERE c.%1$I IS NULL OR c.%1$I NOT IN ('I', 'U', 'D')
			OR %2$s OR %3$s OR %4$s) = 0
		  FROM %5$s c$f$,
		op_column,
		coalesce((SELECT string_agg(format('c.%I IS NULL', x), ' OR ') FROM unnest(not_null) x), 'false'),
		CASE WHEN pgcdc._has_column(changes, 'unchanged_toast', 'text[]')
			 THEN 'c.unchanged_toast IS NOT NULL' ELSE 'false' END,
		CASE WHEN pgcdc._has_column(changes, '_old_key', 'jsonb')
			 THEN format('(c.%I = ''U'' AND c._old_key IS NOT NULL)', op_column)
			 ELSE 'false' END,
		pgcdc._qname(changes))
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

-- A rule expression as an operand; the newline ends a trailing -- comment.
CREATE FUNCTION pgcdc._paren(check_expr text)
RETURNS text LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT '(' || check_expr || E'\n)' $$;

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
		EXECUTE format('SELECT CASE WHEN %s THEN 1 END FROM %s LIMIT 0',
					   pgcdc._paren(check_expr), rel);
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
 * (a change of untracked columns only, or the delete that closed it), and
 * _last_at that change's time: together they recognise replays and late
 * arrivals.  Versions written by scd2_merge have none of them.
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
			ADD COLUMN _last_at timestamptz,
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
		RAISE EXCEPTION 'null key in % %', what, rel
			USING ERRCODE = '23502',
				  DETAIL = format('Key columns: %s.', array_to_string(cols, ', '));
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
-- The statements are big plans of cheap expressions over hash joins: JIT
-- compiling them (about 0.6 s for a 1M-row merge) costs more than it saves.
SET jit = off
AS $$
DECLARE
	data_cols text[];
	tracked text[];
	untracked text[];
	k1 text;
	sql text;
BEGIN
	PERFORM pgcdc._check_scd2(target);
	PERFORM pgcdc._check_table(snapshot, 'snapshot', inputs => true);
	PERFORM pgcdc._check_columns(key_columns, 'key_columns', target, snapshot);
	IF valid_at IS NULL OR NOT isfinite(valid_at) THEN
		RAISE EXCEPTION 'valid_at must be a finite time, not %', coalesce(valid_at::text, 'null')
			USING ERRCODE = '22023';
	END IF;
	IF hard_deletes IS NULL OR hard_deletes NOT IN ('ignore', 'invalidate', 'new_record') THEN
		RAISE EXCEPTION 'unknown hard_deletes "%"', hard_deletes
			USING ERRCODE = '22023', HINT = 'Use ignore, invalidate or new_record.';
	END IF;
	data_cols := pgcdc._check_reserved(pgcdc._shared_columns(target, snapshot));
	tracked := pgcdc._tracked(target, snapshot, key_columns, track_columns, data_cols);
	untracked := ARRAY(SELECT c FROM unnest(data_cols) c
						WHERE c <> ALL (key_columns) AND c <> ALL (tracked));
	k1 := quote_ident(key_columns[1]);

	-- Serialise writers of this target (readers are not blocked); every
	-- statement below runs after the lock, so it sees the other's commit,
	-- and the row positions (ctid) read by the diff stay valid.
	EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', target);
	-- keys are then unique and not null: a missing side of the join is null
	PERFORM pgcdc._check_unique_key(snapshot, key_columns, 'snapshot');

	/*
	 * One full join of the current versions with the snapshot finds every
	 * key to act on (pgcdc_kind): new, changed, back (after a new_record
	 * delete), gone, touched (untracked columns only); the rest of the
	 * statement works on that small set by row position.
	 */
	sql := format($f$
WITH diff AS MATERIALIZED (
	SELECT s.*, t.pgcdc_tid, t._version AS pgcdc_version,
		   CASE WHEN t.pgcdc_tid IS NULL THEN 'new'
				WHEN s.%4$s IS NULL THEN 'gone'
				WHEN t._is_deleted THEN 'back'
				WHEN NOT (%5$s) THEN 'changed'
				ELSE 'touched' END AS pgcdc_kind
	  FROM (SELECT c.ctid AS pgcdc_tid, c.* FROM %1$s c WHERE c._is_current) t
	  FULL JOIN (SELECT %2$s FROM %3$s s) s ON %6$s
	 WHERE t.pgcdc_tid IS NULL
		OR (s.%4$s IS NULL AND NOT t._is_deleted AND $2 <> 'ignore')
		OR (s.%4$s IS NOT NULL AND (t._is_deleted OR NOT (%5$s) OR NOT (%7$s)))
), closed AS (
	-- a version must not end where (or before) it starts
	UPDATE %1$s t
	   SET _valid_to = CASE WHEN t._valid_from < $1 THEN $1 ELSE pgcdc._fail('22023',
			   pg_catalog.format('valid_at %%s is not later than the current version of key %%s in %%s',
								 $1, ROW(%8$s)::text, %9$L),
			   NULL, 'Versions never have zero or negative length; pass a later valid_at.') END,
		   _is_current = false
	 -- by row position: a TID scan, not a join with the whole target
	 WHERE t.ctid = ANY (ARRAY(SELECT d.pgcdc_tid FROM diff d
								WHERE d.pgcdc_kind IN ('gone', 'back', 'changed')))
	RETURNING 1
), touched AS (
	-- no tracked change: untracked columns update the current version
	UPDATE %1$s t SET %10$s
	  FROM diff d
	 WHERE t.ctid = d.pgcdc_tid AND d.pgcdc_kind = 'touched'
), ins AS (
	INSERT INTO %1$s (%11$s, _valid_from, _valid_to, _is_current, _is_deleted, _version, _row_hash)
	SELECT %12$s, $1, 'infinity', true, false,
		   coalesce(d.pgcdc_version, (SELECT max(h._version) FROM %1$s h WHERE %13$s), 0) + 1,
		   %14$s
	  FROM diff d
	 -- after closed: the unique index on current rows checks as rows go in
	 WHERE d.pgcdc_kind IN ('new', 'back', 'changed') AND (SELECT count(*) FROM closed) >= 0
), dead AS (
	INSERT INTO %1$s (%11$s, _valid_from, _valid_to, _is_current, _is_deleted, _version, _row_hash)
	SELECT %15$s, $1, 'infinity', true, true, h._version + 1, h._row_hash
	  FROM diff d JOIN %1$s h ON h.ctid = d.pgcdc_tid
	 WHERE $2 = 'new_record' AND d.pgcdc_kind = 'gone' AND (SELECT count(*) FROM closed) >= 0
)
SELECT count(*) FILTER (WHERE pgcdc_kind IN ('new', 'back')),
	   count(*) FILTER (WHERE pgcdc_kind = 'changed'),
	   count(*) FILTER (WHERE pgcdc_kind = 'gone'),
	   (SELECT count(*) FROM %3$s)
	   - count(*) FILTER (WHERE pgcdc_kind IN ('new', 'back', 'changed'))
  FROM diff$f$,
		target,
		pgcdc._cast_list(target, snapshot, data_cols, 's'),
		snapshot,
		k1,
		pgcdc._same_expr(tracked, 's', 't'),
		pgcdc._key_join('t', 's', target, key_columns),
		pgcdc._same_expr(untracked, 's', 't'),
		pgcdc._list(key_columns, 't'), target::text,
		coalesce((SELECT string_agg(format('%I = d.%I', c, c), ', ') FROM unnest(untracked) c),
				 '_is_current = t._is_current'),
		pgcdc._list(data_cols), pgcdc._list(data_cols, 'd'),
		pgcdc._key_join('h', 'd', target, key_columns),
		pgcdc._hash_expr(tracked, 'd'),
		pgcdc._list(data_cols, 'h'));
	IF cardinality(untracked) = 0 THEN
		sql := regexp_replace(sql, '\), touched AS \(.*?\), ins AS \(', '), ins AS (');
	END IF;
	-- prepared, as the apply functions' statements are (planned with the
	-- values of the first calls, then reused while they fit)
	-- (EXECUTE takes its arguments as SQL: valid_at goes as UTC wall time,
	-- which this session's DateStyle writes and reads back exactly)
	EXECUTE format('EXECUTE %I((%L::pg_catalog.timestamp AT TIME ZONE ''UTC''), %L)',
				   pgcdc._prepared(sql, 'timestamptz, text'),
				   valid_at AT TIME ZONE 'UTC', hard_deletes)
	INTO inserted, updated, deleted, unchanged;
	RETURN NEXT;
END
$$;

/*
 * Staging.  Both scd2_apply_changes and apply_mirror first copy the change
 * rows into one temporary table, pg_temp._pgcdc_stage: the data columns the
 * target shares with the changes table (cast to the target's types), and
 *   pgcdc_op	 I, U, D or T
 *   pgcdc_seq	 the source position as numeric[] (sequence_by, converted)
 *   pgcdc_vf	 the effective time (valid_from_column, else now())
 *   pgcdc_ut	 unchanged TOAST columns not yet resolved (see below)
 *   pgcdc_lsn, pgcdc_lseq	_source_lsn and _source_seq when the changes have them
 *   pgcdc_rn	 row number in source order
 * A U whose optional _old_key jsonb holds a different key becomes a D of the
 * old key followed by the U of the new one.  A column listed in the optional
 * unchanged_toast text[] column takes the value of the same key's latest
 * earlier change in the batch; what is left in pgcdc_ut is resolved against
 * the target by the caller.
 */

-- The SQL expression that turns changes column col into a numeric, so that
-- one or several sequence_by columns order as a numeric[].
CREATE FUNCTION pgcdc._seq_expr(changes regclass, col text)
RETURNS text LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	typ oid;
BEGIN
	SELECT c.typid INTO typ FROM pgcdc._columns(changes) c WHERE c.attname = col;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'sequence_by column "%" does not exist in %', col, changes
			USING ERRCODE = '42703';
	END IF;
	RETURN CASE
		WHEN typ IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'numeric'::regtype)
			THEN format('c.%I::numeric', col)
		WHEN typ = 'pg_lsn'::regtype
			THEN format('(c.%I OPERATOR(pg_catalog.-) ''0/0''::pg_lsn)', col)
		WHEN typ IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype)
			THEN format('pg_catalog.date_part(''epoch'', c.%I)::numeric', col)
		ELSE pgcdc._fail('42804',
			format('sequence_by column "%s" of %s has type %s, which cannot order changes',
				   col, changes, format_type(typ, NULL)),
			NULL, 'Use integer, numeric, pg_lsn or timestamp columns.')::text
	END;
END
$$;

CREATE FUNCTION pgcdc._has_column(rel regclass, col text, typ regtype)
RETURNS boolean LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT EXISTS (SELECT 1 FROM pgcdc._columns(rel) c WHERE c.attname = col AND c.typid = typ)
$$;

-- Check the arguments that describe change rows and return their SQL:
-- seq, the source position as numeric[]; vf, the effective time; seq_cols,
-- the sequence_by columns; data_cols, the columns shared with target.
CREATE FUNCTION pgcdc._stage_args(target regclass, changes regclass, key_columns text[],
								  sequence_by text, op_column text, valid_from_column text,
								  OUT seq text, OUT vf text, OUT seq_cols text[],
								  OUT data_cols text[])
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	vf_type oid;
BEGIN
	PERFORM pgcdc._check_table(changes, 'changes', inputs => true);
	PERFORM pgcdc._check_columns(key_columns, 'key_columns', target, changes);
	IF op_column IS NULL THEN
		RAISE EXCEPTION 'op_column must not be null' USING ERRCODE = '22004';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pgcdc._columns(changes) c WHERE c.attname = op_column) THEN
		RAISE EXCEPTION 'op column "%" does not exist in %', op_column, changes
			USING ERRCODE = '42703';
	END IF;
	IF sequence_by IS NULL THEN
		RAISE EXCEPTION 'sequence_by must not be null' USING ERRCODE = '22004';
	END IF;
	-- one column named as it is, else a comma-separated list of them
	seq_cols := CASE WHEN EXISTS (SELECT 1 FROM pgcdc._columns(changes) c
								   WHERE c.attname = sequence_by)
					 THEN ARRAY[sequence_by]
					 ELSE ARRAY(SELECT btrim(x) FROM unnest(string_to_array(sequence_by, ',')) x) END;
	seq := format('ARRAY[%s]::numeric[]',
				  (SELECT string_agg(pgcdc._seq_expr(changes, x), ', ') FROM unnest(seq_cols) x));
	IF valid_from_column IS NULL THEN
		vf := 'pg_catalog.now()';
	ELSE
		SELECT c.typid INTO vf_type FROM pgcdc._columns(changes) c
		 WHERE c.attname = valid_from_column;
		IF NOT FOUND THEN
			RAISE EXCEPTION 'valid_from column "%" does not exist in %', valid_from_column, changes
				USING ERRCODE = '42703';
		ELSIF vf_type NOT IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype) THEN
			RAISE EXCEPTION 'valid_from column "%" of % must be a timestamp, not %',
				valid_from_column, changes, format_type(vf_type, NULL) USING ERRCODE = '42804';
		END IF;
		vf := format('c.%I::timestamptz', valid_from_column);
	END IF;
	data_cols := pgcdc._check_reserved(pgcdc._shared_columns(target, changes));
END
$$;

CREATE FUNCTION pgcdc._stage(target regclass, changes regclass, key_columns text[],
							 sequence_by text, op_column text, valid_from_column text,
							 OUT data_cols text[], OUT toast_cols text[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	args record;
	seq text;
	vf text;
	old_keys text;
	cols text;
	keys text;
	bad record;
	col text;
BEGIN
	args := pgcdc._stage_args(target, changes, key_columns, sequence_by, op_column,
							  valid_from_column);
	seq := args.seq;
	vf := args.vf;
	data_cols := args.data_cols;
	cols := pgcdc._cast_list(target, changes, data_cols, 'c');
	keys := pgcdc._list(key_columns);

	PERFORM pgcdc._drop_temp('_pgcdc_stage');
	IF pgcdc._has_column(changes, '_old_key', 'jsonb') THEN
		-- the old key's columns, typed as the target's, for key-changing updates
		old_keys := format($f$
			SELECT %s, %s FROM %s c,
				   LATERAL pg_catalog.jsonb_populate_record(NULL::%s, c._old_key) AS k
			 WHERE c.%I = 'U' AND c._old_key IS NOT NULL
			   AND ROW(%s)::record OPERATOR(pg_catalog.*<>) ROW(%s)::record$f$,
			(SELECT string_agg(CASE WHEN d = ANY (key_columns) THEN format('k.%I', d)
									ELSE format('NULL::%s', t.atttype) END || format(' AS %I', d),
							   ', ' ORDER BY o)
			   FROM unnest(data_cols) WITH ORDINALITY u(d, o)
			   JOIN pgcdc._columns(target) t ON t.attname = d),
			'pgcdc_extra_columns', changes, target, op_column,
			pgcdc._list(key_columns, 'k'),
			(SELECT string_agg(format('(c.%I)::%s', k, t.atttype), ', ' ORDER BY o)
			   FROM unnest(key_columns) WITH ORDINALITY u(k, o)
			   JOIN pgcdc._columns(target) t ON t.attname = k));
	END IF;

	EXECUTE format($f$
		CREATE TEMP TABLE _pgcdc_stage ON COMMIT DROP AS
		SELECT x.*, row_number() OVER (ORDER BY x.pgcdc_seq, x.pgcdc_sub) AS pgcdc_rn
		  FROM (SELECT %1$s, c.%2$I::text AS pgcdc_op, %3$s AS pgcdc_seq,
					   %4$s AS pgcdc_vf, %5$s AS pgcdc_ut, %6$s AS pgcdc_lsn,
					   %7$s AS pgcdc_lseq, 1 AS pgcdc_sub
				  FROM %8$s c
				%9$s) x$f$,
		cols, op_column, seq, vf,
		CASE WHEN pgcdc._has_column(changes, 'unchanged_toast', 'text[]')
			 THEN 'c.unchanged_toast' ELSE 'NULL::text[]' END,
		CASE WHEN pgcdc._has_column(changes, '_source_lsn', 'pg_lsn')
			 THEN 'c._source_lsn' ELSE 'NULL::pg_lsn' END,
		CASE WHEN pgcdc._has_column(changes, '_source_seq', 'int4')
			 THEN 'c._source_seq' ELSE 'NULL::integer' END,
		changes,
		CASE WHEN old_keys IS NULL THEN ''
			 ELSE 'UNION ALL ' || replace(old_keys, 'pgcdc_extra_columns', format(
				'''D'', %s, %s, NULL::text[], %s, %s, 0',
				seq, vf,
				CASE WHEN pgcdc._has_column(changes, '_source_lsn', 'pg_lsn')
					 THEN 'c._source_lsn' ELSE 'NULL::pg_lsn' END,
				CASE WHEN pgcdc._has_column(changes, '_source_seq', 'int4')
					 THEN 'c._source_seq' ELSE 'NULL::integer' END)) END);

	EXECUTE format($f$
		SELECT pgcdc_op, pgcdc_seq::text AS seq, ROW(%s)::text AS k,
			   pgcdc_seq IS NULL OR pg_catalog.array_position(pgcdc_seq, NULL) IS NOT NULL AS null_seq,
			   pgcdc_vf IS NULL AS null_vf
		  FROM pg_temp._pgcdc_stage
		 WHERE pgcdc_op IS NULL OR pgcdc_op NOT IN ('I', 'U', 'D', 'T')
			OR pgcdc_seq IS NULL OR pg_catalog.array_position(pgcdc_seq, NULL) IS NOT NULL
			OR pgcdc_vf IS NULL
			OR (pgcdc_op <> 'T' AND (%s))
		 LIMIT 1$f$,
		keys, (SELECT string_agg(format('%I IS NULL', k), ' OR ') FROM unnest(key_columns) k))
	INTO bad;
	IF bad.pgcdc_op IS NULL AND bad.k IS NOT NULL THEN
		RAISE EXCEPTION 'null op in changes %', changes USING ERRCODE = '22004';
	ELSIF bad.pgcdc_op NOT IN ('I', 'U', 'D', 'T') THEN
		RAISE EXCEPTION 'unknown op "%" in changes %', bad.pgcdc_op, changes
			USING ERRCODE = '22023', HINT = 'Ops are I, U, D and T.';
	ELSIF bad.null_seq THEN
		RAISE EXCEPTION 'null sequence_by value in changes %', changes USING ERRCODE = '22004';
	ELSIF bad.null_vf THEN
		RAISE EXCEPTION 'null valid_from value in changes %', changes USING ERRCODE = '22004';
	ELSIF bad.k IS NOT NULL THEN
		RAISE EXCEPTION 'null key in changes %', changes
			USING ERRCODE = '23502',
				  DETAIL = format('Key columns: %s.', array_to_string(key_columns, ', '));
	END IF;

	-- unchanged TOAST: carry the key's latest earlier value in the batch
	IF pgcdc._has_column(changes, 'unchanged_toast', 'text[]') THEN
		-- the alias must not be a possible data column name: pgcdc_ is reserved
		FOR col IN SELECT DISTINCT t.pgcdc_col FROM pg_temp._pgcdc_stage s,
						  unnest(s.pgcdc_ut) AS t(pgcdc_col)
					WHERE t.pgcdc_col = ANY (data_cols) LOOP
			EXECUTE format($f$
				UPDATE pg_temp._pgcdc_stage s
				   SET %1$I = f.pgcdc_v, pgcdc_ut = pg_catalog.array_remove(s.pgcdc_ut, %2$L)
				  FROM (SELECT x.pgcdc_rn, x.pgcdc_grp,
							   pg_catalog.first_value(x.%1$I) OVER (PARTITION BY %3$s, x.pgcdc_grp
																	ORDER BY x.pgcdc_seq) AS pgcdc_v
						  FROM (SELECT y.*, pg_catalog.count(*) FILTER (
									WHERE NOT (%2$L = ANY (coalesce(y.pgcdc_ut, '{}'))))
									OVER (PARTITION BY %3$s ORDER BY y.pgcdc_seq) AS pgcdc_grp
								  FROM pg_temp._pgcdc_stage y
								 WHERE y.pgcdc_op IN ('I', 'U')) x) f
				 WHERE s.pgcdc_rn = f.pgcdc_rn AND %2$L = ANY (s.pgcdc_ut) AND f.pgcdc_grp > 0$f$,
				col, col, keys);
		END LOOP;
		toast_cols := ARRAY(SELECT DISTINCT t.pgcdc_col
							  FROM pg_temp._pgcdc_stage s, unnest(s.pgcdc_ut) AS t(pgcdc_col)
							 WHERE t.pgcdc_col = ANY (data_cols) AND t.pgcdc_col <> ALL (key_columns));
	ELSE
		toast_cols := '{}';
	END IF;
END
$$;

/*
 * One segment of scd2_apply_changes: the staged I/U/D rows with lo < seq < hi
 * (between two truncates), applied set-based.  Per key, in source order:
 *   - a change at or before the key's last applied position is late (or a
 *     replay) and is left in pg_temp._pgcdc_late for _scd2_late;
 *   - effective time pgcdc_t = the running maximum of valid_from, never
 *     before the key's latest version (a source clock going backwards
 *     cannot invert an interval);
 *   - changes with equal pgcdc_t collapse into the last of them;
 *   - each change is classified (kind): new (opens a version where there was
 *     none), change (tracked columns differ from the state before: opens a
 *     version), close (delete), noop (no tracked change: its untracked values
 *     update the version it falls in), overwrite / drop (at the same time as
 *     the current version's start: replace it in place / remove it);
 *   - run numbers each version-opening or closing change; a version's
 *     values are the last I/U of its run.
 * Returns {inserted, updated, deleted}.
 */
CREATE FUNCTION pgcdc._scd2_segment(target regclass, key_columns text[], data_cols text[],
									tracked text[], toast_cols text[],
									lo numeric[], hi numeric[])
RETURNS bigint[] LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	keys text := pgcdc._list(key_columns);
	vals text[] := ARRAY(SELECT c FROM unnest(data_cols) c WHERE c <> ALL (key_columns));
	resolved text;
	counts bigint[];
BEGIN
	PERFORM pgcdc._drop_temp('_pgcdc_latest', '_pgcdc_w', '_pgcdc_late');
	-- each key's latest version
	EXECUTE format($f$
		CREATE TEMP TABLE _pgcdc_latest ON COMMIT DROP AS
		SELECT k.*, l.*
		  FROM (SELECT DISTINCT %1$s FROM pg_temp._pgcdc_stage s
				 WHERE s.pgcdc_op <> 'T' AND ($1 IS NULL OR s.pgcdc_seq > $1)
				   AND ($2 IS NULL OR s.pgcdc_seq < $2)) k
		  LEFT JOIN LATERAL (
				SELECT t._version AS pgcdc_l_version, t._valid_from AS pgcdc_l_from,
					   t._valid_to AS pgcdc_l_to, t._is_current AS pgcdc_l_cur,
					   t._is_deleted AS pgcdc_l_del, %5$s AS pgcdc_l_hash,
					   t._last_sequence AS pgcdc_l_last %2$s
				  FROM %3$s t WHERE %4$s
				 ORDER BY t._valid_from DESC LIMIT 1) l ON true$f$,
		pgcdc._list(key_columns, 's'),
		(SELECT coalesce(string_agg(format(', t.%I AS %I', c, 'pgcdc_l_' || c), ''), '')
		   FROM unnest(toast_cols) c),
		target, pgcdc._key_join('t', 'k', target, key_columns),
		-- recomputed, not _row_hash: track_columns may differ from the last call
		pgcdc._hash_expr(tracked, 't'))
	USING lo, hi;

	EXECUTE format($f$
		CREATE TEMP TABLE _pgcdc_late ON COMMIT DROP AS
		SELECT s.pgcdc_rn FROM pg_temp._pgcdc_stage s JOIN pg_temp._pgcdc_latest l ON %s
		 WHERE s.pgcdc_op <> 'T' AND ($1 IS NULL OR s.pgcdc_seq > $1)
		   AND ($2 IS NULL OR s.pgcdc_seq < $2) AND s.pgcdc_seq <= l.pgcdc_l_last$f$,
		pgcdc._key_join('s', 'l', target, key_columns))
	USING lo, hi;

	-- values with unresolved unchanged TOAST taken from the current version
	resolved := (SELECT string_agg(
					CASE WHEN c = ANY (toast_cols)
						 THEN format('CASE WHEN %L = ANY (s.pgcdc_ut) AND l.pgcdc_l_cur '
									 'THEN l.%I ELSE s.%I END AS %I', c, 'pgcdc_l_' || c, c, c)
						 ELSE format('s.%I', c) END, ', ' ORDER BY o)
				   FROM unnest(vals) WITH ORDINALITY u(c, o));

	EXECUTE format($f$
		CREATE TEMP TABLE _pgcdc_w ON COMMIT DROP AS
		WITH inorder AS (
			SELECT %1$s %2$s, s.pgcdc_op, s.pgcdc_seq, s.pgcdc_rn, s.pgcdc_lsn, s.pgcdc_lseq,
				   l.pgcdc_l_version, l.pgcdc_l_from, l.pgcdc_l_cur, l.pgcdc_l_del, l.pgcdc_l_hash,
				   greatest(max(s.pgcdc_vf) OVER (PARTITION BY %3$s ORDER BY s.pgcdc_seq),
							CASE WHEN l.pgcdc_l_cur THEN l.pgcdc_l_from ELSE l.pgcdc_l_to END)
					 AS pgcdc_t
			  FROM pg_temp._pgcdc_stage s JOIN pg_temp._pgcdc_latest l ON %4$s
			 WHERE s.pgcdc_op <> 'T' AND ($1 IS NULL OR s.pgcdc_seq > $1)
			   AND ($2 IS NULL OR s.pgcdc_seq < $2)
			   AND NOT coalesce(s.pgcdc_seq <= l.pgcdc_l_last, false)
		), collapsed AS (
			SELECT c.*, %5$s AS pgcdc_h,
				   row_number() OVER (PARTITION BY %6$s, pgcdc_t ORDER BY pgcdc_seq DESC) AS pgcdc_dup
			  FROM inorder c
		), p AS (
			SELECT c.*, row_number() OVER w = 1 AS pgcdc_first,
				   CASE WHEN row_number() OVER w = 1
						THEN coalesce(c.pgcdc_l_cur AND NOT c.pgcdc_l_del, false)
						ELSE lag(c.pgcdc_op) OVER w <> 'D' END AS pgcdc_prior,
				   CASE WHEN row_number() OVER w = 1 THEN c.pgcdc_l_hash
						ELSE lag(c.pgcdc_h) OVER w END AS pgcdc_prior_h
			  FROM collapsed c WHERE c.pgcdc_dup = 1
			WINDOW w AS (PARTITION BY %6$s ORDER BY pgcdc_seq)
		), k AS (
			SELECT p.*,
				   CASE WHEN p.pgcdc_op = 'D' THEN
							CASE WHEN NOT p.pgcdc_prior THEN 'noop'
								 WHEN p.pgcdc_first AND p.pgcdc_t = p.pgcdc_l_from THEN 'drop'
								 ELSE 'close' END
						WHEN p.pgcdc_first AND coalesce(p.pgcdc_l_cur, false)
							 AND p.pgcdc_t = p.pgcdc_l_from THEN
							CASE WHEN p.pgcdc_l_del OR p.pgcdc_h IS DISTINCT FROM p.pgcdc_l_hash
								 THEN 'overwrite' ELSE 'noop' END
						WHEN NOT p.pgcdc_prior THEN 'new'
						WHEN p.pgcdc_h IS DISTINCT FROM p.pgcdc_prior_h THEN 'change'
						ELSE 'noop' END AS pgcdc_kind
			  FROM p
		)
		SELECT k.*, count(*) FILTER (WHERE k.pgcdc_kind IN ('new', 'change', 'close', 'drop'))
						OVER (PARTITION BY %6$s ORDER BY pgcdc_seq) AS pgcdc_run
		  FROM k$f$,
		pgcdc._list(key_columns, 's'),
		CASE WHEN resolved IS NULL THEN '' ELSE ', ' || resolved END,
		pgcdc._list(key_columns, 's'),
		pgcdc._key_join('s', 'l', target, key_columns),
		pgcdc._hash_expr(tracked, 'c'),
		keys)
	USING lo, hi;

	-- run 0: changes to the current version before anything opens or closes
	EXECUTE format($f$
		UPDATE %1$s t SET %2$s _row_hash = r.pgcdc_h, _is_deleted = false,
			   _last_sequence = r.pgcdc_seq, _last_at = r.pgcdc_t
		  FROM (SELECT DISTINCT ON (%3$s) w.* FROM pg_temp._pgcdc_w w
				 WHERE w.pgcdc_run = 0 AND w.pgcdc_op <> 'D'
				 ORDER BY %3$s, w.pgcdc_seq DESC) r
		 WHERE %4$s AND t._is_current$f$,
		target,
		(SELECT coalesce(string_agg(format('%I = r.%I, ', c, c), ''), '') FROM unnest(vals) c),
		pgcdc._list(key_columns, 'w'), pgcdc._key_join('t', 'r', target, key_columns));

	-- a delete at the very instant the current version started: it never was
	EXECUTE format($f$
		DELETE FROM %1$s t USING pg_temp._pgcdc_w b
		 WHERE b.pgcdc_kind = 'drop' AND %2$s AND t._is_current$f$,
		target, pgcdc._key_join('t', 'b', target, key_columns));

	-- close the current version at the first change that opens or deletes
	EXECUTE format($f$
		UPDATE %1$s t SET _valid_to = b.pgcdc_t, _is_current = false,
			   _last_sequence = CASE WHEN b.pgcdc_op = 'D' THEN b.pgcdc_seq
									 ELSE t._last_sequence END,
			   _last_at = CASE WHEN b.pgcdc_op = 'D' THEN b.pgcdc_t ELSE t._last_at END
		  FROM pg_temp._pgcdc_w b
		 WHERE b.pgcdc_run = 1 AND b.pgcdc_kind IN ('new', 'change', 'close')
		   AND %2$s AND t._is_current$f$,
		target, pgcdc._key_join('t', 'b', target, key_columns));

	-- one version per opening run, ended by the next run's start
	EXECUTE format($f$
		INSERT INTO %1$s (%2$s, _valid_from, _valid_to, _is_current, _is_deleted, _version,
						  _row_hash, _source_lsn, _source_seq, _sequence, _last_sequence, _last_at)
		SELECT %3$s, b.pgcdc_t, coalesce(b.pgcdc_next_t, 'infinity'), b.pgcdc_next_t IS NULL, false,
			   coalesce(b.pgcdc_l_version, 0) + b.pgcdc_open_no, v.pgcdc_h, b.pgcdc_lsn, b.pgcdc_lseq,
			   b.pgcdc_seq, CASE WHEN b.pgcdc_next_op = 'D' THEN b.pgcdc_next_seq ELSE v.pgcdc_seq END,
			   CASE WHEN b.pgcdc_next_op = 'D' THEN b.pgcdc_next_t ELSE v.pgcdc_t END
		  FROM (SELECT w.*, lead(w.pgcdc_t) OVER x AS pgcdc_next_t, lead(w.pgcdc_op) OVER x AS pgcdc_next_op,
					   lead(w.pgcdc_seq) OVER x AS pgcdc_next_seq,
					   count(*) FILTER (WHERE w.pgcdc_kind IN ('new', 'change')) OVER x AS pgcdc_open_no
				  FROM pg_temp._pgcdc_w w
				 WHERE w.pgcdc_kind IN ('new', 'change', 'close', 'drop')
				WINDOW x AS (PARTITION BY %4$s ORDER BY w.pgcdc_seq)) b
		  JOIN (SELECT DISTINCT ON (%4$s, w.pgcdc_run) w.* FROM pg_temp._pgcdc_w w
				 WHERE w.pgcdc_op <> 'D'
				 ORDER BY %4$s, w.pgcdc_run, w.pgcdc_seq DESC) v
			ON %5$s AND v.pgcdc_run = b.pgcdc_run
		 WHERE b.pgcdc_kind IN ('new', 'change')$f$,
		target, pgcdc._list(data_cols), pgcdc._list(data_cols, 'v'),
		pgcdc._list(key_columns, 'w'), pgcdc._key_join('v', 'b', target, key_columns));

	EXECUTE $f$
		SELECT ARRAY[count(*) FILTER (WHERE pgcdc_kind = 'new'
									  OR pgcdc_kind = 'overwrite' AND pgcdc_l_del),
					 count(*) FILTER (WHERE pgcdc_kind = 'change'
									  OR pgcdc_kind = 'overwrite' AND NOT pgcdc_l_del),
					 count(*) FILTER (WHERE pgcdc_kind IN ('close', 'drop'))]
		  FROM pg_temp._pgcdc_w$f$ INTO counts;
	RETURN counts;
END
$$;

-- A truncate at position seq and time t closes every current version that
-- is older than it (a replayed truncate finds none).
CREATE FUNCTION pgcdc._scd2_truncate(target regclass, seq numeric[], t timestamptz)
RETURNS bigint LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
	m bigint;
	older text := $f$t._is_current AND coalesce(t._sequence, '{}') < $1
					 AND coalesce(t._last_sequence, '{}') < $1$f$;
BEGIN
	-- versions that started at (or, clock gone backwards, after) t never were
	EXECUTE format('DELETE FROM %s t WHERE %s AND t._valid_from >= $2', target, older)
	USING seq, t;
	GET DIAGNOSTICS n = ROW_COUNT;
	EXECUTE format('UPDATE %s t SET _valid_to = $2, _is_current = false, _last_sequence = $1, '
				   '_last_at = $2 WHERE %s', target, older)
	USING seq, t;
	GET DIAGNOSTICS m = ROW_COUNT;
	RETURN n + m;
END
$$;

/*
 * Late changes (at or before their key's last applied position), one at a
 * time in source order: they are rare, and each touches one key's versions.
 * A change falls in the version A with the greatest opening position not
 * after it.  It is a replay (skipped) when it opened A, or is the delete
 * that closed A.  After that delete it fills the gap before the next
 * version (a re-insert); a delete inside A ends A early, and at A's start
 * removes A (A never was), unless a later change at that instant won; a
 * change of the
 * tracked columns splits A, and the second part keeps what was applied to
 * A after the change (e.g. the delete that closed it), except that A
 * resumes at a later change of untracked columns only (it had A's tracked
 * values: _last_at tells when; of several such changes only the last is
 * known); a change of untracked columns alone updates A when nothing
 * later was applied to it.
 * Later versions keep their values and intervals (their _version numbers
 * shift by one).  Replaying any of these changes finds the history it made
 * and changes nothing.  Returns {inserted, updated, deleted}.
 */
CREATE FUNCTION pgcdc._scd2_late(target regclass, key_columns text[], data_cols text[],
								 tracked text[], toast_cols text[])
RETURNS bigint[] LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	vals text[] := ARRAY(SELECT c FROM unnest(data_cols) c WHERE c <> ALL (key_columns));
	s record;
	a record;
	n record;
	t timestamptz;
	h bytea;
	counts bigint[] := '{0,0,0}';
	find text := format($f$
		SELECT t.ctid, t._sequence, t._last_sequence, t._last_at, t._valid_from, t._valid_to,
			   t._is_current, %s AS row_hash
		  FROM %s t, pg_temp._pgcdc_stage s
		 WHERE s.pgcdc_rn = $1 AND %s
		   AND coalesce(t._sequence, '{}') %%s s.pgcdc_seq
		 ORDER BY coalesce(t._sequence, '{}') %%s, t._valid_from %%s LIMIT 1$f$,
		pgcdc._hash_expr(tracked, 't'), target, pgcdc._key_join('t', 's', target, key_columns));
	-- the late row's values, unchanged TOAST taken from version $2
	resolved text := format($f$
		SELECT %s %s, %s AS pgcdc_h
		  FROM (SELECT %s %s FROM pg_temp._pgcdc_stage s LEFT JOIN %s a ON a.ctid = $2
				 WHERE s.pgcdc_rn = $1) r$f$,
		pgcdc._list(key_columns, 'r'),
		(SELECT coalesce(string_agg(format(', r.%I', c), ''), '') FROM unnest(vals) c),
		pgcdc._hash_expr(tracked, 'r'),
		pgcdc._list(key_columns, 's'),
		(SELECT coalesce(string_agg(
			CASE WHEN c = ANY (toast_cols)
				 THEN format(', CASE WHEN %L = ANY (s.pgcdc_ut) THEN a.%I ELSE s.%I END AS %I',
							 c, c, c, c)
				 ELSE format(', s.%I', c) END, ''), '')
		   FROM unnest(vals) c),
		target);
	insert_version text := format($f$
		INSERT INTO %s (%s, _valid_from, _valid_to, _is_current, _is_deleted, _version,
						_row_hash, _source_lsn, _source_seq, _sequence, _last_sequence, _last_at)
		SELECT %s, $3, $4, $5, false, 0, r.pgcdc_h, s.pgcdc_lsn, s.pgcdc_lseq, s.pgcdc_seq, $6, $7
		  FROM (%s) r, pg_temp._pgcdc_stage s WHERE s.pgcdc_rn = $1
		RETURNING ctid$f$,
		target, pgcdc._list(data_cols), pgcdc._list(data_cols, 'r'), resolved);
	-- the late row's values become A's (its position $3 at $4)
	absorb text := format('UPDATE %s t SET %s _row_hash = r.pgcdc_h, _last_sequence = $3, '
						  '_last_at = $4 FROM (%s) r WHERE t.ctid = $2', target,
						  (SELECT coalesce(string_agg(format('%I = r.%I, ', c, c), ''), '')
							 FROM unnest(vals) c), resolved);
	-- A ends at its last change (of untracked columns only, which had A's
	-- tracked values); a copy of A, opened by that change, goes on from there
	resume text := format($f$
		WITH a AS (SELECT * FROM %1$s WHERE ctid = $1),
			 u AS (UPDATE %1$s SET _valid_to = _last_at, _is_current = false,
								   _last_sequence = _sequence, _last_at = _valid_from
					WHERE ctid = $1 RETURNING 1)
		INSERT INTO %1$s (%2$s, _valid_from, _valid_to, _is_current, _is_deleted, _version,
						  _row_hash, _source_lsn, _source_seq, _sequence, _last_sequence, _last_at)
		SELECT %3$s, a._last_at, a._valid_to, a._is_current, a._is_deleted, 0, a._row_hash,
			   a._source_lsn, a._source_seq, a._last_sequence, a._last_sequence, a._last_at
		  FROM a WHERE (SELECT pg_catalog.count(*) FROM u) = 1$f$,
		target, pgcdc._list(data_cols), pgcdc._list(data_cols, 'a'));
	-- version $1 and the next one, now with the same tracked values (a late
	-- change made the next one's change a no-op), become one: the next one
	-- is absorbed, unless a delete closed $1
	merge_next text := format($f$
		WITH x AS (SELECT t.*, %3$s AS pgcdc_h FROM %1$s t WHERE t.ctid = $1),
			 n AS (DELETE FROM %1$s t USING x
					WHERE %2$s AND t._valid_from = x._valid_to
					  AND NOT (x._last_at = x._valid_to AND x._last_sequence > x._sequence)
					  AND %4$s IS NOT DISTINCT FROM x.pgcdc_h
				   RETURNING t.*)
		UPDATE %1$s t SET %5$s _valid_to = n._valid_to, _is_current = n._is_current,
			   _is_deleted = n._is_deleted, _row_hash = n._row_hash,
			   _last_sequence = n._last_sequence, _last_at = n._last_at
		  FROM n WHERE t.ctid = $1$f$,
		target, pgcdc._key_join('t', 'x', target, key_columns), pgcdc._hash_expr(tracked, 't'),
		pgcdc._hash_expr(tracked, 't'),
		(SELECT coalesce(string_agg(format('%I = n.%I, ', c, c), ''), '') FROM unnest(vals) c));
	-- the version before version $1
	prev text := format($f$
		SELECT p.ctid FROM %1$s p, %1$s a
		 WHERE a.ctid = $1 AND %2$s AND p._valid_from < a._valid_from
		 ORDER BY p._valid_from DESC LIMIT 1$f$,
		target, pgcdc._key_join('p', 'a', target, key_columns));
	tid tid;
	renumber text := format($f$
		UPDATE %1$s t SET _version = x.n
		  FROM (SELECT h.ctid AS tid, row_number() OVER (ORDER BY h._valid_from) AS n
				  FROM %1$s h, pg_temp._pgcdc_stage s WHERE s.pgcdc_rn = $1 AND %2$s) x
		 WHERE t.ctid = x.tid AND t._version <> x.n$f$,
		target, pgcdc._key_join('h', 's', target, key_columns));
BEGIN
	FOR s IN SELECT st.pgcdc_rn, st.pgcdc_op, st.pgcdc_seq, st.pgcdc_vf
			   FROM pg_temp._pgcdc_late l JOIN pg_temp._pgcdc_stage st USING (pgcdc_rn)
			  ORDER BY st.pgcdc_seq, st.pgcdc_rn LOOP
		EXECUTE format(find, '<=', 'DESC', 'DESC') INTO a USING s.pgcdc_rn;
		EXECUTE format(find, '>', 'ASC', 'ASC') INTO n USING s.pgcdc_rn;
		-- the change that opened A, replayed
		CONTINUE WHEN a.ctid IS NOT NULL AND a._sequence = s.pgcdc_seq;
		IF a.ctid IS NULL THEN
			-- before the key's first version
			CONTINUE WHEN s.pgcdc_op = 'D' OR n.ctid IS NULL OR s.pgcdc_vf >= n._valid_from;
			EXECUTE insert_version INTO tid
					USING s.pgcdc_rn, NULL::tid, s.pgcdc_vf, n._valid_from, false, s.pgcdc_seq,
						  s.pgcdc_vf;
			EXECUTE merge_next USING tid;
			EXECUTE renumber USING s.pgcdc_rn;
			counts[1] := counts[1] + 1;
		ELSIF NOT a._is_current AND (n.ctid IS NULL OR a._valid_to < n._valid_from)
			  AND s.pgcdc_seq >= a._last_sequence THEN
			-- after the delete that closed A (or that delete, replayed): in
			-- the gap before the next version, a re-insert
			CONTINUE WHEN s.pgcdc_op = 'D' OR n.ctid IS NULL OR s.pgcdc_seq = a._last_sequence;
			t := greatest(s.pgcdc_vf, a._valid_to);
			CONTINUE WHEN t >= n._valid_from;
			EXECUTE insert_version INTO tid
					USING s.pgcdc_rn, NULL::tid, t, n._valid_from, false, s.pgcdc_seq, t;
			EXECUTE merge_next USING tid;
			EXECUTE renumber USING s.pgcdc_rn;
			counts[1] := counts[1] + 1;
		ELSIF s.pgcdc_op = 'D' THEN
			t := greatest(s.pgcdc_vf, a._valid_from);
			CONTINUE WHEN t >= a._valid_to;
			IF a._last_sequence > s.pgcdc_seq AND a._last_at > t AND a._last_at < a._valid_to THEN
				-- a change absorbed into A after the delete re-inserted A's values
				EXECUTE resume USING a.ctid;
				EXECUTE format(find, '<=', 'DESC', 'DESC') INTO a USING s.pgcdc_rn;
			END IF;
			IF t > a._valid_from THEN
				-- a delete inside A ends it early
				EXECUTE format('UPDATE %s SET _valid_to = $2, _is_current = false, '
							   '_last_sequence = $3, _last_at = $2 WHERE ctid = $1', target)
				USING a.ctid, t, s.pgcdc_seq;
			ELSE
				-- at the instant A started: a later change at that instant won
				CONTINUE WHEN s.pgcdc_seq <= a._last_sequence;
				-- else A never was, and the version before it ends with this
				-- delete (recorded there even after a gap, so that a replay of
				-- A's change finds it)
				EXECUTE prev INTO tid USING a.ctid;
				EXECUTE format('DELETE FROM %s WHERE ctid = $1', target) USING a.ctid;
				IF tid IS NOT NULL THEN
					EXECUTE format('UPDATE %s SET _last_sequence = $2, _last_at = $3 WHERE ctid = $1',
								   target)
					USING tid, s.pgcdc_seq, t;
				END IF;
				EXECUTE renumber USING s.pgcdc_rn;
			END IF;
			counts[3] := counts[3] + 1;
		ELSE
			t := greatest(s.pgcdc_vf, a._valid_from);
			-- at the next version's start: a later change at the same instant won
			CONTINUE WHEN t >= a._valid_to;
			EXECUTE format('SELECT pgcdc_h FROM (%s) r', resolved) INTO h USING s.pgcdc_rn, a.ctid;
			IF a._last_sequence > s.pgcdc_seq AND a._last_at > t AND a._last_at < a._valid_to
			   AND h IS DISTINCT FROM a.row_hash THEN
				-- a change absorbed into A after this one put A's tracked
				-- values back: A resumes then, this one lasts until then
				EXECUTE resume USING a.ctid;
				EXECUTE format(find, '<=', 'DESC', 'DESC') INTO a USING s.pgcdc_rn;
			END IF;
			-- at A's start, before what A holds now: a later change at the
			-- same instant won
			CONTINUE WHEN t = a._valid_from AND s.pgcdc_seq <= a._last_sequence;
			IF h IS NOT DISTINCT FROM a.row_hash OR t = a._valid_from THEN
				-- no tracked change: its untracked values are A's when nothing
				-- later was applied to A; at A's start its values are A's
				CONTINUE WHEN s.pgcdc_seq <= a._last_sequence;
				EXECUTE absorb USING s.pgcdc_rn, a.ctid, s.pgcdc_seq, t;
				CONTINUE WHEN h IS NOT DISTINCT FROM a.row_hash;
				-- A's new values may equal its neighbours'
				EXECUTE merge_next USING a.ctid;
				EXECUTE prev INTO tid USING a.ctid;
				IF tid IS NOT NULL THEN
					EXECUTE merge_next USING tid;
				END IF;
			ELSE
				-- split A at t; the second part carries the late change and
				-- keeps what was applied to A after it (e.g. the delete that
				-- closed A)
				EXECUTE format('UPDATE %s SET _valid_to = $2, _is_current = false, '
							   '_last_sequence = $3, _last_at = $4 WHERE ctid = $1', target)
				USING a.ctid, t,
					  CASE WHEN a._last_sequence < s.pgcdc_seq THEN a._last_sequence
						   ELSE a._sequence END,
					  CASE WHEN a._last_sequence < s.pgcdc_seq THEN a._last_at
						   ELSE a._valid_from END;
				EXECUTE insert_version INTO tid
						USING s.pgcdc_rn, a.ctid, t, a._valid_to, a._is_current,
							  greatest(s.pgcdc_seq, a._last_sequence),
							  CASE WHEN a._last_sequence > s.pgcdc_seq THEN a._last_at ELSE t END;
				EXECUTE merge_next USING tid;
			END IF;
			EXECUTE renumber USING s.pgcdc_rn;
			counts[2] := counts[2] + 1;
		END IF;
	END LOOP;
	RETURN counts;
END
$$;

CREATE FUNCTION pgcdc._sum(a bigint[], b bigint[])
RETURNS bigint[] LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT array_agg(x + y ORDER BY o) FROM unnest(a, b) WITH ORDINALITY u(x, y, o) $$;

-- One segment: in-order changes set-based, then its late changes.
CREATE FUNCTION pgcdc._scd2_run(target regclass, key_columns text[], data_cols text[],
								tracked text[], toast_cols text[], lo numeric[], hi numeric[])
RETURNS bigint[] LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT pgcdc._sum(
		pgcdc._scd2_segment(target, key_columns, data_cols, tracked, toast_cols, lo, hi),
		pgcdc._scd2_late(target, key_columns, data_cols, tracked, toast_cols))
$$;

/*
 * The common batch in one statement, prepared once per session and shape:
 * only I, U and D, no unchanged TOAST, no key change, no truncate, and every
 * change after its key's last applied position (scd2_apply_changes has
 * checked all but the last).  The changes are read once, into pgcdc_s.  It
 * computes what _scd2_segment does, in two flows:
 *   - a key with one change here needs no window: it is its own first and
 *     last change, and its own run;
 *   - a key with several goes through windows in (key, sequence) order:
 *     pgcdc_t as there; collapse: a change is dropped when the next one's
 *     valid_from is not after its pgcdc_t (both would have the same
 *     pgcdc_t); kind from the change before (lag); a run is a
 *     version-opening or closing change and the changes after it up to the
 *     next one: its last row holds the version's values, and its opening
 *     change (the greatest so far: pgcdc_t and the sequence increase) the
 *     version's start and position.
 * The key's current version gets at most one UPDATE (run 0's last values,
 * and the close by the change after them; or run 1's close alone) or a
 * DELETE (drop); then the new versions are inserted.
 * The statement returns {inserted, updated, deleted, change rows}, or NULL
 * when some change is late or a replay: then nothing was written, and the
 * caller stages.  scd2_apply_changes prepares it, _scd2_fast runs it.
 */
CREATE FUNCTION pgcdc._scd2_fast_sql(target regclass, changes regclass, key_columns text[],
									 op_column text, seq text, vf text, data_cols text[],
									 tracked text[])
RETURNS text LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	vals text[] := ARRAY(SELECT c FROM unnest(data_cols) c WHERE c <> ALL (key_columns));
	keys text := pgcdc._list(key_columns, 'x');
	w text := format('PARTITION BY %s ORDER BY x.pgcdc_seq', keys);
	-- the change's kind (as in _scd2_segment), given whether it is the key's
	-- first here, whether a version is open before it, and that version's hash
	kind text := $k$CASE WHEN x.pgcdc_op = 'D' THEN
			CASE WHEN NOT (%2$s) THEN 'noop'
				 WHEN (%1$s) AND x.pgcdc_t = x.pgcdc_l_from THEN 'drop'
				 ELSE 'close' END
		WHEN (%1$s) AND coalesce(x.pgcdc_l_cur, false) AND x.pgcdc_t = x.pgcdc_l_from THEN
			CASE WHEN x.pgcdc_l_del OR x.pgcdc_h IS DISTINCT FROM x.pgcdc_l_hash
				 THEN 'overwrite' ELSE 'noop' END
		WHEN NOT (%2$s) THEN 'new'
		WHEN x.pgcdc_h IS DISTINCT FROM (%3$s) THEN 'change'
		ELSE 'noop' END$k$;
	-- a version is open before the key's first change here
	first_prior text := 'coalesce(x.pgcdc_l_cur AND NOT x.pgcdc_l_del, false)';
	-- the row's part in the current version's update
	cur text := $c$CASE WHEN NOT coalesce(x.pgcdc_l_cur, false) THEN NULL
		WHEN x.pgcdc_run = 0 AND x.pgcdc_op <> 'D'
			 AND (x.pgcdc_next_kind IS NULL
				  OR x.pgcdc_next_kind IN ('new', 'change', 'close', 'drop')) THEN 'values'
		WHEN x.pgcdc_run = 1 AND x.pgcdc_kind IN ('new', 'change', 'close')
			 AND coalesce(x.pgcdc_prev_op, 'D') = 'D' THEN 'close' END$c$;
	-- a change and its key's latest version
	joined text := 'x.*, l.pgcdc_l_tid, l.pgcdc_l_version, l.pgcdc_l_from, l.pgcdc_l_cur, '
				   'l.pgcdc_l_del, l.pgcdc_l_hash';
	t0 text := 'CASE WHEN l.pgcdc_l_cur THEN l.pgcdc_l_from ELSE l.pgcdc_l_to END';
BEGIN
	RETURN format($f$
WITH pgcdc_s AS MATERIALIZED (
	SELECT x.*, CASE WHEN x.pgcdc_op <> 'D' THEN %1$s END AS pgcdc_h
	  FROM (SELECT %2$s, c.%3$I::text AS pgcdc_op, %4$s AS pgcdc_seq, %5$s AS pgcdc_vf,
				   %6$s AS pgcdc_lsn, %7$s AS pgcdc_lseq
			  FROM %8$s c OFFSET 0) x
), pgcdc_l AS MATERIALIZED (
	-- each key's latest version, and its changes here
	SELECT k.*, l.*
	  FROM (SELECT %9$s, pg_catalog.min(x.pgcdc_seq) AS pgcdc_min_seq,
				   pg_catalog.count(*) AS pgcdc_n, pg_catalog.bool_or(x.pgcdc_op <> 'D') AS pgcdc_iu
			  FROM pgcdc_s x WHERE %10$s GROUP BY %9$s) k
	  LEFT JOIN LATERAL (
			SELECT t.ctid AS pgcdc_l_tid, t._version AS pgcdc_l_version,
				   t._valid_from AS pgcdc_l_from, t._valid_to AS pgcdc_l_to,
				   t._is_current AS pgcdc_l_cur, t._is_deleted AS pgcdc_l_del,
				   -- recomputed, not _row_hash: track_columns may differ from the
				   -- last call; only inserts and updates compare with it
				   CASE WHEN t._is_current AND k.pgcdc_iu THEN %11$s END AS pgcdc_l_hash,
				   t._last_sequence AS pgcdc_l_last
			  FROM %12$s t WHERE %13$s
			 ORDER BY t._valid_from DESC LIMIT 1) l ON true
), pgcdc_go AS MATERIALIZED (
	SELECT NOT EXISTS (SELECT FROM pgcdc_l l WHERE l.pgcdc_min_seq <= l.pgcdc_l_last) AS pgcdc_ok
), pgcdc_1 AS (
	-- keys with one change
	SELECT x.*, x.pgcdc_kind IN ('new', 'change') AS pgcdc_o_open, x.pgcdc_t AS pgcdc_o_t,
		   x.pgcdc_seq AS pgcdc_o_seq,
		   x.pgcdc_lsn AS pgcdc_o_lsn, x.pgcdc_lseq AS pgcdc_o_lseq, true AS pgcdc_last,
		   %18$s AS pgcdc_cur
	  FROM (SELECT x.*, (x.pgcdc_kind IN ('new', 'change', 'close', 'drop'))::integer AS pgcdc_run,
				   (x.pgcdc_kind IN ('new', 'change'))::integer AS pgcdc_open_no,
				   NULL::text AS pgcdc_prev_op, NULL::text AS pgcdc_next_kind,
				   NULL::timestamptz AS pgcdc_next_t, NULL::text AS pgcdc_next_op,
				   NULL::numeric[] AS pgcdc_next_seq
			  FROM (SELECT x.*, %15$s AS pgcdc_kind
					  FROM (SELECT x.*, l.pgcdc_l_tid, l.pgcdc_l_version, l.pgcdc_l_from,
								   l.pgcdc_l_cur, l.pgcdc_l_del, l.pgcdc_l_hash,
								   greatest(x.pgcdc_vf, %17$s) AS pgcdc_t
							  FROM pgcdc_s x JOIN pgcdc_l l ON %16$s AND l.pgcdc_n = 1) x) x) x
), pgcdc_a AS (
	-- keys with several: pgcdc_t; a change is collapsed into the next one
	-- when that one's time is not later (they would have the same pgcdc_t)
	SELECT %14$s, greatest(pg_catalog.max(x.pgcdc_vf) OVER w, %17$s) AS pgcdc_t,
		   pg_catalog.lead(x.pgcdc_vf) OVER w AS pgcdc_next_vf
	  FROM pgcdc_s x JOIN pgcdc_l l ON %16$s AND l.pgcdc_n > 1
	WINDOW w AS (%19$s)
), pgcdc_k AS (
	-- collapsed, classified, and the next change
	SELECT x.*, %20$s AS pgcdc_kind, pg_catalog.lag(x.pgcdc_op) OVER w AS pgcdc_prev_op,
		   pg_catalog.lead(x.pgcdc_t) OVER w AS pgcdc_next_t,
		   pg_catalog.lead(x.pgcdc_op) OVER w AS pgcdc_next_op,
		   pg_catalog.lead(x.pgcdc_seq) OVER w AS pgcdc_next_seq
	  FROM pgcdc_a x
	 WHERE x.pgcdc_next_vf IS NULL OR x.pgcdc_next_vf > x.pgcdc_t
	WINDOW w AS (%19$s)
), pgcdc_r AS (
	-- runs; pgcdc_t and pgcdc_seq increase, so the greatest of the opening
	-- changes so far is the run's: its time, and its position and kind
	-- packed behind its sequence value
	SELECT x.*,
		   pg_catalog.count(*) FILTER (WHERE x.pgcdc_kind IN ('new', 'change', 'close', 'drop'))
			 OVER w AS pgcdc_run,
		   pg_catalog.count(*) FILTER (WHERE x.pgcdc_kind IN ('new', 'change')) OVER w AS pgcdc_open_no,
		   pg_catalog.lead(x.pgcdc_kind) OVER w AS pgcdc_next_kind,
		   pg_catalog.max(x.pgcdc_t) FILTER (WHERE x.pgcdc_kind IN ('new', 'change', 'close', 'drop'))
			 OVER w AS pgcdc_o_t,
		   pg_catalog.max(x.pgcdc_seq OPERATOR(pg_catalog.||) ARRAY[
				x.pgcdc_lsn OPERATOR(pg_catalog.-) '0/0'::pg_lsn, x.pgcdc_lseq,
				(x.pgcdc_kind IN ('new', 'change'))::integer]::numeric[])
			 FILTER (WHERE x.pgcdc_kind IN ('new', 'change', 'close', 'drop')) OVER w AS pgcdc_o
	  FROM pgcdc_k x
	WINDOW w AS (%19$s)
), pgcdc_w AS MATERIALIZED (
	SELECT %21$s FROM pgcdc_1 x
	UNION ALL
	SELECT %21$s FROM (
		SELECT x.*, x.pgcdc_o[pg_catalog.cardinality(x.pgcdc_o)] = 1 AS pgcdc_o_open,
			   x.pgcdc_o[1:pg_catalog.cardinality(x.pgcdc_o) - 3] AS pgcdc_o_seq,
			   '0/0'::pg_lsn OPERATOR(pg_catalog.+) x.pgcdc_o[pg_catalog.cardinality(x.pgcdc_o) - 2]
				 AS pgcdc_o_lsn,
			   x.pgcdc_o[pg_catalog.cardinality(x.pgcdc_o) - 1]::integer AS pgcdc_o_lseq,
			   x.pgcdc_next_kind IS NULL
				 OR x.pgcdc_next_kind IN ('new', 'change', 'close', 'drop') AS pgcdc_last,
			   %18$s AS pgcdc_cur
		  FROM pgcdc_r x) x
), pgcdc_del AS (
	-- a delete at the very instant the current version started: it never was
	DELETE FROM %12$s t USING pgcdc_w u
	 WHERE t.ctid = ANY (ARRAY(SELECT u.pgcdc_l_tid FROM pgcdc_w u WHERE u.pgcdc_kind = 'drop'))
	   AND t.ctid = u.pgcdc_l_tid AND u.pgcdc_kind = 'drop'
	   AND (SELECT g.pgcdc_ok FROM pgcdc_go g)
	RETURNING 1
), pgcdc_upd AS (
	UPDATE %12$s t
	   SET %22$s
		   _row_hash = CASE WHEN u.pgcdc_cur = 'values' THEN u.pgcdc_h ELSE t._row_hash END,
		   _is_deleted = CASE WHEN u.pgcdc_cur = 'values' THEN false ELSE t._is_deleted END,
		   _valid_to = CASE WHEN u.pgcdc_cur = 'close' THEN u.pgcdc_t
							WHEN u.pgcdc_next_kind IN ('new', 'change', 'close') THEN u.pgcdc_next_t
							ELSE t._valid_to END,
		   _is_current = u.pgcdc_cur = 'values' AND u.pgcdc_next_kind IS NULL,
		   _last_sequence = CASE WHEN u.pgcdc_cur = 'close' THEN
									 CASE WHEN u.pgcdc_op = 'D' THEN u.pgcdc_seq
										  ELSE t._last_sequence END
								 WHEN u.pgcdc_next_op = 'D' THEN u.pgcdc_next_seq
								 ELSE u.pgcdc_seq END,
		   _last_at = CASE WHEN u.pgcdc_cur = 'close' THEN
							   CASE WHEN u.pgcdc_op = 'D' THEN u.pgcdc_t ELSE t._last_at END
						   WHEN u.pgcdc_next_op = 'D' THEN u.pgcdc_next_t
						   ELSE u.pgcdc_t END
	  FROM pgcdc_w u
	 -- by row position: a TID scan, not a join with the whole target
	 WHERE t.ctid = ANY (ARRAY(SELECT u.pgcdc_l_tid FROM pgcdc_w u WHERE u.pgcdc_cur IS NOT NULL))
	   AND t.ctid = u.pgcdc_l_tid AND u.pgcdc_cur IS NOT NULL
	   AND (SELECT g.pgcdc_ok FROM pgcdc_go g)
	RETURNING 1
), pgcdc_ins AS (
	-- after pgcdc_upd and pgcdc_del: the unique index on current rows
	-- checks as rows go in
	INSERT INTO %12$s (%23$s, _valid_from, _valid_to, _is_current, _is_deleted, _version,
					   _row_hash, _source_lsn, _source_seq, _sequence, _last_sequence, _last_at)
	SELECT %24$s, x.pgcdc_o_t, coalesce(x.pgcdc_next_t, 'infinity'), x.pgcdc_next_t IS NULL, false,
		   coalesce(x.pgcdc_l_version, 0) + x.pgcdc_open_no, x.pgcdc_h, x.pgcdc_o_lsn, x.pgcdc_o_lseq,
		   x.pgcdc_o_seq, CASE WHEN x.pgcdc_next_op = 'D' THEN x.pgcdc_next_seq ELSE x.pgcdc_seq END,
		   CASE WHEN x.pgcdc_next_op = 'D' THEN x.pgcdc_next_t ELSE x.pgcdc_t END
	  FROM pgcdc_w x
	 WHERE x.pgcdc_last AND x.pgcdc_o_open AND x.pgcdc_run > 0
	   AND (SELECT g.pgcdc_ok FROM pgcdc_go g)
	   AND (SELECT pg_catalog.count(*) FROM pgcdc_upd) >= 0
	   AND (SELECT pg_catalog.count(*) FROM pgcdc_del) >= 0
	RETURNING 1
)
SELECT CASE WHEN (SELECT g.pgcdc_ok FROM pgcdc_go g) THEN ARRAY[
		   pg_catalog.count(*) FILTER (WHERE x.pgcdc_kind = 'new'
									   OR x.pgcdc_kind = 'overwrite' AND x.pgcdc_l_del),
		   pg_catalog.count(*) FILTER (WHERE x.pgcdc_kind = 'change'
									   OR x.pgcdc_kind = 'overwrite' AND NOT x.pgcdc_l_del),
		   pg_catalog.count(*) FILTER (WHERE x.pgcdc_kind IN ('close', 'drop')),
		   (SELECT pg_catalog.count(*) FROM pgcdc_s)] END
  FROM pgcdc_w x$f$,
		pgcdc._hash_expr(tracked, 'x'),										-- 1
		pgcdc._cast_list(target, changes, data_cols, 'c'),
		op_column, seq, vf,
		CASE WHEN pgcdc._has_column(changes, '_source_lsn', 'pg_lsn')
			 THEN 'c._source_lsn' ELSE 'NULL::pg_lsn' END,
		CASE WHEN pgcdc._has_column(changes, '_source_seq', 'int4')
			 THEN 'c._source_seq' ELSE 'NULL::integer' END,
		pgcdc._qname(changes),												-- 8
		keys,
		-- a null key fails the batch before anything is written
		format('(%s) OR pgcdc._fail(''23502'', %L, %L) IS NULL',
			   (SELECT string_agg(format('x.%I IS NOT NULL', k), ' AND ') FROM unnest(key_columns) k),
			   format('null key in changes %s', changes),
			   format('Key columns: %s.', array_to_string(key_columns, ', '))),
		pgcdc._hash_expr(tracked, 't'),
		pgcdc._qname(target),												-- 12
		pgcdc._key_join('t', 'k', target, key_columns),
		joined,
		format(kind, 'true', first_prior, 'x.pgcdc_l_hash'),					-- 15
		pgcdc._key_join('x', 'l', target, key_columns),
		t0,
		cur,																	-- 18
		w,
		format(kind, 'pg_catalog.lag(x.pgcdc_op) OVER w IS NULL',
			   format('CASE WHEN pg_catalog.lag(x.pgcdc_op) OVER w IS NULL THEN %s '
					  'ELSE pg_catalog.lag(x.pgcdc_op) OVER w <> ''D'' END', first_prior),
			   'CASE WHEN pg_catalog.lag(x.pgcdc_op) OVER w IS NULL THEN x.pgcdc_l_hash '
			   'ELSE pg_catalog.lag(x.pgcdc_h) OVER w END'),							-- 20
		-- pgcdc_w's columns, the same in both flows
		pgcdc._list(data_cols, 'x') || ', x.pgcdc_op, x.pgcdc_seq, x.pgcdc_h, x.pgcdc_t, x.pgcdc_l_tid, '
			 'x.pgcdc_l_version, x.pgcdc_l_del, x.pgcdc_kind, x.pgcdc_run, x.pgcdc_open_no, '
			 'x.pgcdc_next_kind, x.pgcdc_next_t, x.pgcdc_next_op, x.pgcdc_next_seq, '
			 'x.pgcdc_o_open, x.pgcdc_o_t, x.pgcdc_o_seq, x.pgcdc_o_lsn, x.pgcdc_o_lseq, '
			 'x.pgcdc_last, x.pgcdc_cur',
		(SELECT coalesce(string_agg(format('%1$I = CASE WHEN u.pgcdc_cur = ''values'' THEN u.%1$I '
										   'ELSE t.%1$I END, ', c), ''), '')
		   FROM unnest(vals) c),												-- 22
		pgcdc._list(data_cols), pgcdc._list(data_cols, 'x'));
END
$$;

-- Run the prepared statement of _scd2_fast_sql.  Its plan is made once,
-- from estimates that are often far off: the changes (a view over an
-- unanalyzed temp table) say a few dozen rows, the target may have been
-- nearly empty then.  A nested loop over two CTEs would cost batch size
-- squared, a seq scan of the target its whole size, every batch.  So: hash
-- joins, the lookups of each key's versions by index (LATERAL, necessarily
-- nested loops), the writes by TID scans.
CREATE FUNCTION pgcdc._scd2_fast(stmt text)
RETURNS bigint[] LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_nestloop = off
SET enable_seqscan = off
AS $$
DECLARE
	counts bigint[];
BEGIN
	EXECUTE 'EXECUTE ' || quote_ident(stmt) INTO counts;
	RETURN counts;
END
$$;


/*
 * Apply a batch of change rows to an SCD2 history.  A plain batch (only I,
 * U and D, after what the history holds for their keys, no unchanged TOAST,
 * no key change: the consumer's common one) is applied by one statement
 * (_scd2_fast_sql) prepared once per session and shape; truncates, unchanged
 * TOAST, key-changing updates, late changes and replays are staged (_stage)
 * and applied segment by segment (_scd2_run).  Both give the same history.
 */
CREATE FUNCTION pgcdc.scd2_apply_changes(target regclass, changes regclass,
										 key_columns text[], sequence_by text,
										 op_column text DEFAULT 'op',
										 track_columns text[] DEFAULT NULL,
										 valid_from_column text DEFAULT NULL)
RETURNS TABLE (inserted bigint, updated bigint, deleted bigint, unchanged bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off			-- as scd2_merge
AS $$
DECLARE
	shape text;
	stmts text[];		-- prepared: is the batch plain, and the fast path
	args record;
	plain boolean;
	st record;
	tracked text[];
	tr record;
	lo numeric[];
	c bigint[] := '{0,0,0}';
	truncated bigint := 0;
	total bigint;
BEGIN
	-- A call of the same shape earlier in this session checked the
	-- arguments and prepared the statements.
	IF target IS NOT NULL AND changes IS NOT NULL THEN
		shape := pgcdc._shape('{scd2_apply_changes,_scd2_fast_sql,_stage_args,_plain_sql}',
							  target, changes,
							  key_columns::text, sequence_by, op_column, track_columns::text,
							  valid_from_column);
		stmts := pgcdc._cached(shape, 2);
	END IF;
	IF stmts IS NULL THEN
		PERFORM pgcdc._check_scd2(target, positions => true);
	END IF;
	-- Serialise writers of this target; readers are not blocked.
	EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', target);
	IF stmts IS NULL THEN
		args := pgcdc._stage_args(target, changes, key_columns, sequence_by, op_column,
								  valid_from_column);
		tracked := pgcdc._tracked(target, changes, key_columns, track_columns, args.data_cols);
		stmts := ARRAY[
			-- is the batch plain (null positions or times are not)
			pgcdc._prepared(pgcdc._plain_sql(changes, op_column,
											 array_remove(args.seq_cols || valid_from_column, NULL))),
			pgcdc._prepared(pgcdc._scd2_fast_sql(target, changes, key_columns, op_column,
												 args.seq, args.vf, args.data_cols, tracked))];
		PERFORM set_config(shape, array_to_string(stmts, ' '), false);
	END IF;

	EXECUTE 'EXECUTE ' || quote_ident(stmts[1]) INTO plain;
	IF plain THEN
		c := pgcdc._scd2_fast(stmts[2]);
		IF c IS NOT NULL THEN
			inserted := c[1];
			updated := c[2];
			deleted := c[3];
			unchanged := c[4] - c[1] - c[2] - c[3];
			RETURN NEXT;
			RETURN;
		END IF;
		-- late changes or replays: nothing was written; stage them
		c := '{0,0,0}';
	END IF;

	st := pgcdc._stage(target, changes, key_columns, sequence_by, op_column, valid_from_column);
	tracked := pgcdc._tracked(target, changes, key_columns, track_columns, st.data_cols);
	-- truncates cut the batch into segments applied in order
	FOR tr IN SELECT s.pgcdc_seq, s.pgcdc_vf FROM pg_temp._pgcdc_stage s
			   WHERE s.pgcdc_op = 'T' ORDER BY s.pgcdc_seq LOOP
		c := pgcdc._sum(c, pgcdc._scd2_run(target, key_columns, st.data_cols, tracked,
										   st.toast_cols, lo, tr.pgcdc_seq));
		truncated := truncated + pgcdc._scd2_truncate(target, tr.pgcdc_seq, tr.pgcdc_vf);
		lo := tr.pgcdc_seq;
	END LOOP;
	c := pgcdc._sum(c, pgcdc._scd2_run(target, key_columns, st.data_cols, tracked,
									   st.toast_cols, lo, NULL));

	SELECT count(*) INTO total FROM pg_temp._pgcdc_stage s WHERE s.pgcdc_op <> 'T';
	inserted := c[1];
	updated := c[2];
	deleted := c[3] + truncated;		-- versions closed by deletes and truncates
	unchanged := total - c[1] - c[2] - c[3];	-- change rows that opened or closed nothing
	RETURN NEXT;
END
$$;

/* ------------------------------------------------------------------------
 * 5. Mirror apply
 *
 * The target row equals the source row after the last event for its key.
 * An event applies only when it is newer than the row's (_source_lsn,
 * _source_seq), so replays and quarantine replays never move a row back in
 * time; a row without a position (loaded by a snapshot copy) is older than
 * any event.  Delete removes the row, or with soft_delete sets _is_deleted.
 * Truncate empties the target (rows written by events after it stay).
 * ------------------------------------------------------------------------ */

CREATE FUNCTION pgcdc._check_mirror(target regclass, soft_delete boolean)
RETURNS void LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	missing record;
BEGIN
	PERFORM pgcdc._check_table(target, 'target');
	SELECT m.attname, m.atttype INTO missing
	  FROM (VALUES ('_source_lsn', 'pg_lsn'), ('_source_seq', 'integer'),
				   ('_synced_at', 'timestamp with time zone'),
				   ('_is_deleted', CASE WHEN soft_delete THEN 'boolean' END)) m(attname, atttype)
	 WHERE m.atttype IS NOT NULL
	   AND NOT EXISTS (SELECT 1 FROM pgcdc._columns(target) c
						WHERE c.attname = m.attname AND c.atttype = m.atttype)
	 LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'table % is not a mirror target', target
			USING ERRCODE = '42809',
				  DETAIL = format('Column %I of type %s is missing.', missing.attname, missing.atttype),
				  HINT = 'Add the mirror system columns _source_lsn pg_lsn, _source_seq integer, '
						 '_synced_at timestamptz, and _is_deleted boolean for soft delete.';
	END IF;
END
$$;

/*
 * Should apply_mirror keep tombstones for what it hard-deletes from target?
 * Only while the target has open quarantined events (what a replay could
 * bring back), and only for a caller who may read the quarantine and write
 * tombstones (one who cannot replay has nothing to protect).
 */
CREATE FUNCTION pgcdc._keeps_tombstones(target regclass, soft_delete boolean)
RETURNS boolean LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF soft_delete OR NOT has_table_privilege('pgcdc.quarantine', 'SELECT')
	   OR NOT has_table_privilege('pgcdc.mirror_tombstone', 'INSERT, UPDATE') THEN
		RETURN false;
	END IF;
	RETURN EXISTS (SELECT 1 FROM pgcdc.quarantine q
					WHERE q.status = 'open' AND q.target IS NOT NULL
					  AND to_regclass(q.target) = _keeps_tombstones.target);
END
$$;

-- "INSERT INTO pgcdc.mirror_tombstone ... SELECT ... FROM src" for the
-- deleted keys in src (key columns, pgcdc_lsn, pgcdc_lseq): the newer
-- tombstone of a key wins.
CREATE FUNCTION pgcdc._tombstone_sql(target regclass, key_columns text[], src text)
RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT format($f$
		INSERT INTO pgcdc.mirror_tombstone AS x (target, key, source_lsn, source_seq)
		SELECT %L, pg_catalog.jsonb_build_object(%s), d.pgcdc_lsn, d.pgcdc_lseq FROM %s d
		ON CONFLICT (target, key) DO UPDATE
		   SET source_lsn = EXCLUDED.source_lsn, source_seq = EXCLUDED.source_seq
		 WHERE ROW(x.source_lsn, x.source_seq) OPERATOR(pg_catalog.<)
			   ROW(EXCLUDED.source_lsn, EXCLUDED.source_seq)$f$,
		pgcdc._qname(target),
		(SELECT string_agg(format('%L, d.%I', k, k), ', ' ORDER BY o)
		   FROM unnest(key_columns) WITH ORDINALITY u(k, o)),
		src)
$$;

/*
 * Is a quarantined event older than a tombstone of its key (or a truncate)
 * in target?  The event is staged in pg_temp._pgcdc_q.
 */
CREATE FUNCTION pgcdc._under_tombstone(target regclass, key_columns text[])
RETURNS boolean LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	buried boolean;
BEGIN
	EXECUTE format($f$
		SELECT EXISTS (SELECT 1 FROM pg_temp._pgcdc_q c, pgcdc.mirror_tombstone x
						WHERE x.target = $1
						  AND x.key IN ('{}'::jsonb, pg_catalog.jsonb_build_object(%s))
						  AND ROW(x.source_lsn, x.source_seq) OPERATOR(pg_catalog.>)
							  ROW(c._source_lsn, c._source_seq))$f$,
		(SELECT string_agg(format('%L, c.%I', k, k), ', ' ORDER BY o)
		   FROM unnest(key_columns) WITH ORDINALITY u(k, o)))
	INTO buried USING pgcdc._qname(target);
	RETURN buried;
END
$$;

/*
 * The general mirror apply: changes staged by _stage (truncates, unchanged
 * TOAST, key-changing updates), then each key's last event.  apply_mirror
 * has checked the arguments.
 */
CREATE FUNCTION pgcdc._mirror_staged(target regclass, changes regclass, key_columns text[],
									 soft_delete boolean, op_column text)
RETURNS TABLE (inserted bigint, updated bigint, deleted bigint, skipped bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	st record;
	vals text[];
	keys text;
	last_t numeric[];
	tr record;
	total bigint;
	n bigint;
	tomb boolean := pgcdc._keeps_tombstones(target, soft_delete);
	-- the event is newer than the row
	newer text := $f$(t._source_lsn IS NULL
		OR ROW(t._source_lsn, coalesce(t._source_seq, 0))
		   OPERATOR(pg_catalog.<) ROW(m.pgcdc_lsn, m.pgcdc_lseq))$f$;
BEGIN
	st := pgcdc._stage(target, changes, key_columns, '_source_lsn,_source_seq', op_column, NULL);
	vals := ARRAY(SELECT c FROM unnest(st.data_cols) c WHERE c <> ALL (key_columns));
	keys := pgcdc._list(key_columns);
	inserted := 0; updated := 0; deleted := 0;

	-- the last truncate empties what is older than it
	SELECT s.pgcdc_seq, s.pgcdc_lsn, s.pgcdc_lseq INTO tr FROM pg_temp._pgcdc_stage s
	 WHERE s.pgcdc_op = 'T' ORDER BY s.pgcdc_seq DESC LIMIT 1;
	last_t := tr.pgcdc_seq;
	IF last_t IS NOT NULL THEN
		EXECUTE format(CASE WHEN soft_delete
			THEN 'UPDATE %s t SET _is_deleted = true, _source_lsn = $2, _source_seq = $3, '
				 '_synced_at = pg_catalog.now() WHERE %s'
			ELSE 'DELETE FROM %s t WHERE %s' END,
			target, $f$(t._source_lsn IS NULL OR
				ARRAY[t._source_lsn OPERATOR(pg_catalog.-) '0/0'::pg_lsn,
					  coalesce(t._source_seq, 0)]::numeric[] < $1)$f$)
		USING last_t, tr.pgcdc_lsn, tr.pgcdc_lseq;
		GET DIAGNOSTICS n = ROW_COUNT;
		deleted := deleted + n;
		IF tomb THEN
			-- every key older than the truncate is gone
			EXECUTE pgcdc._tombstone_sql(target, '{}',
										 '(SELECT $1::pg_lsn AS pgcdc_lsn, $2::integer AS pgcdc_lseq)')
			USING tr.pgcdc_lsn, tr.pgcdc_lseq;
		END IF;
	END IF;

	-- each key's last event after that
	PERFORM pgcdc._drop_temp('_pgcdc_m');
	EXECUTE format($f$
		CREATE TEMP TABLE _pgcdc_m ON COMMIT DROP AS
		SELECT DISTINCT ON (%1$s) s.* FROM pg_temp._pgcdc_stage s
		 WHERE s.pgcdc_op <> 'T' AND ($1 IS NULL OR s.pgcdc_seq > $1)
		 ORDER BY %1$s, s.pgcdc_seq DESC$f$, keys)
	USING last_t;

	IF soft_delete THEN
		EXECUTE format($f$
			UPDATE %s t SET _is_deleted = true, _source_lsn = m.pgcdc_lsn,
				   _source_seq = m.pgcdc_lseq, _synced_at = pg_catalog.now()
			  FROM pg_temp._pgcdc_m m
			 WHERE m.pgcdc_op = 'D' AND %s AND %s$f$,
			target, pgcdc._key_join('t', 'm', target, key_columns), newer);
	ELSE
		EXECUTE format($f$
			DELETE FROM %s t USING pg_temp._pgcdc_m m
			 WHERE m.pgcdc_op = 'D' AND %s AND %s$f$,
			target, pgcdc._key_join('t', 'm', target, key_columns), newer);
	END IF;
	GET DIAGNOSTICS n = ROW_COUNT;
	deleted := deleted + n;
	skipped := -n;
	IF tomb THEN
		-- every key the batch ends deleted, whether or not the target had it
		EXECUTE pgcdc._tombstone_sql(target, key_columns,
			'(SELECT * FROM pg_temp._pgcdc_m WHERE pgcdc_op OPERATOR(pg_catalog.=) ''D'')');
	END IF;

	EXECUTE format($f$
		UPDATE %s t SET %s _source_lsn = m.pgcdc_lsn, _source_seq = m.pgcdc_lseq,
			   _synced_at = pg_catalog.now() %s
		  FROM pg_temp._pgcdc_m m
		 WHERE m.pgcdc_op IN ('I', 'U') AND %s AND %s$f$,
		target,
		(SELECT coalesce(string_agg(
			CASE WHEN c = ANY (st.toast_cols)
				 THEN format('%I = CASE WHEN %L = ANY (m.pgcdc_ut) THEN t.%I ELSE m.%I END, ',
							 c, c, c, c)
				 ELSE format('%I = m.%I, ', c, c) END, ''), '') FROM unnest(vals) c),
		CASE WHEN soft_delete THEN ', _is_deleted = false' ELSE '' END,
		pgcdc._key_join('t', 'm', target, key_columns), newer);
	GET DIAGNOSTICS updated = ROW_COUNT;

	EXECUTE format($f$
		INSERT INTO %s (%s, _source_lsn, _source_seq, _synced_at)
		SELECT %s, m.pgcdc_lsn, m.pgcdc_lseq, pg_catalog.now()
		  FROM pg_temp._pgcdc_m m
		 WHERE m.pgcdc_op IN ('I', 'U')
		   AND NOT EXISTS (SELECT 1 FROM %s t WHERE %s)$f$,
		target, pgcdc._list(st.data_cols), pgcdc._list(st.data_cols, 'm'),
		target, pgcdc._key_join('t', 'm', target, key_columns));
	GET DIAGNOSTICS inserted = ROW_COUNT;

	-- skipped: a key's last event that was not newer than the row (or
	-- deleted a row that is not there)
	SELECT count(*) INTO total FROM pg_temp._pgcdc_m;
	skipped := skipped + total - inserted - updated;
	RETURN NEXT;
END
$$;

/*
 * Apply a batch of change rows to a mirror target.  Each key ends as its
 * last event left it, unless the row already holds a newer event (the
 * (_source_lsn, _source_seq) guard).  A batch of plain inserts, updates and
 * deletes (the common one) is applied by one prepared statement reading the
 * changes once; truncates, unchanged TOAST and key-changing updates go
 * through _mirror_staged.
 */
CREATE FUNCTION pgcdc.apply_mirror(target regclass, changes regclass, key_columns text[],
								   soft_delete boolean DEFAULT false,
								   op_column text DEFAULT 'op')
RETURNS TABLE (inserted bigint, updated bigint, deleted bigint, skipped bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	plain boolean;
	c bigint[];			-- inserted, updated, deleted, keys in the batch
	tomb boolean;
	shape text;
	stmts text[];		-- prepared: is the batch plain, and the one-statement apply
BEGIN
	IF soft_delete IS NULL THEN
		RAISE EXCEPTION 'soft_delete must not be null' USING ERRCODE = '22004';
	END IF;
	-- A call of the same shape earlier in this session checked the
	-- arguments and prepared the statements.
	tomb := pgcdc._keeps_tombstones(target, soft_delete);
	IF target IS NOT NULL AND changes IS NOT NULL THEN
		shape := pgcdc._shape('{apply_mirror,_mirror_statements,_stage_args,_plain_sql,_tombstone_sql}',
							  target, changes, key_columns::text, soft_delete::text, op_column,
							  tomb::text);
		stmts := pgcdc._cached(shape, 2);
	END IF;
	IF stmts IS NULL THEN
		stmts := pgcdc._mirror_statements(target, changes, key_columns, soft_delete, op_column, tomb);
		IF shape IS NOT NULL THEN
			PERFORM set_config(shape, array_to_string(stmts, ' '), false);
		END IF;
	END IF;

	EXECUTE 'EXECUTE ' || quote_ident(stmts[1]) INTO plain;
	IF NOT plain THEN
		RETURN QUERY SELECT * FROM pgcdc._mirror_staged(target, changes, key_columns,
														 soft_delete, op_column);
		RETURN;
	END IF;
	IF EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a
				 ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
			   WHERE i.indrelid = target AND i.indisvalid AND a.attname = key_columns[1]) THEN
		c := pgcdc._mirror_by_index(stmts[2]);
	ELSE
		EXECUTE 'EXECUTE ' || quote_ident(stmts[2]) INTO c;
	END IF;
	inserted := c[1];
	updated := c[2];
	deleted := c[3];
	skipped := c[4] - c[1] - c[2] - c[3];
	RETURN NEXT;
END
$$;

/*
 * Run apply_mirror's one statement on a target with an index on its key.
 * The statement is planned once, from the first batch's estimates; however
 * small the target was then, each key must be looked up in that index, not
 * found by hashing the whole target: a plan made on a small target would
 * otherwise read all of it on every later batch.
 */
CREATE FUNCTION pgcdc._mirror_by_index(stmt text)
RETURNS bigint[] LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
	counts bigint[];
BEGIN
	EXECUTE 'EXECUTE ' || quote_ident(stmt) INTO counts;
	RETURN counts;
END
$$;

-- apply_mirror's checks, and its two statements, prepared.
CREATE FUNCTION pgcdc._mirror_statements(target regclass, changes regclass, key_columns text[],
										 soft_delete boolean, op_column text, tomb boolean)
RETURNS text[] LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	data_cols text[];
	vals text[];
	-- the event is newer than the row
	newer text := $f$(t._source_lsn IS NULL
		OR ROW(t._source_lsn, coalesce(t._source_seq, 0))
		   OPERATOR(pg_catalog.<) ROW(m.pgcdc_lsn, m.pgcdc_lseq))$f$;
	keyjoin text;
	plain text;
BEGIN
	PERFORM pgcdc._check_mirror(target, soft_delete);
	PERFORM pgcdc._check_table(changes, 'changes', inputs => true);
	IF NOT pgcdc._has_column(changes, '_source_lsn', 'pg_lsn')
	   OR NOT pgcdc._has_column(changes, '_source_seq', 'int4') THEN
		RAISE EXCEPTION 'changes % lacks _source_lsn pg_lsn or _source_seq integer', changes
			USING ERRCODE = '42703';
	END IF;
	-- the key and op columns, as the staged path checks them
	SELECT a.data_cols INTO data_cols
	  FROM pgcdc._stage_args(target, changes, key_columns, '_source_lsn,_source_seq', op_column,
							 NULL) a;

	plain := pgcdc._prepared(pgcdc._plain_sql(changes, op_column, '{_source_lsn,_source_seq}'));

	-- Each key's last event, then every write in one statement: the
	-- sub-statements see the target as it was and touch disjoint rows
	-- (one event per key).
	vals := ARRAY(SELECT c FROM unnest(data_cols) c WHERE c <> ALL (key_columns));
	keyjoin := pgcdc._key_join('t', 'm', target, key_columns);
	RETURN ARRAY[plain, pgcdc._prepared(format($f$
		WITH pgcdc_m AS MATERIALIZED (
			SELECT DISTINCT ON (%1$s) x.* FROM (
				SELECT %2$s, c.%3$I::text AS pgcdc_op, c._source_lsn AS pgcdc_lsn,
					   c._source_seq AS pgcdc_lseq FROM %4$s c) x
			 WHERE %13$s
			 ORDER BY %1$s, x.pgcdc_lsn DESC, x.pgcdc_lseq DESC),
		pgcdc_d AS (%5$s RETURNING 1)%14$s,
		pgcdc_u AS (UPDATE %6$s t SET %7$s _source_lsn = m.pgcdc_lsn, _source_seq = m.pgcdc_lseq,
					 _synced_at = pg_catalog.now() %8$s
				FROM pgcdc_m m WHERE m.pgcdc_op OPERATOR(pg_catalog.<>) 'D' AND %9$s AND %10$s
			  RETURNING 1),
		pgcdc_i AS (INSERT INTO %6$s (%11$s, _source_lsn, _source_seq, _synced_at)
			  SELECT %12$s, m.pgcdc_lsn, m.pgcdc_lseq, pg_catalog.now() FROM pgcdc_m m
			   WHERE m.pgcdc_op OPERATOR(pg_catalog.<>) 'D'
				 AND NOT EXISTS (SELECT 1 FROM %6$s t WHERE %9$s)
			  RETURNING 1)
		SELECT ARRAY[(SELECT pg_catalog.count(*) FROM pgcdc_i), (SELECT pg_catalog.count(*) FROM pgcdc_u),
					 (SELECT pg_catalog.count(*) FROM pgcdc_d), (SELECT pg_catalog.count(*) FROM pgcdc_m)]$f$,
		pgcdc._list(key_columns, 'x'),
		pgcdc._cast_list(target, changes, data_cols, 'c'),
		op_column, pgcdc._qname(changes),
		format(CASE WHEN soft_delete
			THEN 'UPDATE %1$s t SET _is_deleted = true, _source_lsn = m.pgcdc_lsn, '
				 '_source_seq = m.pgcdc_lseq, _synced_at = pg_catalog.now() '
				 'FROM pgcdc_m m WHERE m.pgcdc_op OPERATOR(pg_catalog.=) ''D'' AND %2$s AND %3$s'
			ELSE 'DELETE FROM %1$s t USING pgcdc_m m '
				 'WHERE m.pgcdc_op OPERATOR(pg_catalog.=) ''D'' AND %2$s AND %3$s' END,
			pgcdc._qname(target), keyjoin, newer),
		pgcdc._qname(target),
		(SELECT coalesce(string_agg(format('%I = m.%I, ', c, c), ''), '') FROM unnest(vals) c),
		CASE WHEN soft_delete THEN ', _is_deleted = false' ELSE '' END,
		keyjoin, newer,
		pgcdc._list(data_cols), pgcdc._list(data_cols, 'm'),
		-- a null key fails the batch before anything is written
		format('(%s) OR pgcdc._fail(''23502'', %L, %L) IS NULL',
			   (SELECT string_agg(format('x.%I IS NOT NULL', k), ' AND ') FROM unnest(key_columns) k),
			   format('null key in changes %s', changes),
			   format('Key columns: %s.', array_to_string(key_columns, ', '))),
		-- while older events are quarantined: a tombstone for every key the
		-- batch ends deleted, whether or not the target had it
		CASE WHEN tomb THEN format(', pgcdc_t AS (%s)', pgcdc._tombstone_sql(target, key_columns,
				'(SELECT * FROM pgcdc_m WHERE pgcdc_op OPERATOR(pg_catalog.=) ''D'')'))
			 ELSE '' END))];
END
$$;

/* ------------------------------------------------------------------------
 * 6. Rules and quarantine
 *
 * A quarantined event is kept in the decoder's event format (SPEC section
 * 1: op, commit_lsn, seq, ts, schema, table, key, new, old,
 * unchanged_toast), so that quarantine_replay can stage it again exactly as
 * the consumer would.
 * ------------------------------------------------------------------------ */

CREATE FUNCTION pgcdc.quarantine_event(pipeline text, source_table text, target text,
									   event jsonb, error_code text, error_message text,
									   error_detail text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	result bigint;
BEGIN
	IF event IS NULL OR jsonb_typeof(event) <> 'object' THEN
		RAISE EXCEPTION 'event must be a JSON object' USING ERRCODE = '22023';
	END IF;
	IF error_code IS NULL OR error_code !~ '^[0-9A-Z]{5}$' THEN
		RAISE EXCEPTION 'error_code must be a SQLSTATE, not %', coalesce(error_code, 'null')
			USING ERRCODE = '22023';
	END IF;
	INSERT INTO pgcdc.quarantine (pipeline, source_table, target, commit_lsn, seq, op, event,
								  error_code, error_message, error_detail)
	VALUES (pipeline,
			coalesce(source_table, format('%I.%I', event->>'schema', event->>'table')),
			target, (event->>'commit_lsn')::pg_lsn, (event->>'seq')::integer, event->>'op',
			event, error_code, coalesce(error_message, ''), error_detail)
	RETURNING id INTO result;
	RETURN result;
END
$$;

-- The staged change row (as jsonb) in the decoder's event format.
CREATE FUNCTION pgcdc._event_of(r jsonb, op_column text, source_table text)
RETURNS jsonb LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT jsonb_strip_nulls(jsonb_build_object(
		'op', r->op_column,
		'commit_lsn', r->'_source_lsn',
		'seq', r->'_source_seq',
		'ts', r->'_commit_ts',
		'schema', (parse_ident(source_table))[1],
		'table', (parse_ident(source_table))[2],
		'unchanged_toast', r->'unchanged_toast'))
		-- pgcdc_ columns are a stager's own (never data: the prefix is reserved)
		|| jsonb_build_object('new', coalesce(
			(SELECT jsonb_object_agg(e.key, e.value)
			   FROM jsonb_each(r - ARRAY[op_column, '_source_lsn', '_source_seq',
										 '_commit_ts', 'unchanged_toast', '_old_key']) e
			  WHERE e.key NOT LIKE 'pgcdc\_%'), '{}'))
$$;

/*
 * pgcdc.apply_rules: move the I/U rows of a staging table that fail one of
 * the rules of (pipeline, source_table) into the quarantine, SQLSTATE 23514;
 * returns how many.  A rule passes when its expression is true or null, as
 * a CHECK constraint does.
 */
CREATE FUNCTION pgcdc._apply_rules(caller_schema text, pipeline text, source_table text,
								   changes regclass, target text, op_column text)
RETURNS bigint LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	src text;
	tgt text;
	r pgcdc.rule;
	n bigint;
	total bigint := 0;
BEGIN
	PERFORM pgcdc._pipeline_must_exist(pipeline);
	src := pgcdc._qualify(source_table, caller_schema, 'source_table');
	tgt := CASE WHEN target IS NULL THEN NULL
				ELSE pgcdc._qualify(target, caller_schema, 'target') END;
	PERFORM pgcdc._check_table(changes, 'changes');
	IF op_column IS NULL OR NOT EXISTS (SELECT 1 FROM pgcdc._columns(changes) c
										 WHERE c.attname = op_column) THEN
		RAISE EXCEPTION 'op column "%" does not exist in %', op_column, changes
			USING ERRCODE = '42703';
	END IF;
	FOR r IN SELECT * FROM pgcdc.rule x
			  WHERE x.pipeline = _apply_rules.pipeline AND x.source_table = src
			  ORDER BY x.name LOOP
		EXECUTE format($f$
			WITH bad AS (
				DELETE FROM %1$s c WHERE c.%2$I IN ('I', 'U') AND NOT coalesce(%3$s, true)
				RETURNING pg_catalog.to_jsonb(c) AS row
			)
			INSERT INTO pgcdc.quarantine (pipeline, source_table, target, commit_lsn, seq, op,
										  event, error_code, error_message, error_detail)
			SELECT $1, $2, $3, (b.row->>'_source_lsn')::pg_lsn, (b.row->>'_source_seq')::integer,
				   b.row->>%4$L, pgcdc._event_of(b.row, %4$L, $2), '23514',
				   pg_catalog.format('row violates rule "%%s" of %%s', $4, $2),
				   pg_catalog.format('Failing check: %%s.', $5)
			  FROM bad b$f$,
			changes, op_column, pgcdc._paren(r.check_expr), op_column)
		USING pipeline, src, tgt, r.name, r.check_expr;
		GET DIAGNOSTICS n = ROW_COUNT;
		total := total + n;
	END LOOP;
	RETURN total;
END
$$;

CREATE FUNCTION pgcdc.apply_rules(pipeline text, source_table text, changes regclass,
								  target text DEFAULT NULL, op_column text DEFAULT 'op')
RETURNS bigint LANGUAGE sql
AS $$
	SELECT pgcdc._apply_rules(pg_catalog.current_schema(), $1, $2, $3, $4, $5)
$$;

-- Stage one quarantined event into pg_temp._pgcdc_q, shaped like the
-- consumer's staging table for target, and check the rules again.
CREATE FUNCTION pgcdc._stage_event(q pgcdc.quarantine, target regclass)
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r pgcdc.rule;
	bad boolean;
	cols text[] := ARRAY(SELECT c.attname FROM pgcdc._columns(target) c
						  WHERE c.attname NOT IN (SELECT attname FROM pgcdc._scd2_system_columns())
							AND c.attname NOT IN ('_synced_at', '_is_deleted'));
BEGIN
	PERFORM pgcdc._drop_temp('_pgcdc_q');
	EXECUTE format($f$
		CREATE TEMP TABLE _pgcdc_q ON COMMIT DROP AS
		SELECT $1->>'op' AS op, ($1->>'commit_lsn')::pg_lsn AS _source_lsn,
			   ($1->>'seq')::integer AS _source_seq, ($1->>'ts')::timestamptz AS _commit_ts,
			   %s,
			   ARRAY(SELECT pg_catalog.jsonb_array_elements_text(
						 coalesce($1->'unchanged_toast', '[]'))) AS unchanged_toast,
			   CASE WHEN $1->>'op' = 'U' THEN $1->'key' END AS _old_key
		  FROM pg_catalog.jsonb_populate_record(NULL::%s,
				   coalesce($1->'new', $1->'old', $1->'key', '{}')) r$f$,
		pgcdc._list(cols, 'r'), target)
	USING q.event;
	FOR r IN SELECT * FROM pgcdc.rule x
			  WHERE x.pipeline = q.pipeline AND x.source_table = q.source_table
			  ORDER BY x.name LOOP
		EXECUTE format('SELECT NOT coalesce(%s, true) FROM pg_temp._pgcdc_q c '
					   'WHERE c.op IN (''I'', ''U'')', pgcdc._paren(r.check_expr)) INTO bad;
		IF bad THEN
			RAISE EXCEPTION 'row violates rule "%" of %', r.name, q.source_table
				USING ERRCODE = '23514', DETAIL = format('Failing check: %s.', r.check_expr);
		END IF;
	END LOOP;
END
$$;

-- Apply one quarantined event to every target its table maps name.
-- A target's key: its primary key or replica identity index, else (history
-- tables) the columns of its first unique index.
CREATE FUNCTION pgcdc._target_key(rel regclass)
RETURNS text[] LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(pgcdc._key_of(rel),
		   (SELECT array_agg(a.attname::text ORDER BY k.o)
			  FROM (SELECT i.indkey, i.indnkeyatts
					  FROM pg_index i
					 WHERE i.indrelid = rel AND i.indisunique
					 ORDER BY i.indexrelid LIMIT 1) i
			 CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, o)
			  JOIN pg_attribute a ON a.attrelid = rel AND a.attnum = k.attnum
			 WHERE k.o <= i.indnkeyatts))
$$;

CREATE FUNCTION pgcdc._replay_one(q pgcdc.quarantine)
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m pgcdc.table_map;
	keys text[];
	found_map boolean := false;
BEGIN
	FOR m IN SELECT * FROM pgcdc.table_map x
			  WHERE x.pipeline = q.pipeline AND x.source_table = q.source_table
				AND (q.target IS NULL OR x.target = q.target) LOOP
		found_map := true;
		IF to_regclass(m.target) IS NULL THEN
			RAISE EXCEPTION 'target % of quarantined event % does not exist', m.target, q.id
				USING ERRCODE = '42P01';
		END IF;
		IF m.mode = 'append' THEN
			EXECUTE format($f$
				INSERT INTO %s (_op, _source_lsn, _source_seq, _xid, _commit_ts, _key, _new, _old,
								_received_at)
				SELECT $1->>'op', ($1->>'commit_lsn')::pg_lsn, ($1->>'seq')::integer,
					   ($1->>'xid')::bigint, ($1->>'ts')::timestamptz, $1->'key', $1->'new',
					   $1->'old', pg_catalog.now()
				 WHERE NOT EXISTS (SELECT 1 FROM %s t
									WHERE t._source_lsn = ($1->>'commit_lsn')::pg_lsn
									  AND t._source_seq = ($1->>'seq')::integer)$f$,
				m.target, m.target)
			USING q.event;
			CONTINUE;
		END IF;
		PERFORM pgcdc._stage_event(q, m.target::regclass);
		-- the map's key, else the event's, else the target's own unique key
		-- (events quarantined by a rule carry no key object)
		keys := coalesce(m.key_columns,
						 NULLIF(ARRAY(SELECT jsonb_object_keys(q.event->'key')), '{}'),
						 pgcdc._target_key(m.target::regclass));
		IF cardinality(keys) = 0 THEN
			RAISE EXCEPTION 'no key columns for % in pipeline "%"', m.target, q.pipeline
				USING ERRCODE = '22023', HINT = 'Set key_columns in the table map.';
		END IF;
		IF m.mode = 'mirror' THEN
			-- a row deleted after the event stays deleted
			IF m.soft_delete OR NOT pgcdc._under_tombstone(m.target::regclass, keys) THEN
				PERFORM pgcdc.apply_mirror(m.target::regclass, 'pg_temp._pgcdc_q', keys,
										   m.soft_delete);
			END IF;
		ELSE
			PERFORM pgcdc.scd2_apply_changes(m.target::regclass, 'pg_temp._pgcdc_q', keys,
											 '_source_lsn,_source_seq', 'op', m.track_columns,
											 '_commit_ts');
		END IF;
	END LOOP;
	IF NOT found_map THEN
		RAISE EXCEPTION 'pipeline "%" has no table map for % of quarantined event %',
			q.pipeline, coalesce(q.target, q.source_table), q.id USING ERRCODE = '42704';
	END IF;
END
$$;

CREATE FUNCTION pgcdc._quarantine_row(id bigint)
RETURNS pgcdc.quarantine LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	q pgcdc.quarantine;
BEGIN
	SELECT * INTO q FROM pgcdc.quarantine x WHERE x.id = _quarantine_row.id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'quarantined event % does not exist', id USING ERRCODE = '42704';
	ELSIF q.status <> 'open' THEN
		RAISE EXCEPTION 'quarantined event % is already %', id, q.status USING ERRCODE = '55000';
	END IF;
	RETURN q;
END
$$;

/*
 * Re-apply open quarantined events (one, or those of a pipeline, or all) in
 * source order, each in its own subtransaction through the same guarded
 * apply as the consumer: an event older than what the target holds changes
 * nothing.  A failure records the new error and counts an attempt.
 */
-- Tombstones of targets without open quarantined events protect nothing.
CREATE FUNCTION pgcdc._purge_tombstones()
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF has_table_privilege('pgcdc.mirror_tombstone', 'DELETE') THEN
		DELETE FROM pgcdc.mirror_tombstone x
		 WHERE NOT EXISTS (SELECT 1 FROM pgcdc.quarantine q
							WHERE q.status = 'open' AND q.target IS NOT NULL
							  AND to_regclass(q.target) = to_regclass(x.target));
	END IF;
END
$$;

CREATE FUNCTION pgcdc.quarantine_replay(id bigint DEFAULT NULL, pipeline text DEFAULT NULL)
RETURNS TABLE (applied bigint, failed bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	q pgcdc.quarantine;
	code text;
	msg text;
	detail text;
BEGIN
	applied := 0; failed := 0;
	IF id IS NOT NULL THEN
		q := pgcdc._quarantine_row(id);
		IF pipeline IS NOT NULL AND q.pipeline IS DISTINCT FROM pipeline THEN
			RAISE EXCEPTION 'quarantined event % is not from pipeline "%"', id, pipeline
				USING ERRCODE = '22023';
		END IF;
	ELSIF pipeline IS NOT NULL THEN
		PERFORM pgcdc._pipeline_must_exist(pipeline);
	END IF;
	FOR q IN SELECT * FROM pgcdc.quarantine x
			  WHERE x.status = 'open'
				AND (quarantine_replay.id IS NULL OR x.id = quarantine_replay.id)
				AND (quarantine_replay.pipeline IS NULL OR x.pipeline = quarantine_replay.pipeline)
			  ORDER BY x.commit_lsn, x.seq, x.id
			  FOR UPDATE LOOP
		BEGIN
			PERFORM pgcdc._replay_one(q);
			UPDATE pgcdc.quarantine x
			   SET status = 'replayed', resolved_at = now(), attempts = x.attempts + 1
			 WHERE x.id = q.id;
			applied := applied + 1;
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
									detail = PG_EXCEPTION_DETAIL;
			UPDATE pgcdc.quarantine x
			   SET attempts = x.attempts + 1, error_code = code, error_message = msg,
				   error_detail = nullif(detail, '')
			 WHERE x.id = q.id;
			failed := failed + 1;
		END;
	END LOOP;
	PERFORM pgcdc._purge_tombstones();
	RETURN NEXT;
END
$$;

CREATE FUNCTION pgcdc.quarantine_discard(id bigint, note text)
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF id IS NULL THEN
		RAISE EXCEPTION 'id must not be null' USING ERRCODE = '22004';
	END IF;
	PERFORM pgcdc._quarantine_row(id);
	UPDATE pgcdc.quarantine x
	   SET status = 'discarded', resolved_at = now(), note = quarantine_discard.note
	 WHERE x.id = quarantine_discard.id;
	PERFORM pgcdc._purge_tombstones();
END
$$;

/* ------------------------------------------------------------------------
 * 7. Privileges
 *
 * The control tables belong to the extension's owner and are not writable
 * by PUBLIC (nor readable: slot names, options and quarantined rows are
 * not everyone's business).  Functions run with the caller's rights
 * (SECURITY INVOKER), so a caller needs the privileges on the control
 * tables and targets that the function touches; README lists them.
 * ------------------------------------------------------------------------ */

REVOKE ALL ON pgcdc.pipeline, pgcdc.table_map, pgcdc.checkpoint, pgcdc.batch,
	pgcdc.quarantine, pgcdc.rule, pgcdc.mirror_tombstone, pgcdc.status FROM PUBLIC;
-- The SCD2 and mirror functions work on the caller's own tables with the
-- caller's rights: anyone may call them.
GRANT USAGE ON SCHEMA pgcdc TO PUBLIC;
