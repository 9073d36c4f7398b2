/* ------------------------------------------------------------------------
 * 4b. SCD2: scd2_apply_changes' staged path
 *
 * Batches the one-statement path (43) does not take: truncates, unchanged
 * TOAST, key changes, late changes and replays: staging, effective times,
 * and a segment's in-order changes.  Late changes: 42.
 * ------------------------------------------------------------------------ */

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
	work text;
	args record;
	seq text;
	vf text;
	old_keys text;
	cols text;
	keys text;
	bad record;
	col text;
	n bigint;
BEGIN
	args := pgcdc._stage_args(target, changes, key_columns, sequence_by, op_column,
							  valid_from_column);
	seq := args.seq;
	vf := args.vf;
	data_cols := args.data_cols;
	cols := pgcdc._cast_list(target, changes, data_cols, 'c');
	keys := pgcdc._list(key_columns);

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

	work := format($f$
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
	n := pgcdc._fill('_pgcdc_stage', work);
	-- _scd2_late finds each late change by pgcdc_rn: without the index each
	-- lookup reads the whole stage (a batch of late changes would cost its
	-- size squared).  The statistics keep the planner off the target's seq
	-- scan; taken again only when the batch is of another size than the
	-- last one they saw, as they make every statement reading the stage be
	-- planned again.
	IF NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = 'pg_temp._pgcdc_stage'::regclass) THEN
		CREATE INDEX ON pg_temp._pgcdc_stage (pgcdc_rn);
	END IF;
	IF (SELECT c.reltuples < 0 OR n NOT BETWEEN c.reltuples / 4 AND c.reltuples * 4 + 100
		  FROM pg_class c WHERE c.oid = 'pg_temp._pgcdc_stage'::regclass) THEN
		ANALYZE pg_temp._pgcdc_stage;
	END IF;

	EXECUTE pgcdc._exec(format($f$
		SELECT pgcdc_op, pgcdc_seq::text AS seq, ROW(%s)::text AS k,
			   pgcdc_seq IS NULL OR pg_catalog.array_position(pgcdc_seq, NULL) IS NOT NULL AS null_seq,
			   pgcdc_vf IS NULL AS null_vf
		  FROM pg_temp._pgcdc_stage
		 WHERE pgcdc_op IS NULL OR pgcdc_op NOT IN ('I', 'U', 'D', 'T')
			OR pgcdc_seq IS NULL OR pg_catalog.array_position(pgcdc_seq, NULL) IS NOT NULL
			OR pgcdc_vf IS NULL
			OR (pgcdc_op <> 'T' AND (%s))
		 LIMIT 1$f$,
		keys, (SELECT string_agg(format('%I IS NULL', k), ' OR ') FROM unnest(key_columns) k)))
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

	-- unchanged TOAST in an update that changed the key: the value is the old
	-- key's, from its latest earlier change in the batch that had it, else
	-- from its row (a mirror) or current version (a history) in the target.
	-- A chain of key changes carries it along: an update whose old key got
	-- its value by an earlier key change (still unresolved) waits for it, so
	-- each column takes as many rounds as the longest chain (mostly one),
	-- every update of a round at once.  (The plain updates left unresolved
	-- carry the value before them: the next step.)
	IF old_keys IS NOT NULL AND pgcdc._has_column(changes, 'unchanged_toast', 'text[]') THEN
		FOR col IN SELECT DISTINCT t.pgcdc_col
					 FROM pg_temp._pgcdc_stage u
					 JOIN pg_temp._pgcdc_stage d ON d.pgcdc_seq = u.pgcdc_seq AND d.pgcdc_sub = 0,
						  unnest(u.pgcdc_ut) AS t(pgcdc_col)
					WHERE u.pgcdc_sub = 1 AND t.pgcdc_col = ANY (data_cols)
					  AND t.pgcdc_col <> ALL (key_columns) LOOP
			LOOP
				EXECUTE pgcdc._count(format($f$
					UPDATE pg_temp._pgcdc_stage u
					   SET %1$I = CASE WHEN v.pgcdc_found THEN v.pgcdc_b ELSE v.pgcdc_t END,
						   pgcdc_ut = pg_catalog.array_remove(u.pgcdc_ut, %2$L)
					  FROM (SELECT k.pgcdc_rn, b.pgcdc_found, b.pgcdc_b, b.pgcdc_wait,
								   (SELECT t.%1$I FROM %4$s t WHERE %5$s %6$s LIMIT 1) AS pgcdc_t
							  FROM pg_temp._pgcdc_stage k
							  JOIN pg_temp._pgcdc_stage d ON d.pgcdc_seq = k.pgcdc_seq AND d.pgcdc_sub = 0
							  LEFT JOIN LATERAL (
									SELECT true AS pgcdc_found, x.%1$I AS pgcdc_b,
										   %2$L = ANY (coalesce(x.pgcdc_ut, '{}')) AS pgcdc_wait
									  FROM pg_temp._pgcdc_stage x
									 WHERE %3$s AND x.pgcdc_op IN ('I', 'U') AND x.pgcdc_seq < d.pgcdc_seq
									   AND (NOT (%2$L = ANY (coalesce(x.pgcdc_ut, '{}')))
											OR x.pgcdc_sub = 1 AND EXISTS (
												SELECT FROM pg_temp._pgcdc_stage y
												 WHERE y.pgcdc_seq = x.pgcdc_seq AND y.pgcdc_sub = 0))
									 ORDER BY x.pgcdc_seq DESC LIMIT 1) b ON true
							 WHERE k.pgcdc_sub = 1 AND %2$L = ANY (k.pgcdc_ut)) v
					 WHERE u.pgcdc_rn = v.pgcdc_rn AND NOT coalesce(v.pgcdc_wait, false)$f$,
					col, col, pgcdc._key_join('x', 'd', target, key_columns),
					target, pgcdc._key_join('t', 'd', target, key_columns),
					CASE WHEN pgcdc._has_column(target, '_is_current', 'bool') THEN 'AND t._is_current'
						 ELSE '' END))
				INTO n;
				EXIT WHEN n = 0;
			END LOOP;
		END LOOP;
	END IF;

	-- unchanged TOAST: carry the key's latest earlier value in the batch
	IF pgcdc._has_column(changes, 'unchanged_toast', 'text[]') THEN
		-- the alias must not be a possible data column name: pgcdc_ is reserved
		FOR col IN SELECT DISTINCT t.pgcdc_col FROM pg_temp._pgcdc_stage s,
						  unnest(s.pgcdc_ut) AS t(pgcdc_col)
					WHERE t.pgcdc_col = ANY (data_cols) LOOP
			EXECUTE pgcdc._exec(format($f$
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
				col, col, keys));
		END LOOP;
		toast_cols := ARRAY(SELECT DISTINCT t.pgcdc_col
							  FROM pg_temp._pgcdc_stage s, unnest(s.pgcdc_ut) AS t(pgcdc_col)
							 WHERE t.pgcdc_col = ANY (data_cols) AND t.pgcdc_col <> ALL (key_columns));
	ELSE
		toast_cols := '{}';
	END IF;
END
$$;

-- Fill work table name with query's rows between positions lo and hi of
-- the stage (either NULL: open), which query reads as $1 and $2.  Without
-- bounds (a batch without truncates: the common one) the statement has no
-- parameters: planned once, knowing that, where PostgreSQL plans a
-- statement with parameters again at each of its first calls.
CREATE FUNCTION pgcdc._fill_between(name text, query text, lo numeric[], hi numeric[])
RETURNS bigint LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN lo IS NULL AND hi IS NULL
		THEN pgcdc._fill(name, replace(replace(query, '($1 IS NULL OR s.pgcdc_seq > $1)', 'true'),
									   '($2 IS NULL OR s.pgcdc_seq < $2)', 'true'))
		ELSE pgcdc._fill(name, query, 'numeric[], numeric[]', format('%L, %L', lo, hi)) END
$$;

/*
 * Effective times.  inner yields a key's changes (the key columns, unqualified,
 * pgcdc_seq, pgcdc_vf) and pgcdc_t0, the time its latest version started (or
 * ended, if a delete closed it); this adds pgcdc_t, per key in source order:
 *   - changes with equal valid_from in a row are one group (one source
 *     transaction): one time, so that they collapse;
 *   - a group's time is its valid_from, but never before the previous
 *     group's time plus 1 µs (the first group: t0 itself when its
 *     valid_from equals t0, the same instant, else t0 plus 1 µs).
 * So a source clock that goes backwards neither inverts an interval nor
 * merges two transactions into one version: N changes still give N versions
 * (the one before lasts 1 µs).  Closed form, with g the group number:
 * pgcdc_t = greatest(vf, max over earlier rows of (vf - g µs) + g µs,
 * t0 + g µs).
 */
CREATE FUNCTION pgcdc._times_sql(inner_sql text, keys text)
RETURNS text LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT format($f$
		SELECT y.*, greatest(y.pgcdc_vf,
				   pg_catalog.max(y.pgcdc_vf - y.pgcdc_g * interval '1 microsecond') OVER pgcdc_w
					 + y.pgcdc_g * interval '1 microsecond',
				   y.pgcdc_t0 + y.pgcdc_g * interval '1 microsecond') AS pgcdc_t
		  FROM (SELECT x.*, pg_catalog.sum(x.pgcdc_step) OVER pgcdc_w AS pgcdc_g
				  FROM (SELECT z.*,
							   (CASE WHEN pg_catalog.lag(z.pgcdc_vf) OVER pgcdc_w IS NULL
									 THEN z.pgcdc_vf IS DISTINCT FROM z.pgcdc_t0
									 ELSE z.pgcdc_vf <> pg_catalog.lag(z.pgcdc_vf) OVER pgcdc_w
								END)::integer AS pgcdc_step
						  FROM (%1$s) z
						WINDOW pgcdc_w AS (PARTITION BY %2$s ORDER BY z.pgcdc_seq)) x
				WINDOW pgcdc_w AS (PARTITION BY %2$s ORDER BY x.pgcdc_seq)) y
		WINDOW pgcdc_w AS (PARTITION BY %2$s ORDER BY y.pgcdc_seq)$f$, inner_sql, keys)
$$;

/*
 * One segment of scd2_apply_changes: the staged I/U/D rows with lo < seq < hi
 * (between two truncates), applied set-based.  Per key, in source order:
 *   - a change at or before the key's last applied position is late (or a
 *     replay) and is left in pg_temp._pgcdc_late for _scd2_late;
 *   - effective time pgcdc_t (_times_sql), never before the key's latest
 *     version;
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
	work text;
	keys text := pgcdc._list(key_columns);
	vals text[] := ARRAY(SELECT c FROM unnest(data_cols) c WHERE c <> ALL (key_columns));
	resolved text;
	counts bigint[];
BEGIN
	-- each key's latest version
	work := format($f$
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
		pgcdc._hash_expr(tracked, 't'));
	PERFORM pgcdc._fill_between('_pgcdc_latest', work, lo, hi);

	work := format($f$
		SELECT s.pgcdc_rn,
			   -- the round that applies it: its key's late changes in source order
			   pg_catalog.row_number() OVER (PARTITION BY %2$s ORDER BY s.pgcdc_seq, s.pgcdc_rn)
				 AS pgcdc_round
		  FROM pg_temp._pgcdc_stage s JOIN pg_temp._pgcdc_latest l ON %1$s
		 WHERE s.pgcdc_op <> 'T' AND ($1 IS NULL OR s.pgcdc_seq > $1)
		   AND ($2 IS NULL OR s.pgcdc_seq < $2) AND s.pgcdc_seq <= l.pgcdc_l_last$f$,
		pgcdc._key_join('s', 'l', target, key_columns), pgcdc._list(key_columns, 's'));
	PERFORM pgcdc._fill_between('_pgcdc_late', work, lo, hi);

	-- values with unresolved unchanged TOAST taken from the current version
	resolved := (SELECT string_agg(
					CASE WHEN c = ANY (toast_cols)
						 THEN format('CASE WHEN %L = ANY (s.pgcdc_ut) AND l.pgcdc_l_cur '
									 'THEN l.%I ELSE s.%I END AS %I', c, 'pgcdc_l_' || c, c, c)
						 ELSE format('s.%I', c) END, ', ' ORDER BY o)
				   FROM unnest(vals) WITH ORDINALITY u(c, o));

	work := format($f$
		WITH inorder AS (%1$s
		), collapsed AS (
			SELECT c.*, %2$s AS pgcdc_h,
				   row_number() OVER (PARTITION BY %3$s, pgcdc_t ORDER BY pgcdc_seq DESC) AS pgcdc_dup
			  FROM inorder c
		), p AS (
			SELECT c.*, row_number() OVER w = 1 AS pgcdc_first,
				   CASE WHEN row_number() OVER w = 1
						THEN coalesce(c.pgcdc_l_cur AND NOT c.pgcdc_l_del, false)
						ELSE lag(c.pgcdc_op) OVER w <> 'D' END AS pgcdc_prior,
				   CASE WHEN row_number() OVER w = 1 THEN c.pgcdc_l_hash
						ELSE lag(c.pgcdc_h) OVER w END AS pgcdc_prior_h
			  FROM collapsed c WHERE c.pgcdc_dup = 1
			WINDOW w AS (PARTITION BY %3$s ORDER BY pgcdc_seq)
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
						OVER (PARTITION BY %3$s ORDER BY pgcdc_seq) AS pgcdc_run
		  FROM k$f$,
		pgcdc._times_sql(format($i$
			SELECT %1$s %2$s, s.pgcdc_op, s.pgcdc_seq, s.pgcdc_vf, s.pgcdc_rn, s.pgcdc_lsn, s.pgcdc_lseq,
				   l.pgcdc_l_version, l.pgcdc_l_from, l.pgcdc_l_cur, l.pgcdc_l_del, l.pgcdc_l_hash,
				   CASE WHEN l.pgcdc_l_cur THEN l.pgcdc_l_from ELSE l.pgcdc_l_to END AS pgcdc_t0
			  FROM pg_temp._pgcdc_stage s JOIN pg_temp._pgcdc_latest l ON %3$s
			 WHERE s.pgcdc_op <> 'T' AND ($1 IS NULL OR s.pgcdc_seq > $1)
			   AND ($2 IS NULL OR s.pgcdc_seq < $2)
			   AND NOT coalesce(s.pgcdc_seq <= l.pgcdc_l_last, false)$i$,
			pgcdc._list(key_columns, 's'),
			CASE WHEN resolved IS NULL THEN '' ELSE ', ' || resolved END,
			pgcdc._key_join('s', 'l', target, key_columns)), keys),
		pgcdc._hash_expr(tracked, 'c'),
		keys);
	PERFORM pgcdc._fill_between('_pgcdc_w', work, lo, hi);

	-- run 0: changes to the current version before anything opens or closes
	EXECUTE pgcdc._exec(format($f$
		UPDATE %1$s t SET %2$s _row_hash = r.pgcdc_h, _is_deleted = false,
			   _last_sequence = r.pgcdc_seq, _last_at = r.pgcdc_t
		  FROM (SELECT DISTINCT ON (%3$s) w.* FROM pg_temp._pgcdc_w w
				 WHERE w.pgcdc_run = 0 AND w.pgcdc_op <> 'D'
				 ORDER BY %3$s, w.pgcdc_seq DESC) r
		 WHERE %4$s AND t._is_current$f$,
		target,
		(SELECT coalesce(string_agg(format('%I = r.%I, ', c, c), ''), '') FROM unnest(vals) c),
		pgcdc._list(key_columns, 'w'), pgcdc._key_join('t', 'r', target, key_columns)));

	-- a delete at the very instant the current version started: it never was
	EXECUTE pgcdc._exec(format($f$
		DELETE FROM %1$s t USING pg_temp._pgcdc_w b
		 WHERE b.pgcdc_kind = 'drop' AND %2$s AND t._is_current$f$,
		target, pgcdc._key_join('t', 'b', target, key_columns)));

	-- close the current version at the first change that opens or deletes
	EXECUTE pgcdc._exec(format($f$
		UPDATE %1$s t SET _valid_to = b.pgcdc_t, _is_current = false,
			   _last_sequence = CASE WHEN b.pgcdc_op = 'D' THEN b.pgcdc_seq
									 ELSE t._last_sequence END,
			   _last_at = CASE WHEN b.pgcdc_op = 'D' THEN b.pgcdc_t ELSE t._last_at END
		  FROM pg_temp._pgcdc_w b
		 WHERE b.pgcdc_run = 1 AND b.pgcdc_kind IN ('new', 'change', 'close')
		   AND %2$s AND t._is_current$f$,
		target, pgcdc._key_join('t', 'b', target, key_columns)));

	-- one version per opening run, ended by the next run's start
	EXECUTE pgcdc._exec(format($f$
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
		pgcdc._list(key_columns, 'w'), pgcdc._key_join('v', 'b', target, key_columns)));

	EXECUTE pgcdc._exec($f$
		SELECT ARRAY[count(*) FILTER (WHERE pgcdc_kind = 'new'
									  OR pgcdc_kind = 'overwrite' AND pgcdc_l_del),
					 count(*) FILTER (WHERE pgcdc_kind = 'change'
									  OR pgcdc_kind = 'overwrite' AND NOT pgcdc_l_del),
					 count(*) FILTER (WHERE pgcdc_kind IN ('close', 'drop'))]
		  FROM pg_temp._pgcdc_w$f$) INTO counts;
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
	types text := 'numeric[], timestamptz';
	-- t as UTC wall time: its text in the session's DateStyle may name a
	-- zone by an abbreviation that reads back otherwise
	args text := format('%L, (%L::pg_catalog.timestamp AT TIME ZONE ''UTC'')', seq, t AT TIME ZONE 'UTC');
BEGIN
	-- versions that started at (or, clock gone backwards, after) t never were
	EXECUTE pgcdc._count(format('DELETE FROM %s t WHERE %s AND t._valid_from >= $2', target, older),
						 types, args)
	INTO n;
	EXECUTE pgcdc._count(format('UPDATE %s t SET _valid_to = $2, _is_current = false, '
								'_last_sequence = $1, _last_at = $2 WHERE %s', target, older),
						 types, args)
	INTO m;
	RETURN n + m;
END
$$;
