/* ------------------------------------------------------------------------
 * 6. Rules and quarantine
 *
 * A quarantined event is kept in the decoder's event format (SPEC section
 * 1: op, commit_lsn, seq, ts, schema, table, key, new, old,
 * unchanged_toast), so that quarantine_replay can stage it again exactly as
 * the consumer would.
 * ------------------------------------------------------------------------ */

CREATE FUNCTION pgcdc._quarantine_event(caller_schema text, pipeline text, source_table text,
										target text, event jsonb, error_code text,
										error_message text, error_detail text)
RETURNS bigint LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	result bigint;
BEGIN
	-- replay finds the event's table map by pipeline and target: they must name one
	PERFORM pgcdc._pipeline_must_exist(pipeline);
	IF event IS NULL OR jsonb_typeof(event) <> 'object' THEN
		RAISE EXCEPTION 'event must be a JSON object' USING ERRCODE = '22023';
	END IF;
	IF error_code IS NULL OR error_code !~ '^[0-9A-Z]{5}$' THEN
		RAISE EXCEPTION 'error_code must be a SQLSTATE, not %', coalesce(error_code, 'null')
			USING ERRCODE = '22023';
	END IF;
	-- names as table_map holds them (schema-qualified, quoted where needed)
	source_table := CASE WHEN source_table IS NULL
						 THEN format('%I.%I', event->>'schema', event->>'table')
						 ELSE pgcdc._qualify(source_table, caller_schema, 'source_table') END;
	target := CASE WHEN target IS NOT NULL THEN pgcdc._qualify(target, caller_schema, 'target') END;
	INSERT INTO pgcdc.quarantine (pipeline, source_table, target, commit_lsn, seq, op, event,
								  error_code, error_message, error_detail)
	VALUES (pipeline, source_table, target, (event->>'commit_lsn')::pg_lsn, (event->>'seq')::integer,
			event->>'op', event, error_code, coalesce(error_message, ''), error_detail)
	RETURNING id INTO result;
	RETURN result;
END
$$;

CREATE FUNCTION pgcdc.quarantine_event(pipeline text, source_table text, target text,
									   event jsonb, error_code text, error_message text,
									   error_detail text DEFAULT NULL)
RETURNS bigint LANGUAGE sql
AS $$
	SELECT pgcdc._quarantine_event(pg_catalog.current_schema(), $1, $2, $3, $4, $5, $6, $7)
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
	RETURN pgcdc._quarantine_failing(pipeline, src, tgt, changes, format('c.%I IN (''I'', ''U'')', op_column),
									 NULL, NULL, format('pgcdc._event_of(pg_catalog.to_jsonb(c), %L, $2)', op_column));
END
$$;

CREATE FUNCTION pgcdc.apply_rules(pipeline text, source_table text, changes regclass,
								  target text DEFAULT NULL, op_column text DEFAULT 'op')
RETURNS bigint LANGUAGE sql
AS $$
	SELECT pgcdc._apply_rules(pg_catalog.current_schema(), $1, $2, $3, $4, $5)
$$;

/*
 * A record column definition list (for jsonb_to_record) from an event's
 * "types" object: each column as its type, when that type exists here (a
 * typmod is dropped; a rule compares values, not their storage), else text.
 */
CREATE FUNCTION pgcdc._record_columns(types jsonb)
RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(string_agg(format('%I %s', t.key, coalesce(to_regtype(t.value)::text, 'text')), ', '
							   ORDER BY t.key), '')
	  FROM jsonb_each_text(CASE WHEN jsonb_typeof(types) = 'object' THEN types ELSE '{}' END) t
$$;

-- "NOT coalesce(rule, true)": over the columns of the row at hand, or (cols
-- given) over the JSON object ev (an expression of the caller's query)
-- typed by cols (_record_columns)
CREATE FUNCTION pgcdc._rule_fails_sql(check_expr text, ev text, cols text)
RETURNS text LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN cols IS NULL THEN format('NOT coalesce(%s, true)', pgcdc._paren(check_expr))
				ELSE format('NOT coalesce((SELECT %s FROM pg_catalog.jsonb_to_record(%s) AS r(%s)), true)',
							pgcdc._paren(check_expr), ev, cols) END
$$;

/*
 * The rows c of staged that match checked and fail a rule of (pipeline,
 * source_table), rule by rule, moved to the quarantine (23514) as the
 * event event_expr makes of each; returns how many.  The rule is over c's
 * columns, or (cols given) over the JSON object row_json typed by cols
 * (_rule_fails_sql).  checked and event_expr may use $1 pipeline,
 * $2 source_table, $6 snapshot_lsn, $7 snapshot_ts, $8 types, $9 lo, $10 hi.
 */
CREATE FUNCTION pgcdc._quarantine_failing(pipeline text, source_table text, target text, staged regclass,
										  checked text, row_json text, cols text, event_expr text,
										  snapshot_lsn pg_lsn DEFAULT NULL, snapshot_ts timestamptz DEFAULT NULL,
										  types jsonb DEFAULT NULL, lo bigint DEFAULT NULL, hi bigint DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r pgcdc.rule;
	n bigint;
	total bigint := 0;
BEGIN
	FOR r IN SELECT * FROM pgcdc.rule x
			  WHERE x.pipeline = _quarantine_failing.pipeline AND x.source_table = _quarantine_failing.source_table
			  ORDER BY x.name LOOP
		EXECUTE format($f$
			WITH bad AS (
				DELETE FROM %1$s c WHERE %2$s AND %3$s
				RETURNING %4$s AS e
			)
			INSERT INTO pgcdc.quarantine (pipeline, source_table, target, commit_lsn, seq, op,
										  event, error_code, error_message, error_detail)
			SELECT $1, $2, $3, (b.e->>'commit_lsn')::pg_lsn, (b.e->>'seq')::integer, b.e->>'op',
				   b.e, '23514', pg_catalog.format('row violates rule "%%s" of %%s', $4, $2),
				   pg_catalog.format('Failing check: %%s.', $5)
			  FROM bad b$f$,
			staged, checked, pgcdc._rule_fails_sql(r.check_expr, row_json, cols), event_expr)
		USING pipeline, source_table, target, r.name, r.check_expr, snapshot_lsn, snapshot_ts, types, lo, hi;
		GET DIAGNOSTICS n = ROW_COUNT;
		total := total + n;
	END LOOP;
	RETURN total;
END
$$;

/*
 * The rules for an append map, whose staged events are JSON, not typed
 * rows: the consumer's pg_temp.pgcdc_events_N (op, raw: the event) or, for
 * its initial copy, pg_temp.pgcdc_snapshot_json (pgcdc_ord, pgcdc_row: the
 * row; snapshot_lsn and snapshot_ts given).  Columns are typed by types
 * ({"col": "type"}, the source's), and the quarantined event keeps them
 * (its "types" key), so that a replay checks the rules the same way.
 * Failing rows (of pgcdc_ord lo..hi, if given) are moved to the
 * quarantine (23514); returns how many.
 */
CREATE FUNCTION pgcdc._apply_rules_json(pipeline text, source_table text, staged regclass,
										target text, types jsonb, snapshot_lsn pg_lsn DEFAULT NULL,
										snapshot_ts timestamptz DEFAULT NULL, lo bigint DEFAULT NULL,
										hi bigint DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cols text := pgcdc._record_columns(types);
	-- the event each staged row is, and which rows are checked
	ev text := CASE WHEN snapshot_lsn IS NULL THEN $e$(c.raw::jsonb OPERATOR(pg_catalog.||)
		CASE WHEN c.raw::jsonb OPERATOR(pg_catalog.?) 'types' THEN '{}'
			 ELSE pg_catalog.jsonb_build_object('types', $8) END)$e$
		ELSE $e$pg_catalog.jsonb_build_object('op', 'I', 'commit_lsn', $6, 'seq', c.pgcdc_ord, 'ts', $7,
			'schema', (pg_catalog.parse_ident($2))[1], 'table', (pg_catalog.parse_ident($2))[2],
			'new', c.pgcdc_row, 'types', $8)$e$ END;
	new_row text := CASE WHEN snapshot_lsn IS NULL THEN $n$(c.raw::jsonb OPERATOR(pg_catalog.->) 'new')$n$
						 ELSE 'c.pgcdc_row' END;
	-- (lo..hi: the rows pgcdc_ord numbers so, when a failure is being isolated)
	checked text := CASE WHEN snapshot_lsn IS NULL THEN $w$c.op IN ('I', 'U')$w$ ELSE 'true' END
					|| CASE WHEN lo IS NOT NULL THEN ' AND c.pgcdc_ord BETWEEN $9 AND $10' ELSE '' END;
BEGIN
	IF cols = '' THEN
		RETURN 0;
	END IF;
	RETURN pgcdc._quarantine_failing(pipeline, source_table, target, staged, checked, new_row, cols, ev,
									 snapshot_lsn, snapshot_ts, types, lo, hi);
END
$$;

-- The first rule of (pipeline, source_table) that an I or U row of "FROM
-- source" fails, raised (23514).  The rows' columns are there as they are,
-- or (cols given) the JSON object row typed by cols (_record_columns); $1 in
-- source is ids.
CREATE FUNCTION pgcdc._raise_failed_rule(pipeline text, source_table text, source text, row_json text,
										 cols text, ids bigint[])
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r pgcdc.rule;
	bad boolean;
BEGIN
	FOR r IN SELECT * FROM pgcdc.rule x
			  WHERE x.pipeline = _raise_failed_rule.pipeline AND x.source_table = _raise_failed_rule.source_table
			  ORDER BY x.name LOOP
		EXECUTE format('SELECT pg_catalog.bool_or(%s) FROM %s AND c.op IN (''I'', ''U'')',
					   pgcdc._rule_fails_sql(r.check_expr, row_json, cols),
					   source)
		USING ids INTO bad;
		IF bad THEN
			RAISE EXCEPTION 'row violates rule "%" of %', r.name, source_table
				USING ERRCODE = '23514', DETAIL = format('Failing check: %s.', r.check_expr);
		END IF;
	END LOOP;
END
$$;

-- Stage quarantined events (ids) into pg_temp._pgcdc_q, shaped like the
-- consumer's staging table for target, and check the rules again.
CREATE FUNCTION pgcdc._stage_events(ids bigint[], pipeline text, source_table text, target regclass)
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	work text;
	cols text[] := ARRAY(SELECT c.attname FROM pgcdc._columns(target) c
						  WHERE c.attname NOT IN (SELECT attname FROM pgcdc._scd2_system_columns())
							AND c.attname NOT IN ('_synced_at', '_is_deleted'));
BEGIN
	work := format($f$
		SELECT x.event->>'op' AS op, (x.event->>'commit_lsn')::pg_lsn AS _source_lsn,
			   (x.event->>'seq')::integer AS _source_seq, (x.event->>'ts')::timestamptz AS _commit_ts,
			   %s,
			   ARRAY(SELECT pg_catalog.jsonb_array_elements_text(
						 coalesce(x.event->'unchanged_toast', '[]'))) AS unchanged_toast,
			   CASE WHEN x.event->>'op' = 'U' THEN x.event->'key' END AS _old_key
		  FROM pgcdc.quarantine x,
			   LATERAL pg_catalog.jsonb_populate_record(NULL::%s,
				   coalesce(x.event->'new', x.event->'old', x.event->'key', '{}')) r
		 WHERE x.id = ANY ($1)$f$,
		pgcdc._list(cols, 'r'), target);
	PERFORM pgcdc._fill('_pgcdc_q', work, 'bigint[]', format('%L', ids));
	PERFORM pgcdc._raise_failed_rule(pipeline, source_table, 'pg_temp._pgcdc_q c WHERE true', NULL, NULL, ids);
END
$$;

-- The rules of (pipeline, source_table) over quarantined events ids of an
-- append map: an error (23514) if one fails.
CREATE FUNCTION pgcdc._check_rules_json(ids bigint[], pipeline text, source_table text)
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cols text;
BEGIN
	IF NOT EXISTS (SELECT FROM pgcdc.rule x
					WHERE x.pipeline = _check_rules_json.pipeline
					  AND x.source_table = _check_rules_json.source_table) THEN
		RETURN;
	END IF;
	-- every column an event names, typed as one of them says (else text)
	cols := pgcdc._record_columns((
		SELECT jsonb_object_agg(t.key, t.type)
		  FROM (SELECT DISTINCT ON (c.key) c.key, coalesce(x.event->'types'->c.key, '"text"') AS type
				  FROM pgcdc.quarantine x, jsonb_each(coalesce(x.event->'new', '{}')) c
				 WHERE x.id = ANY (ids)
				 ORDER BY c.key, x.event->'types'->c.key IS NULL) t));
	IF cols = '' THEN
		RETURN;
	END IF;
	PERFORM pgcdc._raise_failed_rule(pipeline, source_table, 'pgcdc.quarantine c WHERE c.id = ANY ($1)',
									 $e$(c.event OPERATOR(pg_catalog.->) 'new')$e$, cols, ids);
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

CREATE FUNCTION pgcdc._replay_many(ids bigint[], pipeline text, source_table text, target text)
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m pgcdc.table_map;
	keys text[];
	found_map boolean := false;
BEGIN
	FOR m IN SELECT * FROM pgcdc.table_map x
			  WHERE x.pipeline = _replay_many.pipeline AND x.source_table = _replay_many.source_table
				AND (_replay_many.target IS NULL OR x.target = _replay_many.target) LOOP
		found_map := true;
		IF to_regclass(m.target) IS NULL THEN
			RAISE EXCEPTION 'target % of quarantined event % does not exist', m.target, ids[1]
				USING ERRCODE = '42P01';
		END IF;
		IF m.mode = 'append' THEN
			-- the rules, with the columns typed as the events say (_apply_rules_json)
			PERFORM pgcdc._check_rules_json(ids, m.pipeline, m.source_table);
			EXECUTE format($f$
				INSERT INTO %s (_op, _source_lsn, _source_seq, _xid, _commit_ts, _key, _new, _old,
								_received_at)
				SELECT e->>'op', (e->>'commit_lsn')::pg_lsn, (e->>'seq')::integer,
					   (e->>'xid')::bigint, (e->>'ts')::timestamptz, e->'key', e->'new',
					   e->'old', pg_catalog.now()
				  FROM (SELECT DISTINCT ON (x.event->>'commit_lsn', x.event->>'seq') x.event AS e
						  FROM pgcdc.quarantine x WHERE x.id = ANY ($1)) q
				 WHERE NOT EXISTS (SELECT 1 FROM %s t
									WHERE t._source_lsn = (e->>'commit_lsn')::pg_lsn
									  AND t._source_seq = (e->>'seq')::integer)$f$,
				m.target, m.target)
			USING ids;
			CONTINUE;
		END IF;
		PERFORM pgcdc._stage_events(ids, m.pipeline, m.source_table, m.target::regclass);
		-- the map's key, else the events', else the target's own unique key
		-- (events quarantined by a rule carry no key object)
		keys := coalesce(m.key_columns,
						 NULLIF(ARRAY(SELECT jsonb_object_keys(
										  (SELECT x.event->'key' FROM pgcdc.quarantine x
											WHERE x.id = ANY (ids) AND jsonb_typeof(x.event->'key') = 'object'
											ORDER BY x.id LIMIT 1))), '{}'),
						 pgcdc._target_key(m.target::regclass));
		IF cardinality(keys) = 0 THEN
			RAISE EXCEPTION 'no key columns for % in pipeline "%"', m.target, m.pipeline
				USING ERRCODE = '22023', HINT = 'Set key_columns in the table map.';
		END IF;
		IF m.mode = 'mirror' THEN
			-- a row deleted after an event stays deleted
			IF NOT m.soft_delete THEN
				PERFORM pgcdc._bury_staged(m.target::regclass, keys);
			END IF;
			PERFORM pgcdc.apply_mirror(m.target::regclass, 'pg_temp._pgcdc_q', keys, m.soft_delete);
		ELSE
			PERFORM pgcdc.scd2_apply_changes(m.target::regclass, 'pg_temp._pgcdc_q', keys,
											 '_source_lsn,_source_seq', 'op', m.track_columns,
											 '_commit_ts');
		END IF;
	END LOOP;
	IF NOT found_map THEN
		RAISE EXCEPTION 'pipeline "%" has no table map for % of quarantined event %',
			pipeline, coalesce(target, source_table), ids[1] USING ERRCODE = '42704';
	END IF;
END
$$;

/*
 * Replay the quarantined events ids (of one pipeline, source table and
 * target, in source order) together in a subtransaction; if that fails,
 * the two halves, and so on: an event that fails alone records its error.
 * One bad event among n costs about 2 log2(n) applies, not n.  The apply
 * functions give the same result whatever order or grouping the events
 * come in (position guard, late changes), so halves may go one by one.
 * Returns {applied, failed}.
 */
CREATE FUNCTION pgcdc._replay_range(ids bigint[], pipeline text, source_table text, target text)
RETURNS bigint[] LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer := cardinality(ids);
	a bigint[];
	b bigint[];
	code text;
	msg text;
	detail text;
BEGIN
	BEGIN
		PERFORM pgcdc._replay_many(ids, pipeline, source_table, target);
		UPDATE pgcdc.quarantine x
		   SET status = 'replayed', resolved_at = now(), attempts = x.attempts + 1
		 WHERE x.id = ANY (ids);
		RETURN ARRAY[n, 0];
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
								detail = PG_EXCEPTION_DETAIL;
	END;
	IF n > 1 THEN
		a := pgcdc._replay_range(ids[1:n / 2], pipeline, source_table, target);
		b := pgcdc._replay_range(ids[n / 2 + 1:n], pipeline, source_table, target);
		RETURN ARRAY[a[1] + b[1], a[2] + b[2]];
	END IF;
	UPDATE pgcdc.quarantine x
	   SET attempts = x.attempts + 1, error_code = code, error_message = msg,
		   error_detail = nullif(detail, '')
	 WHERE x.id = ids[1];
	RETURN ARRAY[0, 1];
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

/*
 * Re-apply open quarantined events (one, or those of a pipeline, or all)
 * through the same guarded apply as the consumer, each target's events
 * together and by halves when that fails (_replay_range): an event older
 * than what the target holds changes nothing.  A failure records the new
 * error and counts an attempt.
 */
CREATE FUNCTION pgcdc.quarantine_replay(id bigint DEFAULT NULL, pipeline text DEFAULT NULL)
RETURNS TABLE (applied bigint, failed bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	q pgcdc.quarantine;
	g record;
	counts bigint[];
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
	-- per pipeline, source table and target: their events in source order
	FOR g IN SELECT x.pipeline, x.source_table, x.target,
					array_agg(x.id ORDER BY x.commit_lsn, x.seq, x.id) AS ids
			   FROM pgcdc.quarantine x
			  WHERE x.id = ANY (ARRAY(
						SELECT y.id FROM pgcdc.quarantine y
						 WHERE y.status = 'open'
						   AND (quarantine_replay.id IS NULL OR y.id = quarantine_replay.id)
						   AND (quarantine_replay.pipeline IS NULL OR y.pipeline = quarantine_replay.pipeline)
						   FOR UPDATE))
			  GROUP BY x.pipeline, x.source_table, x.target
			  ORDER BY min(x.commit_lsn), x.pipeline, x.source_table, x.target LOOP
		counts := pgcdc._replay_range(g.ids, g.pipeline, g.source_table, g.target);
		applied := applied + counts[1];
		failed := failed + counts[2];
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
