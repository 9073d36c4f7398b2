/* ------------------------------------------------------------------------
 * 4c. SCD2: scd2_apply_changes
 * ------------------------------------------------------------------------ */

-- Two changes of one key at one position have no order: an error, on both
-- paths (the staged rows are checked here).
CREATE FUNCTION pgcdc._check_positions(changes regclass, key_columns text[])
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	dup record;
BEGIN
	EXECUTE pgcdc._exec(format($f$
		SELECT ROW(%1$s)::text AS k FROM pg_temp._pgcdc_stage s
		 WHERE s.pgcdc_op <> 'T' GROUP BY %1$s, s.pgcdc_seq HAVING pg_catalog.count(*) > 1 LIMIT 1$f$,
		pgcdc._list(key_columns, 's')))
	INTO dup;
	IF dup.k IS NOT NULL THEN
		RAISE EXCEPTION 'two changes in % have the same key and sequence_by value', changes
			USING ERRCODE = '21000', DETAIL = format('Key: %s.', dup.k);
	END IF;
END
$$;

/*
 * The changes of a plain batch, as both writers read them: each cast to the
 * target's types, with its position, time and hash (of the tracked
 * columns; inserts and updates only).  The C writer hashes them itself
 * (hashed => false: pgcdc_h is NULL).
 */
CREATE FUNCTION pgcdc._scd2_changes_sql(target regclass, changes regclass, op_column text,
										seq text, vf text, data_cols text[], tracked text[],
										hashed boolean DEFAULT true)
RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT format($f$
	SELECT x.*, %1$s AS pgcdc_h
	  FROM (SELECT %2$s, c.%3$I::text AS pgcdc_op, %4$s AS pgcdc_seq, %5$s AS pgcdc_vf,
				   %6$s AS pgcdc_lsn, %7$s AS pgcdc_lseq
			  FROM %8$s c OFFSET 0) x$f$,
		CASE WHEN hashed THEN format('CASE WHEN x.pgcdc_op <> ''D'' THEN %s END', pgcdc._hash_expr(tracked, 'x'))
			 ELSE 'NULL::bytea' END,
		pgcdc._cast_list(target, changes, data_cols, 'c'),
		op_column, seq, vf,
		CASE WHEN pgcdc._has_column(changes, '_source_lsn', 'pg_lsn')
			 THEN 'c._source_lsn' ELSE 'NULL::pg_lsn' END,
		CASE WHEN pgcdc._has_column(changes, '_source_seq', 'int4')
			 THEN 'c._source_seq' ELSE 'NULL::integer' END,
		pgcdc._qname(changes))
$$;

/*
 * _scd2_fast_sql's first two CTEs: pgcdc_s, the changes (_scd2_changes_sql);
 * pgcdc_l, one row per key: its changes' first position, count and whether
 * any is no delete, and its latest version in the history (the current
 * one's hash recomputed, not _row_hash: track_columns may differ from the
 * last call).
 */
CREATE FUNCTION pgcdc._scd2_changes_ctes(target regclass, changes regclass, key_columns text[],
										 op_column text, seq text, vf text, data_cols text[],
										 tracked text[])
RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT format($f$
WITH pgcdc_s AS MATERIALIZED (%1$s
), pgcdc_l AS MATERIALIZED (
	SELECT k.*, l.*
	  FROM (SELECT %2$s, pg_catalog.min(x.pgcdc_seq) AS pgcdc_min_seq,
				   pg_catalog.count(*) AS pgcdc_n, pg_catalog.bool_or(x.pgcdc_op <> 'D') AS pgcdc_iu
			  FROM pgcdc_s x WHERE %3$s GROUP BY %2$s) k
	  LEFT JOIN LATERAL (
			SELECT t.ctid AS pgcdc_l_tid, t._version AS pgcdc_l_version,
				   t._valid_from AS pgcdc_l_from, t._valid_to AS pgcdc_l_to,
				   t._is_current AS pgcdc_l_cur, t._is_deleted AS pgcdc_l_del,
				   CASE WHEN t._is_current AND k.pgcdc_iu THEN %4$s END AS pgcdc_l_hash,
				   t._last_sequence AS pgcdc_l_last
			  FROM %5$s t WHERE %6$s
			 ORDER BY t._valid_from DESC LIMIT 1) l ON true
)$f$,
		pgcdc._scd2_changes_sql(target, changes, op_column, seq, vf, data_cols, tracked),
		pgcdc._list(key_columns, 'x'),
		-- a null key fails the batch before anything is written
		format('(%s) OR pgcdc._fail(''23502'', %L, %L) IS NULL',
			   (SELECT string_agg(format('x.%I IS NOT NULL', k), ' AND ') FROM unnest(key_columns) k),
			   format('null key in changes %s', changes),
			   format('Key columns: %s.', array_to_string(key_columns, ', '))),
		pgcdc._hash_expr(tracked, 't'),
		pgcdc._qname(target),
		pgcdc._key_join('t', 'k', target, key_columns))
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
 *     pgcdc_t as there (_times_sql) while the source clock goes forward,
 *     which is the running maximum of valid_from (a clock gone backwards
 *     sends the batch to the staged path); collapse: a change is dropped
 *     when the next one's valid_from is not after its pgcdc_t (both have
 *     the same pgcdc_t); kind from the change before (lag); a run is a
 *     version-opening or closing change and the changes after it up to the
 *     next one: its last row holds the version's values, and its opening
 *     change (the greatest so far: pgcdc_t and the sequence increase) the
 *     version's start and position.
 * The key's current version gets at most one UPDATE (run 0's last values,
 * and the close by the change after them; or run 1's close alone) or a
 * DELETE (drop); then the new versions are inserted.
 * The statement returns {inserted, updated, deleted, change rows}, or NULL
 * when some change is late or a replay, or the clock went backwards: then
 * nothing was written, and the caller stages.  scd2_apply_changes prepares it, _scd2_fast runs it.
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
	RETURN format($f$%1$s, pgcdc_go AS MATERIALIZED (
	SELECT NOT EXISTS (SELECT FROM pgcdc_l l WHERE l.pgcdc_min_seq <= l.pgcdc_l_last) AS pgcdc_ok
), pgcdc_1 AS (
	-- keys with one change
	SELECT x.*, x.pgcdc_kind IN ('new', 'change') AS pgcdc_o_open, x.pgcdc_t AS pgcdc_o_t,
		   x.pgcdc_seq AS pgcdc_o_seq,
		   x.pgcdc_lsn AS pgcdc_o_lsn, x.pgcdc_lseq AS pgcdc_o_lseq, true AS pgcdc_last,
		   %8$s AS pgcdc_cur, false AS pgcdc_back
	  FROM (SELECT x.*, (x.pgcdc_kind IN ('new', 'change', 'close', 'drop'))::integer AS pgcdc_run,
				   (x.pgcdc_kind IN ('new', 'change'))::integer AS pgcdc_open_no,
				   NULL::text AS pgcdc_prev_op, NULL::text AS pgcdc_next_kind,
				   NULL::timestamptz AS pgcdc_next_t, NULL::text AS pgcdc_next_op,
				   NULL::numeric[] AS pgcdc_next_seq
			  FROM (SELECT x.*, %5$s AS pgcdc_kind
					  FROM (SELECT x.*, l.pgcdc_l_tid, l.pgcdc_l_version, l.pgcdc_l_from,
								   l.pgcdc_l_cur, l.pgcdc_l_del, l.pgcdc_l_hash,
								   -- as _times_sql gives it for one change
								   greatest(x.pgcdc_vf, %7$s + CASE WHEN x.pgcdc_vf = %7$s
										THEN interval '0' ELSE interval '1 microsecond' END) AS pgcdc_t
							  FROM pgcdc_s x JOIN pgcdc_l l ON %6$s AND l.pgcdc_n = 1) x) x) x
), pgcdc_a AS (
	-- keys with several: pgcdc_t; a change is collapsed into the next one
	-- when that one's time is not later (they have the same pgcdc_t).  A
	-- clock gone backwards (pgcdc_back) is left to the staged path.
	SELECT %4$s, greatest(pg_catalog.max(x.pgcdc_vf) OVER w, %7$s) AS pgcdc_t,
		   pg_catalog.lead(x.pgcdc_vf) OVER w AS pgcdc_next_vf,
		   -- (the running maximum passed it: an earlier change, or the
		   -- latest version, is later)
		   greatest(pg_catalog.max(x.pgcdc_vf) OVER w, %7$s) > x.pgcdc_vf AS pgcdc_back,
		   -- two changes of a key at one position: which came first?
		   CASE WHEN pg_catalog.lead(x.pgcdc_seq) OVER w = x.pgcdc_seq
				THEN pgcdc._fail('21000', %15$L, %16$L || ROW(%2$s)::text || '.') END AS pgcdc_dup
	  FROM pgcdc_s x JOIN pgcdc_l l ON %6$s AND l.pgcdc_n > 1
	WINDOW w AS (%9$s)
), pgcdc_k AS (
	-- collapsed, classified, and the next change
	SELECT x.*, %10$s AS pgcdc_kind, pg_catalog.lag(x.pgcdc_op) OVER w AS pgcdc_prev_op,
		   pg_catalog.lead(x.pgcdc_t) OVER w AS pgcdc_next_t,
		   pg_catalog.lead(x.pgcdc_op) OVER w AS pgcdc_next_op,
		   pg_catalog.lead(x.pgcdc_seq) OVER w AS pgcdc_next_seq
	  FROM pgcdc_a x
	 WHERE x.pgcdc_next_vf IS NULL OR x.pgcdc_next_vf > x.pgcdc_t
		OR x.pgcdc_back			-- kept, to be seen by pgcdc_ok
	WINDOW w AS (%9$s)
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
	WINDOW w AS (%9$s)
), pgcdc_w AS MATERIALIZED (
	SELECT %11$s FROM pgcdc_1 x
	UNION ALL
	SELECT %11$s FROM (
		SELECT x.*, x.pgcdc_o[pg_catalog.cardinality(x.pgcdc_o)] = 1 AS pgcdc_o_open,
			   x.pgcdc_o[1:pg_catalog.cardinality(x.pgcdc_o) - 3] AS pgcdc_o_seq,
			   '0/0'::pg_lsn OPERATOR(pg_catalog.+) x.pgcdc_o[pg_catalog.cardinality(x.pgcdc_o) - 2]
				 AS pgcdc_o_lsn,
			   x.pgcdc_o[pg_catalog.cardinality(x.pgcdc_o) - 1]::integer AS pgcdc_o_lseq,
			   x.pgcdc_next_kind IS NULL
				 OR x.pgcdc_next_kind IN ('new', 'change', 'close', 'drop') AS pgcdc_last,
			   %8$s AS pgcdc_cur
		  FROM pgcdc_r x) x
), pgcdc_ok AS MATERIALIZED (
	SELECT (SELECT g.pgcdc_ok FROM pgcdc_go g)
		   AND NOT EXISTS (SELECT FROM pgcdc_w w WHERE w.pgcdc_back) AS pgcdc_ok
), pgcdc_del AS (
	-- a delete at the very instant the current version started: it never was
	DELETE FROM %3$s t USING pgcdc_w u
	 WHERE t.ctid = ANY (ARRAY(SELECT u.pgcdc_l_tid FROM pgcdc_w u WHERE u.pgcdc_kind = 'drop'))
	   AND t.ctid = u.pgcdc_l_tid AND u.pgcdc_kind = 'drop'
	   AND (SELECT g.pgcdc_ok FROM pgcdc_ok g)
	RETURNING 1
), pgcdc_upd AS (
	UPDATE %3$s t
	   SET %12$s
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
	   AND (SELECT g.pgcdc_ok FROM pgcdc_ok g)
	RETURNING 1
), pgcdc_ins AS (
	-- after pgcdc_upd and pgcdc_del: the unique index on current rows
	-- checks as rows go in
	INSERT INTO %3$s (%13$s, _valid_from, _valid_to, _is_current, _is_deleted, _version,
					   _row_hash, _source_lsn, _source_seq, _sequence, _last_sequence, _last_at)
	SELECT %14$s, x.pgcdc_o_t, coalesce(x.pgcdc_next_t, 'infinity'), x.pgcdc_next_t IS NULL, false,
		   coalesce(x.pgcdc_l_version, 0) + x.pgcdc_open_no, x.pgcdc_h, x.pgcdc_o_lsn, x.pgcdc_o_lseq,
		   x.pgcdc_o_seq, CASE WHEN x.pgcdc_next_op = 'D' THEN x.pgcdc_next_seq ELSE x.pgcdc_seq END,
		   CASE WHEN x.pgcdc_next_op = 'D' THEN x.pgcdc_next_t ELSE x.pgcdc_t END
	  FROM pgcdc_w x
	 WHERE x.pgcdc_last AND x.pgcdc_o_open AND x.pgcdc_run > 0
	   AND (SELECT g.pgcdc_ok FROM pgcdc_ok g)
	   AND (SELECT pg_catalog.count(*) FROM pgcdc_upd) >= 0
	   AND (SELECT pg_catalog.count(*) FROM pgcdc_del) >= 0
	RETURNING 1
)
SELECT CASE WHEN (SELECT g.pgcdc_ok FROM pgcdc_ok g) THEN ARRAY[
		   pg_catalog.count(*) FILTER (WHERE x.pgcdc_kind = 'new'
									   OR x.pgcdc_kind = 'overwrite' AND x.pgcdc_l_del),
		   pg_catalog.count(*) FILTER (WHERE x.pgcdc_kind = 'change'
									   OR x.pgcdc_kind = 'overwrite' AND NOT x.pgcdc_l_del),
		   pg_catalog.count(*) FILTER (WHERE x.pgcdc_kind IN ('close', 'drop')),
		   (SELECT pg_catalog.count(*) FROM pgcdc_s)] END
  FROM pgcdc_w x$f$,
		pgcdc._scd2_changes_ctes(target, changes, key_columns, op_column, seq, vf, data_cols,
								 tracked),											-- 1
		keys,
		pgcdc._qname(target),
		joined,
		format(kind, 'true', first_prior, 'x.pgcdc_l_hash'),					-- 5
		pgcdc._key_join('x', 'l', target, key_columns),
		t0,
		cur,																	-- 8
		w,
		format(kind, 'pg_catalog.lag(x.pgcdc_op) OVER w IS NULL',
			   format('CASE WHEN pg_catalog.lag(x.pgcdc_op) OVER w IS NULL THEN %s '
					  'ELSE pg_catalog.lag(x.pgcdc_op) OVER w <> ''D'' END', first_prior),
			   'CASE WHEN pg_catalog.lag(x.pgcdc_op) OVER w IS NULL THEN x.pgcdc_l_hash '
			   'ELSE pg_catalog.lag(x.pgcdc_h) OVER w END'),							-- 10
		-- pgcdc_w's columns, the same in both flows
		pgcdc._list(data_cols, 'x') || ', x.pgcdc_op, x.pgcdc_seq, x.pgcdc_h, x.pgcdc_t, x.pgcdc_l_tid, '
			 'x.pgcdc_l_version, x.pgcdc_l_del, x.pgcdc_kind, x.pgcdc_run, x.pgcdc_open_no, '
			 'x.pgcdc_next_kind, x.pgcdc_next_t, x.pgcdc_next_op, x.pgcdc_next_seq, '
			 'x.pgcdc_o_open, x.pgcdc_o_t, x.pgcdc_o_seq, x.pgcdc_o_lsn, x.pgcdc_o_lseq, '
			 'x.pgcdc_last, x.pgcdc_cur, x.pgcdc_back',
		(SELECT coalesce(string_agg(format('%1$I = CASE WHEN u.pgcdc_cur = ''values'' THEN u.%1$I '
										   'ELSE t.%1$I END, ', c), ''), '')
		   FROM unnest(vals) c),												-- 12
		pgcdc._list(data_cols), pgcdc._list(data_cols, 'x'),
		format('two changes in %s have the same key and sequence_by value', changes), 'Key: ');	-- 15
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


-- The C history writer (scd2_writer.c): run the read query stmt over
-- changes (_scd2_changes_sql: the changes alone, in no order, unhashed; the
-- writer hashes them, groups them by key, sorts each key's by sequence and
-- looks up its latest version itself) and write the batch to target.  The counts as _scd2_fast
-- gives them, NULL when the batch must be staged, '{}' when the target is
-- not one the writer writes (then _scd2_fast does).  track_columns as
-- scd2_apply_changes has it (checked there).
CREATE FUNCTION pgcdc._scd2_write(target regclass, changes regclass, stmt text,
								  key_columns text[], track_columns text[])
RETURNS bigint[] LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'pgcdc_scd2_write';


/*
 * Apply a batch of change rows to an SCD2 history.  A plain batch (only I,
 * U and D, after what the history holds for their keys, no unchanged TOAST,
 * no key change: the consumer's common one) is written by the C history
 * writer (_scd2_write), or where it does not write, by one statement
 * (_scd2_fast_sql); both read statements prepared once per session and
 * shape.  Truncates, unchanged TOAST, key-changing updates, late changes and
 * replays are staged (_stage) and applied segment by segment (_scd2_run).
 * All give the same history.
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
	stmts text[];		-- prepared: is the batch plain, the statement, the C writer's read query
	args record;
	plain bigint;		-- the rows of a plain batch, NULL for another
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
		shape := pgcdc._shape('{scd2_apply_changes,_scd2_changes_sql,_scd2_changes_ctes,_scd2_fast_sql,_stage_args,_plain_sql}',
							  target, changes,
							  key_columns::text, sequence_by, op_column, track_columns::text,
							  valid_from_column);
		stmts := pgcdc._cached(shape, 3);
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
											 array_remove(args.seq_cols || valid_from_column, NULL),
											 counted => true)),
			pgcdc._prepared(pgcdc._scd2_fast_sql(target, changes, key_columns, op_column,
												 args.seq, args.vf, args.data_cols, tracked)),
			pgcdc._prepared(pgcdc._scd2_changes_sql(target, changes, op_column, args.seq, args.vf,
													args.data_cols, tracked, hashed => false))];
		PERFORM set_config(shape, array_to_string(stmts, ' '), false);
	END IF;

	EXECUTE 'EXECUTE ' || quote_ident(stmts[1]) INTO plain;
	IF plain IS NOT NULL THEN
		-- the C writer, unless the session asks for the statement or the
		-- target is not one it writes ('{}').  It holds the batch in memory:
		-- a larger one goes to the statement, whose tuplestores spill to disk.
		c := CASE WHEN current_setting('pgcdc.scd2_writer', true) IS DISTINCT FROM 'sql'
					   AND plain <= 100000
				  THEN pgcdc._scd2_write(target, changes, stmts[3], key_columns, track_columns)
				  ELSE '{}' END;
		IF c = '{}' THEN
			c := pgcdc._scd2_fast(stmts[2]);
		END IF;
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
	PERFORM pgcdc._check_positions(changes, key_columns);
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
