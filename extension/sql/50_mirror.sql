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
 * A plain table, which apply_mirror may MERGE into: no rules (MERGE
 * refuses them), no row security (MERGE's policies differ), no
 * inheritance or partitions.
 */
CREATE FUNCTION pgcdc._mergeable(target regclass)
RETURNS boolean LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT EXISTS (SELECT 1 FROM pg_class r WHERE r.oid = target AND r.relkind = 'r'
					  AND NOT r.relhasrules AND NOT r.relhassubclass AND NOT r.relrowsecurity)
$$;

/*
 * May the consumer COPY the rows of keys new in a batch straight into
 * mirror target, instead of merging them (consumer/born.c)?  A mergeable
 * table (a COPY would not run rules) with a unique index on key columns
 * that checks at once, so that a key the mirror has after all is refused,
 * not doubled.  Returns the transaction's now(), the sync time apply_mirror
 * writes, or NULL if not.  (PL/pgSQL keeps the plan: it runs per batch.)
 */
CREATE FUNCTION pgcdc._mirror_copy_ok(target regclass, key_columns text[])
RETURNS timestamptz LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF pgcdc._mergeable(target) AND pgcdc._unique_index_on(target, key_columns, true) THEN
		RETURN now();
	END IF;
	RETURN NULL;
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
 * Quarantined events staged in pg_temp._pgcdc_q that are older than a
 * tombstone of their key (or a truncate) in target are taken out: the row
 * they would bring back was deleted after them.
 */
CREATE FUNCTION pgcdc._bury_staged(target regclass, key_columns text[])
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	EXECUTE pgcdc._exec(format($f$
		DELETE FROM pg_temp._pgcdc_q c USING pgcdc.mirror_tombstone x
		 WHERE x.target = $1
		   AND x.key IN ('{}'::jsonb, pg_catalog.jsonb_build_object(%s))
		   AND ROW(x.source_lsn, x.source_seq) OPERATOR(pg_catalog.>)
			   ROW(c._source_lsn, c._source_seq)$f$,
		(SELECT string_agg(format('%L, c.%I', k, k), ', ' ORDER BY o)
		   FROM unnest(key_columns) WITH ORDINALITY u(k, o))),
		'text', format('%L', pgcdc._qname(target)));
END
$$;

/*
 * Soft delete, as separate batches would leave it: each key the batch ends
 * deleted (ends: its last event, pgcdc_op D) is flagged at the delete's
 * position, with the values of its last insert or update in the batch
 * (vals_from, if any, and newer than the row; toast: columns whose value
 * that event did not carry, kept from the row).
 */
CREATE FUNCTION pgcdc._soft_delete_sql(target regclass, ends text, vals_from text,
									   key_columns text[], vals text[], toast text[])
RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT format($f$
		UPDATE %1$s t SET _is_deleted = true, _source_lsn = m.pgcdc_lsn, _source_seq = m.pgcdc_lseq,
			   %2$s _synced_at = pg_catalog.now()
		  FROM %3$s m LEFT JOIN %4$s g ON %5$s
		 WHERE m.pgcdc_op OPERATOR(pg_catalog.=) 'D' AND %6$s
		   AND (t._source_lsn IS NULL OR ROW(t._source_lsn, coalesce(t._source_seq, 0))
				OPERATOR(pg_catalog.<) ROW(m.pgcdc_lsn, m.pgcdc_lseq))$f$,
		pgcdc._qname(target),
		(SELECT coalesce(string_agg(format(
			'%1$I = CASE WHEN g.pgcdc_op IS NOT NULL AND (t._source_lsn IS NULL OR '
			'ROW(t._source_lsn, coalesce(t._source_seq, 0)) OPERATOR(pg_catalog.<) ROW(g.pgcdc_lsn, g.pgcdc_lseq)) '
			'THEN %2$s ELSE t.%1$I END, ', c,
			CASE WHEN c = ANY (toast)
				 THEN format('CASE WHEN %L = ANY (g.pgcdc_ut) THEN t.%I ELSE g.%I END', c, c, c)
				 ELSE format('g.%I', c) END), ''), '') FROM unnest(vals) c),
		ends, vals_from,
		pgcdc._key_join('g', 'm', target, key_columns), pgcdc._key_join('t', 'm', target, key_columns))
$$;

-- ... and a key the batch ends deleted that the target lacks: its last
-- insert or update in the batch, inserted flagged.
CREATE FUNCTION pgcdc._soft_insert_sql(target regclass, ends text, vals_from text,
									   key_columns text[], data_cols text[])
RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT format($f$
		INSERT INTO %1$s (%2$s, _source_lsn, _source_seq, _synced_at, _is_deleted)
		SELECT %3$s, m.pgcdc_lsn, m.pgcdc_lseq, pg_catalog.now(), true
		  FROM %4$s m JOIN %5$s g ON %6$s
		 WHERE m.pgcdc_op OPERATOR(pg_catalog.=) 'D'
		   AND NOT EXISTS (SELECT 1 FROM %1$s t WHERE %7$s)$f$,
		pgcdc._qname(target), pgcdc._list(data_cols), pgcdc._list(data_cols, 'g'),
		ends, vals_from,
		pgcdc._key_join('g', 'm', target, key_columns), pgcdc._key_join('t', 'm', target, key_columns))
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
	work text;
	last_write text;
	st record;
	vals text[];
	keys text;
	last_t numeric[];
	tr record;
	tr_args text;		-- the last truncate's, as prepared statements' arguments
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
	-- soft delete: each key's last insert or update between positions $1 and $2
	last_write := format($f$
		SELECT DISTINCT ON (%1$s) s.* FROM pg_temp._pgcdc_stage s
		 WHERE s.pgcdc_op IN ('I', 'U') AND ($1 IS NULL OR s.pgcdc_seq > $1)
		   AND ($2 IS NULL OR s.pgcdc_seq < $2)
		 ORDER BY %1$s, s.pgcdc_seq DESC$f$, keys);
	inserted := 0; updated := 0; deleted := 0;

	-- the last truncate empties what is older than it
	SELECT s.pgcdc_seq, s.pgcdc_lsn, s.pgcdc_lseq INTO tr FROM pg_temp._pgcdc_stage s
	 WHERE s.pgcdc_op = 'T' ORDER BY s.pgcdc_seq DESC LIMIT 1;
	last_t := tr.pgcdc_seq;
	tr_args := format('%L, %L', tr.pgcdc_lsn, tr.pgcdc_lseq);
	IF last_t IS NOT NULL THEN
		EXECUTE pgcdc._count(format(CASE WHEN soft_delete
			THEN 'UPDATE %s t SET _is_deleted = true, _source_lsn = $2, _source_seq = $3, '
				 '_synced_at = pg_catalog.now() WHERE %s'
			ELSE 'DELETE FROM %s t WHERE %s' END,
			target, $f$(t._source_lsn IS NULL OR
				ARRAY[t._source_lsn OPERATOR(pg_catalog.-) '0/0'::pg_lsn,
					  coalesce(t._source_seq, 0)]::numeric[] < $1)$f$),
			'numeric[], pg_lsn, integer', format('%L, %L, %L', last_t, tr.pgcdc_lsn, tr.pgcdc_lseq))
		INTO n;
		deleted := deleted + n;
		IF soft_delete THEN
			-- keys the batch wrote before the truncate and the target lacks
			PERFORM pgcdc._fill_between('_pgcdc_g', last_write, NULL, last_t);
			EXECUTE pgcdc._count(pgcdc._soft_insert_sql(target,
				format('(SELECT %s, ''D''::text AS pgcdc_op, $1 AS pgcdc_lsn, $2 AS pgcdc_lseq '
					   'FROM pg_temp._pgcdc_g)', keys),
				'pg_temp._pgcdc_g', key_columns, st.data_cols), 'pg_lsn, integer', tr_args)
			INTO n;
			deleted := deleted + n;
		END IF;
		IF tomb THEN
			-- every key older than the truncate is gone
			EXECUTE pgcdc._exec(pgcdc._tombstone_sql(target, '{}',
											'(SELECT $1 AS pgcdc_lsn, $2 AS pgcdc_lseq)'),
								'pg_lsn, integer', tr_args);
		END IF;
	END IF;

	-- each key's last event after that
	work := format($f$
		SELECT DISTINCT ON (%1$s) s.* FROM pg_temp._pgcdc_stage s
		 WHERE s.pgcdc_op <> 'T' AND ($1 IS NULL OR s.pgcdc_seq > $1)
		 ORDER BY %1$s, s.pgcdc_seq DESC$f$, keys);
	PERFORM pgcdc._fill_between('_pgcdc_m', work, last_t, NULL);

	IF soft_delete THEN
		-- each key's last insert or update after the truncate (before its delete)
		PERFORM pgcdc._fill_between('_pgcdc_g', last_write, last_t, NULL);
		EXECUTE pgcdc._count(pgcdc._soft_delete_sql(target, 'pg_temp._pgcdc_m', 'pg_temp._pgcdc_g',
													key_columns, vals, st.toast_cols))
		INTO n;
		deleted := deleted + n;
		skipped := -n;
		EXECUTE pgcdc._count(pgcdc._soft_insert_sql(target, 'pg_temp._pgcdc_m', 'pg_temp._pgcdc_g',
													key_columns, st.data_cols))
		INTO n;
	ELSE
		skipped := 0;
		EXECUTE pgcdc._count(format($f$
			DELETE FROM %s t USING pg_temp._pgcdc_m m
			 WHERE m.pgcdc_op = 'D' AND %s AND %s$f$,
			target, pgcdc._key_join('t', 'm', target, key_columns), newer))
		INTO n;
	END IF;
	deleted := deleted + n;
	skipped := skipped - n;
	IF tomb THEN
		-- every key the batch ends deleted, whether or not the target had it
		EXECUTE pgcdc._exec(pgcdc._tombstone_sql(target, key_columns,
			'(SELECT * FROM pg_temp._pgcdc_m WHERE pgcdc_op OPERATOR(pg_catalog.=) ''D'')'));
	END IF;

	EXECUTE pgcdc._count(format($f$
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
		pgcdc._key_join('t', 'm', target, key_columns), newer))
	INTO updated;

	EXECUTE pgcdc._count(format($f$
		INSERT INTO %s (%s, _source_lsn, _source_seq, _synced_at%s)
		SELECT %s, m.pgcdc_lsn, m.pgcdc_lseq, pg_catalog.now()%s
		  FROM pg_temp._pgcdc_m m
		 WHERE m.pgcdc_op IN ('I', 'U')
		   AND NOT EXISTS (SELECT 1 FROM %s t WHERE %s)$f$,
		-- _is_deleted false, not the column's default (a table made by hand may have none)
		target, pgcdc._list(st.data_cols), CASE WHEN soft_delete THEN ', _is_deleted' ELSE '' END,
		pgcdc._list(st.data_cols, 'm'), CASE WHEN soft_delete THEN ', false' ELSE '' END,
		target, pgcdc._key_join('t', 'm', target, key_columns)))
	INTO inserted;

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
	c bigint[];			-- inserted, updated, deleted, keys in the batch (MERGE: rows, keys)
	before bigint[];
	merge boolean;
	by_index boolean;
	tomb boolean;
	shape text;
	stmts text[];		-- prepared: is the batch plain, the one-statement apply, the MERGE
						-- and is it plain with its rows and keys (without a MERGE: the
						-- apply and the plain query again)
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
		stmts := pgcdc._cached(shape, 4);
	END IF;
	IF stmts IS NULL THEN
		stmts := pgcdc._mirror_statements(target, changes, key_columns, soft_delete, op_column, tomb);
		IF shape IS NOT NULL THEN
			PERFORM set_config(shape, array_to_string(stmts, ' '), false);
		END IF;
	END IF;

	/* (with a MERGE, one query says whether the batch is plain and has one event per key) */
	merge := stmts[3] <> stmts[2] AND current_setting('track_counts')::boolean;
	IF merge THEN
		EXECUTE 'EXECUTE ' || quote_ident(stmts[4]) INTO c;
		plain := c[1] IS NOT NULL;
	ELSE
		EXECUTE 'EXECUTE ' || quote_ident(stmts[1]) INTO plain;
	END IF;
	IF NOT plain THEN
		RETURN QUERY SELECT * FROM pgcdc._mirror_staged(target, changes, key_columns,
														 soft_delete, op_column);
		RETURN;
	END IF;
	by_index := EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a
						  ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
						WHERE i.indrelid = target AND i.indisvalid AND a.attname = key_columns[1]);
	/*
	 * One event per key (the consumer's compacted batches) on a plain table:
	 * a MERGE, one lookup per key where the statement below makes two or
	 * three (a third less time).  It returns no counts (PostgreSQL 15), so
	 * they come from the table's statistics for this transaction.
	 */
	IF merge AND c[1] = c[2] THEN
		before := ARRAY[pg_stat_get_xact_tuples_inserted(target), pg_stat_get_xact_tuples_updated(target),
						pg_stat_get_xact_tuples_deleted(target)];
		IF by_index THEN
			PERFORM pgcdc._mirror_by_index(stmts[3], false);
		ELSE
			EXECUTE 'EXECUTE ' || quote_ident(stmts[3]);
		END IF;
		inserted := pg_stat_get_xact_tuples_inserted(target) - before[1];
		updated := pg_stat_get_xact_tuples_updated(target) - before[2];
		deleted := pg_stat_get_xact_tuples_deleted(target) - before[3];
		skipped := c[2] - inserted - updated - deleted;
		RETURN NEXT;
		RETURN;
	END IF;
	IF by_index THEN
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
CREATE FUNCTION pgcdc._mirror_by_index(stmt text, counted boolean DEFAULT true)
RETURNS bigint[] LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
	counts bigint[];
BEGIN
	IF counted THEN
		EXECUTE 'EXECUTE ' || quote_ident(stmt) INTO counts;
	ELSE
		EXECUTE 'EXECUTE ' || quote_ident(stmt);	-- the MERGE
	END IF;
	RETURN counts;
END
$$;

-- apply_mirror's checks and its statements, prepared.
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
	main text;
	keys_not_null text;
	events text;		-- the changes as each statement reads them
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
	events := format('SELECT %s, c.%I::text AS pgcdc_op, c._source_lsn AS pgcdc_lsn, '
					 'c._source_seq AS pgcdc_lseq FROM %s c',
					 pgcdc._cast_list(target, changes, data_cols, 'c'), op_column, pgcdc._qname(changes));
	keys_not_null := format('(%s) OR pgcdc._fail(''23502'', %L, %L) IS NULL',
		(SELECT string_agg(format('x.%I IS NOT NULL', k), ' AND ') FROM unnest(key_columns) k),
		format('null key in changes %s', changes),
		format('Key columns: %s.', array_to_string(key_columns, ', ')));
	main := pgcdc._prepared(format($f$
		WITH pgcdc_m AS MATERIALIZED (
			SELECT DISTINCT ON (%1$s) x.* FROM (%2$s) x
			 WHERE %11$s
			 ORDER BY %1$s, x.pgcdc_lsn DESC, x.pgcdc_lseq DESC)%15$s,
		pgcdc_d AS (%3$s RETURNING 1)%12$s%16$s,
		pgcdc_u AS (UPDATE %4$s t SET %5$s _source_lsn = m.pgcdc_lsn, _source_seq = m.pgcdc_lseq,
					 _synced_at = pg_catalog.now() %6$s
				FROM pgcdc_m m WHERE m.pgcdc_op OPERATOR(pg_catalog.<>) 'D' AND %7$s AND %8$s
			  RETURNING 1),
		pgcdc_i AS (INSERT INTO %4$s (%9$s, _source_lsn, _source_seq, _synced_at%13$s)
			  SELECT %10$s, m.pgcdc_lsn, m.pgcdc_lseq, pg_catalog.now()%14$s FROM pgcdc_m m
			   WHERE m.pgcdc_op OPERATOR(pg_catalog.<>) 'D'
				 AND NOT EXISTS (SELECT 1 FROM %4$s t WHERE %7$s)
			  RETURNING 1)
		SELECT ARRAY[(SELECT pg_catalog.count(*) FROM pgcdc_i), (SELECT pg_catalog.count(*) FROM pgcdc_u),
					 (SELECT pg_catalog.count(*) FROM pgcdc_d)%17$s, (SELECT pg_catalog.count(*) FROM pgcdc_m)]$f$,
		pgcdc._list(key_columns, 'x'), events,
		CASE WHEN soft_delete
			THEN pgcdc._soft_delete_sql(target, 'pgcdc_m', 'pgcdc_g', key_columns, vals, '{}')
			ELSE format('DELETE FROM %1$s t USING pgcdc_m m '
						'WHERE m.pgcdc_op OPERATOR(pg_catalog.=) ''D'' AND %2$s AND %3$s',
						pgcdc._qname(target), keyjoin, newer) END,
		pgcdc._qname(target),
		(SELECT coalesce(string_agg(format('%I = m.%I, ', c, c), ''), '') FROM unnest(vals) c),
		CASE WHEN soft_delete THEN ', _is_deleted = false' ELSE '' END,
		keyjoin, newer,
		pgcdc._list(data_cols), pgcdc._list(data_cols, 'm'),
		-- a null key fails the batch before anything is written
		keys_not_null,
		-- while older events are quarantined: a tombstone for every key the
		-- batch ends deleted, whether or not the target had it
		CASE WHEN tomb THEN format(', pgcdc_t AS (%s)', pgcdc._tombstone_sql(target, key_columns,
				'(SELECT * FROM pgcdc_m WHERE pgcdc_op OPERATOR(pg_catalog.=) ''D'')'))
			 ELSE '' END,
		-- _is_deleted false, not the column's default (a table made by hand may have none)
		CASE WHEN soft_delete THEN ', _is_deleted' ELSE '' END,
		CASE WHEN soft_delete THEN ', false' ELSE '' END,
		-- soft delete: each key's last insert or update (before its delete)
		CASE WHEN soft_delete THEN format($g$, pgcdc_g AS MATERIALIZED (
			SELECT DISTINCT ON (%1$s) x.* FROM (%2$s) x
			 WHERE x.pgcdc_op OPERATOR(pg_catalog.<>) 'D'
			 ORDER BY %1$s, x.pgcdc_lsn DESC, x.pgcdc_lseq DESC)$g$,
			pgcdc._list(key_columns, 'x'), events) ELSE '' END,
		CASE WHEN soft_delete THEN format(', pgcdc_s AS (%s RETURNING 1)',
			pgcdc._soft_insert_sql(target, 'pgcdc_m', 'pgcdc_g', key_columns, data_cols)) ELSE '' END,
		CASE WHEN soft_delete THEN ' + (SELECT pg_catalog.count(*) FROM pgcdc_s)' ELSE '' END));

	/*
	 * The MERGE, for batches with one event per key, and the query that
	 * says whether a batch is plain and has (its rows, NULL if not plain,
	 * and its keys): it is run instead of the plain one.  Only on a plain
	 * table without rules (MERGE refuses them) or row security (MERGE's
	 * policies differ), without soft delete or tombstones: anything else
	 * keeps the statement above (returned in its place).
	 */
	IF soft_delete OR tomb OR NOT pgcdc._mergeable(target) THEN
		RETURN ARRAY[plain, main, main, plain];
	END IF;
	RETURN ARRAY[plain, main, pgcdc._prepared(format($f$
		MERGE INTO %1$s t
		USING (SELECT x.* FROM (%2$s) x WHERE %3$s) m ON %4$s
		 WHEN MATCHED AND m.pgcdc_op OPERATOR(pg_catalog.=) 'D' AND %5$s THEN DELETE
		 WHEN MATCHED AND m.pgcdc_op OPERATOR(pg_catalog.<>) 'D' AND %5$s THEN
			  UPDATE SET %6$s _source_lsn = m.pgcdc_lsn, _source_seq = m.pgcdc_lseq, _synced_at = pg_catalog.now()
		 WHEN NOT MATCHED AND m.pgcdc_op OPERATOR(pg_catalog.<>) 'D' THEN
			  INSERT (%7$s, _source_lsn, _source_seq, _synced_at)
			  VALUES (%8$s, m.pgcdc_lsn, m.pgcdc_lseq, pg_catalog.now())$f$,
		pgcdc._qname(target), events, keys_not_null, keyjoin, newer,
		(SELECT coalesce(string_agg(format('%I = m.%I, ', c, c), ''), '') FROM unnest(vals) c),
		pgcdc._list(data_cols), pgcdc._list(data_cols, 'm'))),
		pgcdc._prepared(format($f$
		SELECT ARRAY[x.n, CASE WHEN x.n IS NOT NULL
						  THEN (SELECT pg_catalog.count(*) FROM (SELECT 1 FROM %1$s c GROUP BY %2$s) g) END]
		  FROM (%3$s) x(n)$f$,
		pgcdc._qname(changes), pgcdc._list(key_columns, 'c'),
		pgcdc._plain_sql(changes, op_column, '{_source_lsn,_source_seq}', counted => true)))];
END
$$;
