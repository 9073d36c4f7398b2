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

-- Does rel have a valid, non-partial unique index on columns all among cols
-- (one that checks at once, if immediate)?  Two rows with equal cols are
-- then refused.
CREATE FUNCTION pgcdc._unique_index_on(rel regclass, cols text[], immediate boolean)
RETURNS boolean LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT EXISTS (SELECT 1 FROM pg_index i
					WHERE i.indrelid = rel AND i.indisunique AND i.indisvalid
					  AND (i.indimmediate OR NOT immediate)
					  AND i.indpred IS NULL AND i.indexprs IS NULL
					  AND (SELECT bool_and(a.attname::text = ANY (cols))
							 FROM unnest(i.indkey::int2[]) k(attnum)
							 JOIN pg_attribute a ON a.attrelid = rel AND a.attnum = k.attnum))
$$;

-- Does rel have a unique, non-partial index on a subset of cols, all NOT NULL?
-- Then cols identify rows and need no duplicate check.
CREATE FUNCTION pgcdc._unique_key(rel regclass, cols text[])
RETURNS boolean LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT NOT EXISTS (SELECT 1 FROM pgcdc._columns(rel) c
						WHERE c.attname = ANY (cols) AND NOT c.notnull)
	   AND pgcdc._unique_index_on(rel, cols, false)
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
	IF valid_at IS NULL THEN
		RAISE EXCEPTION 'valid_at must not be null' USING ERRCODE = '22004';
	ELSIF NOT isfinite(valid_at) THEN
		RAISE EXCEPTION 'valid_at must be a finite time, not %', valid_at USING ERRCODE = '22023';
	END IF;
	IF hard_deletes IS NULL THEN
		RAISE EXCEPTION 'hard_deletes must not be null' USING ERRCODE = '22004';
	ELSIF hard_deletes NOT IN ('ignore', 'invalidate', 'new_record') THEN
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
	SELECT %12$s,
		   -- a key back after its versions were closed: not before the last one ended
		   CASE WHEN d.pgcdc_kind <> 'new'
					 OR $1 >= coalesce((SELECT max(h._valid_to) FROM %1$s h WHERE %13$s), '-infinity')
				THEN $1
				ELSE pgcdc._fail('22023',
					pg_catalog.format('valid_at %%s is earlier than the end of the last version of key %%s in %%s',
									  $1, ROW(%16$s)::text, %9$L),
					NULL, 'Versions of a key never overlap; pass a later valid_at.') END,
		   'infinity', true, false,
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
		pgcdc._list(data_cols, 'h'),
		pgcdc._list(key_columns, 'd'));
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
