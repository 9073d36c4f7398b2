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
DECLARE
	origin text := 'pgcdc_' || name;	-- the consumer's replication origin
BEGIN
	PERFORM pgcdc._pipeline_must_exist(name);
	-- table maps, rules, checkpoint and batch log go with it (ON DELETE CASCADE);
	-- quarantined events stay until discarded.
	DELETE FROM pgcdc.pipeline p WHERE p.name = drop_pipeline.name;
	-- So does the origin, for a caller who may manage origins: each keeps a
	-- replication state slot (max_replication_slots of them) until dropped.
	-- (nested: AND may evaluate its operands in any order)
	IF has_function_privilege('pg_catalog.pg_replication_origin_oid(text)', 'EXECUTE')
	   AND has_function_privilege('pg_catalog.pg_replication_origin_drop(text)', 'EXECUTE') THEN
		IF pg_replication_origin_oid(origin) IS NOT NULL THEN
			BEGIN
				PERFORM pg_replication_origin_drop(origin);
			EXCEPTION WHEN object_in_use THEN
				RAISE WARNING 'replication origin "%" of pipeline "%" is in use: it was not dropped', origin, name
					USING DETAIL = 'A consumer of the pipeline is still running.',
						  HINT = format('Stop it, then run SELECT pg_replication_origin_drop(%L);', origin);
			END;
		END IF;
	END IF;
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
	named text[];
BEGIN
	PERFORM pgcdc._pipeline_must_exist(pipeline);
	src := pgcdc._qualify(source_table, caller_schema, 'source_table');
	tgt := CASE WHEN target IS NULL THEN src
				ELSE pgcdc._qualify(target, caller_schema, 'target') END;
	IF mode IS NULL THEN
		RAISE EXCEPTION 'mode must not be null' USING ERRCODE = '22004';
	ELSIF mode NOT IN ('mirror', 'scd2', 'append') THEN
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
	-- the targets' system columns are the consumer's to write
	named := ARRAY(SELECT c FROM unnest(coalesce(key_columns, '{}') || coalesce(track_columns, '{}')) c
					WHERE c = ANY (ARRAY['_source_lsn', '_source_seq', '_synced_at', '_is_deleted', '_op',
										 '_xid', '_commit_ts', '_key', '_new', '_old', '_received_at'])
					   OR c IN (SELECT s.attname FROM pgcdc._scd2_system_columns() s));
	IF named <> '{}' THEN
		RAISE EXCEPTION 'key_columns and track_columns must not name system columns of a target'
			USING ERRCODE = '22023', DETAIL = format('Named: %s.', array_to_string(named, ', '));
	END IF;
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

CREATE FUNCTION pgcdc._rename_source_table(caller_schema text, pipeline text, source_table text,
										   new_source_table text)
RETURNS integer LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	src text;
	dst text;
	n integer;
	t record;
BEGIN
	PERFORM pgcdc._pipeline_must_exist(pipeline);
	src := pgcdc._qualify(source_table, caller_schema, 'source_table');
	dst := pgcdc._qualify(new_source_table, caller_schema, 'new_source_table');
	IF EXISTS (SELECT FROM pgcdc.table_map m
				WHERE m.pipeline = _rename_source_table.pipeline AND m.source_table = dst
				  AND src <> dst) THEN
		RAISE EXCEPTION 'pipeline "%" already maps %', pipeline, dst
			USING ERRCODE = '42710',
				  HINT = 'Remove the maps of one of the two names first.';
	END IF;
	-- the targets the consumer made name their source in their comment
	-- (CREATED_MARK in consumer/target.c)
	FOR t IN SELECT c.rel, obj_description(c.rel, 'pg_class') AS note
			   FROM pgcdc.table_map m, LATERAL (SELECT to_regclass(m.target) AS rel) c
			  WHERE m.pipeline = _rename_source_table.pipeline AND m.source_table = src
				AND starts_with(obj_description(c.rel, 'pg_class'), src || ': created by pgcdc_consumer') LOOP
		EXECUTE format('COMMENT ON TABLE %s IS %L', t.rel, dst || substr(t.note, length(src) + 1));
	END LOOP;
	UPDATE pgcdc.table_map m
	   SET source_table = dst, source_schema = (parse_ident(dst))[1], source_name = (parse_ident(dst))[2]
	 WHERE m.pipeline = _rename_source_table.pipeline AND m.source_table = src;
	GET DIAGNOSTICS n = ROW_COUNT;
	IF n = 0 THEN
		RAISE EXCEPTION 'pipeline "%" has no table map for %', pipeline, src
			USING ERRCODE = '42704';
	END IF;
	UPDATE pgcdc.rule r SET source_table = dst
	 WHERE r.pipeline = _rename_source_table.pipeline AND r.source_table = src;
	UPDATE pgcdc.quarantine q SET source_table = dst
	 WHERE q.pipeline = _rename_source_table.pipeline AND q.source_table = src;
	RETURN n;
END
$$;

-- A source table renamed (or moved to another schema) at the source: its
-- maps, rules and quarantined events follow it, and so do the comments of
-- targets the consumer made; returns how many maps.
CREATE FUNCTION pgcdc.rename_source_table(pipeline text, source_table text, new_source_table text)
RETURNS integer LANGUAGE sql
AS $$
	SELECT pgcdc._rename_source_table(pg_catalog.current_schema(), $1, $2, $3)
$$;

-- Check a rule expression: one expression (C parser check, nothing runs),
-- and, for every local table it will be evaluated against, boolean and made
-- of that table's columns.  LIMIT 0: planned, never executed.
CREATE FUNCTION pgcdc._parse_rule_expr(check_expr text)
RETURNS void LANGUAGE c STRICT
SET search_path = pg_catalog, pg_temp
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
		-- where apply_rules puts it: boolean, one row at a time (no aggregate)
		EXECUTE format('SELECT 1 FROM %s WHERE %s LIMIT 0', rel, pgcdc._paren(check_expr));
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
