/* ------------------------------------------------------------------------
 * 4c. SCD2: late changes
 *
 * Changes at or before their key's last applied position (late arrivals and
 * replays), left in pg_temp._pgcdc_late by _scd2_segment.
 * ------------------------------------------------------------------------ */

/*
 * What a late change does depends on what the changes of its key before it
 * did, never on other keys: so they are applied in rounds, each round the
 * next late change of every key that has one, set-based.  A batch of late
 * changes to distinct keys is one round, whatever its size.
 *
 * A change falls in the version A with the greatest opening position not
 * after it.  It is a replay (skipped) when it opened A, or is the delete
 * that closed A.  After that delete it fills the gap before the next
 * version (a re-insert); a delete inside A ends A early, and at A's start
 * removes A (A never was), unless a later change at that instant won; a
 * change of the tracked columns splits A, and the second part keeps what
 * was applied to A after the change (e.g. the delete that closed it),
 * except that A resumes at a later change of untracked columns only (it
 * had A's tracked values: _last_at tells when; of several such changes
 * only the last is known); a change of untracked columns alone updates A
 * when nothing later was applied to it.  Later versions keep their values
 * and intervals (their _version numbers shift by one).  Replaying any of
 * these changes finds the history it made and changes nothing.
 *
 * Each round's changes are classified in pg_temp._pgcdc_round (pgcdc_class):
 *   skip        a replay, or nothing to do
 *   ins_before  before the key's first version: a version until the next
 *   ins_gap     in the gap after the delete that closed A: a re-insert
 *   del_inside  a delete inside A: A ends there
 *   del_drop    a delete at A's start: A never was; the version before it
 *               records the delete
 *   absorb      A takes the change's values (no tracked change, or at A's
 *               start); absorb_same when its tracked values stay the same
 *   split       A ends at the change; a new version carries it
 * and pgcdc_resume says that A first resumes at its last change (A ends
 * there, a copy of A opened by that change goes on); the pgcdc_e_ columns
 * are A's after that.  Versions are found by (key, _valid_from), which is
 * unique: rows move as they are updated, so their ctid would not do.
 * Returns {inserted, updated, deleted}.
 */
CREATE FUNCTION pgcdc._scd2_late_sql(target regclass, key_columns text[], data_cols text[],
									 tracked text[], toast_cols text[],
									 OUT fill text, OUT resume text, OUT del_inside text,
									 OUT del_drop text, OUT absorb text, OUT split text,
									 OUT ins text, OUT merge_new text, OUT merge_prev text,
									 OUT renumber text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	qt text := pgcdc._qname(target);
	vals text[] := ARRAY(SELECT c FROM unnest(data_cols) c WHERE c <> ALL (key_columns));
	tr text := pgcdc._key_join('t', 'r', target, key_columns);
	system_cols text := '_valid_from, _valid_to, _is_current, _is_deleted, _version, _row_hash, '
						'_source_lsn, _source_seq, _sequence, _last_sequence, _last_at';
	merge text;
BEGIN
	fill := format($f$
		SELECT q.*, %1$s AS pgcdc_h
		  FROM (SELECT c.pgcdc_rn, c.pgcdc_op, c.pgcdc_seq, c.pgcdc_lsn, c.pgcdc_lseq,
					   c.pgcdc_a_from, c.pgcdc_a_seq, c.pgcdc_n_from,
					   c.pgcdc_resume AND c.pgcdc_class NOT IN ('skip', 'ins_before', 'ins_gap')
						 AS pgcdc_resume,
					   c.pgcdc_e_to, c.pgcdc_e_last, c.pgcdc_e_last_at, c.pgcdc_e_cur, c.pgcdc_class,
					   CASE c.pgcdc_class WHEN 'ins_before' THEN c.pgcdc_vf
										  WHEN 'ins_gap' THEN greatest(c.pgcdc_vf, c.pgcdc_a_to)
										  ELSE c.pgcdc_ta END AS pgcdc_t,
					   %2$s
				  FROM (SELECT e.*, CASE
							WHEN e.pgcdc_a_tid IS NULL THEN
								CASE WHEN e.pgcdc_op = 'D' OR e.pgcdc_n_from IS NULL
										  OR e.pgcdc_vf >= e.pgcdc_n_from THEN 'skip'
									 ELSE 'ins_before' END
							WHEN e.pgcdc_a_seq = e.pgcdc_seq THEN 'skip'
							WHEN NOT e.pgcdc_a_cur
								 AND (e.pgcdc_n_from IS NULL OR e.pgcdc_a_to < e.pgcdc_n_from)
								 AND e.pgcdc_seq >= e.pgcdc_a_last THEN
								CASE WHEN e.pgcdc_op = 'D' OR e.pgcdc_n_from IS NULL
										  OR e.pgcdc_seq = e.pgcdc_a_last
										  OR greatest(e.pgcdc_vf, e.pgcdc_a_to) >= e.pgcdc_n_from
									 THEN 'skip' ELSE 'ins_gap' END
							WHEN e.pgcdc_ta >= e.pgcdc_a_to THEN 'skip'
							WHEN e.pgcdc_op = 'D' THEN
								CASE WHEN e.pgcdc_ta > e.pgcdc_a_from THEN 'del_inside'
									 -- a later change at that instant won
									 WHEN e.pgcdc_seq <= e.pgcdc_e_last THEN 'skip'
									 ELSE 'del_drop' END
							WHEN e.pgcdc_ta = e.pgcdc_a_from AND e.pgcdc_seq <= e.pgcdc_e_last THEN 'skip'
							WHEN e.pgcdc_h1 IS NOT DISTINCT FROM e.pgcdc_a_hash
								 OR e.pgcdc_ta = e.pgcdc_a_from THEN
								CASE WHEN e.pgcdc_seq <= e.pgcdc_e_last THEN 'skip'
									 WHEN e.pgcdc_h1 IS NOT DISTINCT FROM e.pgcdc_a_hash THEN 'absorb_same'
									 ELSE 'absorb' END
							ELSE 'split' END AS pgcdc_class
						  FROM (SELECT r.*,
									   CASE WHEN r.pgcdc_resume THEN r.pgcdc_a_last_at
											ELSE r.pgcdc_a_to END AS pgcdc_e_to,
									   CASE WHEN r.pgcdc_resume THEN r.pgcdc_a_seq
											ELSE r.pgcdc_a_last END AS pgcdc_e_last,
									   CASE WHEN r.pgcdc_resume THEN r.pgcdc_a_from
											ELSE r.pgcdc_a_last_at END AS pgcdc_e_last_at,
									   NOT r.pgcdc_resume AND r.pgcdc_a_cur AS pgcdc_e_cur
								  FROM (SELECT h.*, coalesce(h.pgcdc_a_last > h.pgcdc_seq
											AND h.pgcdc_a_last_at > h.pgcdc_ta
											AND h.pgcdc_a_last_at < h.pgcdc_a_to
											AND (h.pgcdc_op = 'D' OR h.pgcdc_h1 IS DISTINCT FROM h.pgcdc_a_hash),
											false) AS pgcdc_resume
										  FROM (SELECT x.*, %3$s AS pgcdc_h1,
													   greatest(x.pgcdc_vf, x.pgcdc_a_from) AS pgcdc_ta
												  FROM (%4$s) x) h) r) e) c) q$f$,
		pgcdc._hash_expr(tracked, 'q'),
		-- the values; unresolved unchanged TOAST of a re-insert is unknown
		(SELECT string_agg(CASE WHEN d = ANY (toast_cols)
								THEN format('CASE WHEN c.pgcdc_class = ''ins_gap'' AND %L = ANY (c.pgcdc_ut) '
											'THEN NULL ELSE c.%I END AS %I', d, d, d)
								ELSE format('c.%I', d) END, ', ' ORDER BY o)
		   FROM unnest(data_cols) WITH ORDINALITY u(d, o)),
		pgcdc._hash_expr(tracked, 'x'),
		-- the round's late changes (one a key), their A and the next version's
		-- start; unchanged TOAST from A
		format($x$
			SELECT f.pgcdc_rn, f.pgcdc_op, f.pgcdc_seq, f.pgcdc_vf, f.pgcdc_lsn, f.pgcdc_lseq,
				   f.pgcdc_ut, %1$s, a.*, n.pgcdc_n_from
			  FROM (SELECT s.*
					  FROM pg_temp._pgcdc_late l JOIN pg_temp._pgcdc_stage s USING (pgcdc_rn)
					 WHERE l.pgcdc_round = $1) f
			  LEFT JOIN LATERAL (
					SELECT t.ctid AS pgcdc_a_tid, t._valid_from AS pgcdc_a_from,
						   t._valid_to AS pgcdc_a_to, t._sequence AS pgcdc_a_seq,
						   t._last_sequence AS pgcdc_a_last, t._last_at AS pgcdc_a_last_at,
						   t._is_current AS pgcdc_a_cur, %2$s AS pgcdc_a_hash
					  FROM %3$s t WHERE %4$s AND coalesce(t._sequence, '{}') <= f.pgcdc_seq
					 ORDER BY coalesce(t._sequence, '{}') DESC, t._valid_from DESC LIMIT 1) a ON true
			  LEFT JOIN LATERAL (
					SELECT t._valid_from AS pgcdc_n_from
					  FROM %3$s t WHERE %4$s AND coalesce(t._sequence, '{}') > f.pgcdc_seq
					 ORDER BY coalesce(t._sequence, '{}'), t._valid_from LIMIT 1) n ON true
			  %5$s$x$,
			(SELECT string_agg(CASE WHEN d = ANY (toast_cols)
									THEN format('CASE WHEN %L = ANY (f.pgcdc_ut) THEN av.%I '
												'ELSE f.%I END AS %I', d, d, d, d)
									ELSE format('f.%I', d) END, ', ' ORDER BY o)
			   FROM unnest(data_cols) WITH ORDINALITY u(d, o)),
			pgcdc._hash_expr(tracked, 't'), qt, pgcdc._key_join('t', 'f', target, key_columns),
			CASE WHEN cardinality(toast_cols) > 0
				 THEN format('LEFT JOIN %s av ON av.ctid = a.pgcdc_a_tid', qt) ELSE '' END));

	-- A ends at its last change; a copy of A, opened by that change, goes on
	resume := format($f$
		WITH a AS MATERIALIZED (
			SELECT t.* FROM %1$s t JOIN pg_temp._pgcdc_round r
				ON %2$s AND t._valid_from = r.pgcdc_a_from
			 WHERE r.pgcdc_resume
		), u AS (
			UPDATE %1$s t SET _valid_to = t._last_at, _is_current = false,
				   _last_sequence = t._sequence, _last_at = t._valid_from
			  FROM pg_temp._pgcdc_round r
			 WHERE r.pgcdc_resume AND %2$s AND t._valid_from = r.pgcdc_a_from
			RETURNING 1
		)
		INSERT INTO %1$s (%3$s, %4$s)
		SELECT %5$s, a._last_at, a._valid_to, a._is_current, a._is_deleted, 0, a._row_hash,
			   a._source_lsn, a._source_seq, a._last_sequence, a._last_sequence, a._last_at
		  FROM a WHERE (SELECT pg_catalog.count(*) FROM u) >= 0$f$,
		qt, tr, pgcdc._list(data_cols), system_cols, pgcdc._list(data_cols, 'a'));

	del_inside := format($f$
		UPDATE %1$s t SET _valid_to = r.pgcdc_t, _is_current = false,
			   _last_sequence = r.pgcdc_seq, _last_at = r.pgcdc_t
		  FROM pg_temp._pgcdc_round r
		 WHERE r.pgcdc_class = 'del_inside' AND %2$s AND t._valid_from = r.pgcdc_a_from$f$,
		qt, tr);

	-- A never was; the version before it ends with this delete (recorded
	-- there even after a gap, so that a replay of A's change finds it)
	del_drop := format($f$
		WITH p AS (
			UPDATE %1$s t SET _last_sequence = r.pgcdc_seq, _last_at = r.pgcdc_t
			  FROM pg_temp._pgcdc_round r
			 WHERE r.pgcdc_class = 'del_drop' AND %2$s
			   AND t._valid_from = (SELECT pg_catalog.max(p._valid_from) FROM %1$s p
									 WHERE %3$s AND p._valid_from < r.pgcdc_a_from)
			RETURNING 1
		)
		DELETE FROM %1$s t USING pg_temp._pgcdc_round r
		 WHERE r.pgcdc_class = 'del_drop' AND %2$s AND t._valid_from = r.pgcdc_a_from
		   AND (SELECT pg_catalog.count(*) FROM p) >= 0$f$,
		qt, tr, pgcdc._key_join('p', 'r', target, key_columns));

	absorb := format($f$
		UPDATE %1$s t SET %2$s _row_hash = r.pgcdc_h, _last_sequence = r.pgcdc_seq,
			   _last_at = r.pgcdc_t
		  FROM pg_temp._pgcdc_round r
		 WHERE r.pgcdc_class IN ('absorb', 'absorb_same') AND %3$s
		   AND t._valid_from = r.pgcdc_a_from$f$,
		qt, (SELECT coalesce(string_agg(format('%I = r.%I, ', c, c), ''), '') FROM unnest(vals) c),
		tr);

	-- the first part of a split keeps what was applied to A before the change
	split := format($f$
		UPDATE %1$s t SET _valid_to = r.pgcdc_t, _is_current = false,
			   _last_sequence = CASE WHEN r.pgcdc_e_last < r.pgcdc_seq THEN r.pgcdc_e_last
									 ELSE r.pgcdc_a_seq END,
			   _last_at = CASE WHEN r.pgcdc_e_last < r.pgcdc_seq THEN r.pgcdc_e_last_at
							   ELSE r.pgcdc_a_from END
		  FROM pg_temp._pgcdc_round r
		 WHERE r.pgcdc_class = 'split' AND %2$s AND t._valid_from = r.pgcdc_a_from$f$,
		qt, tr);

	-- new versions: until the next version, or (split) the rest of A, with
	-- what was applied to A after the change
	ins := format($f$
		INSERT INTO %1$s (%2$s, %3$s)
		SELECT %4$s, r.pgcdc_t,
			   CASE WHEN r.pgcdc_class = 'split' THEN r.pgcdc_e_to ELSE r.pgcdc_n_from END,
			   r.pgcdc_class = 'split' AND r.pgcdc_e_cur, false, 0, r.pgcdc_h, r.pgcdc_lsn,
			   r.pgcdc_lseq, r.pgcdc_seq,
			   CASE WHEN r.pgcdc_class = 'split' THEN greatest(r.pgcdc_seq, r.pgcdc_e_last)
					ELSE r.pgcdc_seq END,
			   CASE WHEN r.pgcdc_class = 'split' AND r.pgcdc_e_last > r.pgcdc_seq
					THEN r.pgcdc_e_last_at ELSE r.pgcdc_t END
		  FROM pg_temp._pgcdc_round r
		 WHERE r.pgcdc_class IN ('ins_before', 'ins_gap', 'split')$f$,
		qt, pgcdc._list(data_cols), system_cols, pgcdc._list(data_cols, 'r'));

	-- versions X (xs: key and _valid_from) and the next one, now with the
	-- same tracked values (a late change made the next one's change a
	-- no-op), become one: the next one is absorbed, unless a delete closed X
	merge := format($f$
		), x AS MATERIALIZED (
			SELECT t.ctid AS pgcdc_tid, t.*, %3$s AS pgcdc_hx
			  FROM %1$s t JOIN xs ON %4$s AND t._valid_from = xs.pgcdc_x_from
		), n AS (
			DELETE FROM %1$s t USING x
			 WHERE %5$s AND t._valid_from = x._valid_to
			   AND NOT (x._last_at = x._valid_to AND x._last_sequence > x._sequence)
			   AND %3$s IS NOT DISTINCT FROM x.pgcdc_hx
			RETURNING t.*
		)
		UPDATE %1$s t SET %2$s _valid_to = n._valid_to, _is_current = n._is_current,
			   _is_deleted = n._is_deleted, _row_hash = n._row_hash,
			   _last_sequence = n._last_sequence, _last_at = n._last_at
		  FROM n JOIN x ON %6$s AND x._valid_to = n._valid_from
		 WHERE t.ctid = x.pgcdc_tid$f$,
		qt, (SELECT coalesce(string_agg(format('%I = n.%I, ', c, c), ''), '') FROM unnest(vals) c),
		pgcdc._hash_expr(tracked, 't'), pgcdc._key_join('t', 'xs', target, key_columns),
		pgcdc._key_join('t', 'x', target, key_columns), pgcdc._key_join('x', 'n', target, key_columns));
	-- the new versions, and A after an absorb ...
	merge_new := format($f$
		WITH xs AS MATERIALIZED (
			SELECT %s, CASE WHEN r.pgcdc_class = 'absorb' THEN r.pgcdc_a_from
							ELSE r.pgcdc_t END AS pgcdc_x_from
			  FROM pg_temp._pgcdc_round r
			 WHERE r.pgcdc_class IN ('ins_before', 'ins_gap', 'split', 'absorb')$f$,
		pgcdc._list(key_columns, 'r')) || merge;
	-- ... then the version before A (A's new values may equal both neighbours')
	merge_prev := format($f$
		WITH xs AS MATERIALIZED (
			SELECT %s, (SELECT pg_catalog.max(p._valid_from) FROM %s p
						 WHERE %s AND p._valid_from < r.pgcdc_a_from) AS pgcdc_x_from
			  FROM pg_temp._pgcdc_round r
			 WHERE r.pgcdc_class = 'absorb'$f$,
		pgcdc._list(key_columns, 'r'), qt, pgcdc._key_join('p', 'r', target, key_columns)) || merge;

	-- once, after the rounds, for every key with late changes left: nothing
	-- in the rounds reads _version, and a key's history is numbered once,
	-- not once per late change
	renumber := format($f$
		UPDATE %1$s t SET _version = x.pgcdc_n
		  FROM (SELECT h.ctid AS pgcdc_tid,
					   pg_catalog.row_number() OVER (PARTITION BY %2$s ORDER BY h._valid_from) AS pgcdc_n
				  FROM %1$s h
				  JOIN (SELECT DISTINCT %3$s FROM pg_temp._pgcdc_late l
						  JOIN pg_temp._pgcdc_stage s USING (pgcdc_rn)) r ON %4$s) x
		 WHERE t.ctid = x.pgcdc_tid AND t._version <> x.pgcdc_n$f$,
		qt, pgcdc._list(key_columns, 'h'), pgcdc._list(key_columns, 's'),
		pgcdc._key_join('h', 'r', target, key_columns));
END
$$;

CREATE FUNCTION pgcdc._scd2_late(target regclass, key_columns text[], data_cols text[],
								 tracked text[], toast_cols text[])
RETURNS bigint[] LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	q record;
	fill text;
	steps text[];
	todo bigint[];
	n record;
	first_round bigint;
	last_round bigint;
	renumber boolean := false;
	counts bigint[] := '{0,0,0}';
BEGIN
	IF NOT EXISTS (SELECT FROM pg_temp._pgcdc_late) THEN
		RETURN counts;
	END IF;
	-- Most late changes are replays that write nothing: the replay of the
	-- change that opened a version; a delete, or a change after the key's
	-- last version began, before its first version; a delete in the gap
	-- after the delete that closed a version (or that delete, replayed).  As
	-- long as nothing before it changed its key's versions the rounds would
	-- skip such a change: so a key's leading run of them is dropped at once
	-- (a whole batch applied twice, say).  a and n are A and the next one.
	EXECUTE pgcdc._exec(format($f$
		DELETE FROM pg_temp._pgcdc_late d
		 USING (SELECT s.pgcdc_rn,
					   pg_catalog.bool_and(coalesce(
						   CASE WHEN a.pgcdc_found IS NULL
								THEN s.pgcdc_op = 'D' OR n.pgcdc_from IS NULL
									 OR s.pgcdc_vf >= n.pgcdc_from
								ELSE a._sequence = s.pgcdc_seq
									 OR s.pgcdc_op = 'D' AND NOT a._is_current
										AND (n.pgcdc_from IS NULL OR a._valid_to < n.pgcdc_from)
										AND s.pgcdc_seq >= a._last_sequence END, false))
						 OVER (PARTITION BY %3$s ORDER BY s.pgcdc_seq, s.pgcdc_rn) AS pgcdc_skip
				  FROM pg_temp._pgcdc_late l JOIN pg_temp._pgcdc_stage s USING (pgcdc_rn)
				  LEFT JOIN LATERAL (
						SELECT true AS pgcdc_found, t._sequence, t._last_sequence, t._valid_to,
							   t._is_current
						  FROM %1$s t WHERE %2$s AND coalesce(t._sequence, '{}') <= s.pgcdc_seq
						 ORDER BY coalesce(t._sequence, '{}') DESC, t._valid_from DESC LIMIT 1) a ON true
				  LEFT JOIN LATERAL (
						SELECT t._valid_from AS pgcdc_from
						  FROM %1$s t WHERE %2$s AND coalesce(t._sequence, '{}') > s.pgcdc_seq
						 ORDER BY coalesce(t._sequence, '{}') ASC, t._valid_from ASC LIMIT 1) n ON true) x
		 WHERE d.pgcdc_rn = x.pgcdc_rn AND x.pgcdc_skip$f$,
		pgcdc._qname(target), pgcdc._key_join('t', 's', target, key_columns),
		pgcdc._list(key_columns, 's')));
	IF NOT EXISTS (SELECT FROM pg_temp._pgcdc_late) THEN
		RETURN counts;
	END IF;

	q := pgcdc._scd2_late_sql(target, key_columns, data_cols, tracked, toast_cols);
	PERFORM pgcdc._fill('_pgcdc_round', q.fill, 'bigint', 'NULL', rows => false);
	-- planned once per session and shape, run by every round.  The fill counts
	-- the round's rows by kind as it writes them (a statement less a round).
	fill := pgcdc._prepared(
		'WITH pgcdc_ins AS (INSERT INTO pg_temp._pgcdc_round ' || q.fill ||
		' RETURNING pgcdc_class, pgcdc_resume) '
		'SELECT pg_catalog.count(*) AS total, '
		'pg_catalog.count(*) FILTER (WHERE r.pgcdc_resume) AS resume, '
		'pg_catalog.count(*) FILTER (WHERE r.pgcdc_class IN (''ins_before'', ''ins_gap'')) AS ins, '
		'pg_catalog.count(*) FILTER (WHERE r.pgcdc_class = ''del_inside'') AS del_inside, '
		'pg_catalog.count(*) FILTER (WHERE r.pgcdc_class = ''del_drop'') AS del_drop, '
		'pg_catalog.count(*) FILTER (WHERE r.pgcdc_class = ''absorb'') AS absorb, '
		'pg_catalog.count(*) FILTER (WHERE r.pgcdc_class = ''absorb_same'') AS absorb_same, '
		'pg_catalog.count(*) FILTER (WHERE r.pgcdc_class = ''split'') AS split '
		'FROM pgcdc_ins r', 'bigint');
	-- a round's steps, in this order for each key (keys do not share versions);
	-- split: A ends before the new version, which may be current, goes in
	steps := ARRAY[pgcdc._prepared(q.resume), pgcdc._prepared(q.del_inside),
				   pgcdc._prepared(q.del_drop), pgcdc._prepared(q.absorb), pgcdc._prepared(q.split),
				   pgcdc._prepared(q.ins), pgcdc._prepared(q.merge_new), pgcdc._prepared(q.merge_prev)];
	SELECT min(l.pgcdc_round), max(l.pgcdc_round) INTO first_round, last_round
	  FROM pg_temp._pgcdc_late l;
	-- a key with many late changes would scan them all every round
	IF last_round > first_round AND NOT EXISTS (
			SELECT FROM pg_index i WHERE i.indrelid = 'pg_temp._pgcdc_late'::regclass) THEN
		CREATE INDEX ON pg_temp._pgcdc_late (pgcdc_round);
		ANALYZE pg_temp._pgcdc_late;
	END IF;

	FOR i IN first_round .. last_round LOOP
		-- emptied, not truncated: new files each round cost more than the
		-- round, and would make every step's plan be made again
		PERFORM pgcdc._empty_temp('_pgcdc_round');
		EXECUTE format('EXECUTE %I(%s)', fill, i) INTO n;
		CONTINUE WHEN n.total = 0;
		-- the rows each step writes, by the steps' order
		todo := ARRAY[n.resume, n.del_inside, n.del_drop, n.absorb + n.absorb_same, n.split,
					  n.ins + n.split, n.ins + n.split + n.absorb, n.absorb];
		FOR j IN 1 .. cardinality(steps) LOOP
			IF todo[j] > 0 THEN
				EXECUTE 'EXECUTE ' || quote_ident(steps[j]);
			END IF;
		END LOOP;
		renumber := renumber OR n.resume + n.ins + n.split + n.absorb + n.del_drop > 0;
		counts := pgcdc._sum(counts, ARRAY[n.ins, n.absorb + n.split, n.del_inside + n.del_drop]);
	END LOOP;
	IF renumber THEN
		EXECUTE pgcdc._exec(q.renumber);
	END IF;
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
