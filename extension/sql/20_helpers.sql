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

-- Work tables (pg_temp._pgcdc_*) are emptied and filled again, call after
-- call, and may live as long as the session (see _fill).  Empty one: up to 1 MB of rows are deleted; TRUNCATE would give it new files
-- (and its index and TOAST table) and make PostgreSQL plan every statement
-- that reads it again.  A larger one is truncated: deleted rows leave their
-- space behind until a VACUUM, which never comes to a temp table, so a
-- table emptied by DELETE grows by a batch each time.  (Measured, a staged
-- scd2_apply_changes of 1,000 rows: 1 MB 30.5 ms a call, 64 kB 33 ms.)
CREATE FUNCTION pgcdc._empty_temp(name text)
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF pg_relation_size(format('pg_temp.%I', name)::regclass) <= 1048576 THEN
		-- (its plan is next to nothing: not worth a prepared statement's lookup)
		EXECUTE format('DELETE FROM pg_temp.%I', name);
	ELSE
		EXECUTE format('TRUNCATE pg_temp.%I', name);
	END IF;
END
$$;

/*
 * Fill work table name with query's rows (query has parameters of types,
 * given args: SQL literals) and return how many; with rows false only make
 * it, empty.  The table is emptied and filled again by the next call, and
 * its INSERT is a prepared statement: planned once per query.  (A new table
 * every call would hold one more lock, and its catalog rows, until commit:
 * thousands of calls in one transaction, a quarantine replay or a loop over
 * batches, would run out of max_locks_per_transaction.)  A table of another
 * query (another target's columns) is put aside under the name plus its
 * query's md5, and taken back when that query comes again.
 * The tables stay for the session when the role the session logged in as,
 * not a superuser, makes them: planned once per session, not once per
 * transaction.  Otherwise they go at commit, as a table stays its maker's:
 * one a superuser kept would be in the way of every role the session
 * switches to later (SET ROLE, SET SESSION AUTHORIZATION, which only a
 * superuser's session can do), which could neither use nor rename nor drop
 * it.  A session that switches no roles (pgcdc_consumer's) says so by
 * setting pgcdc.keep_work_tables to on: then they stay whatever the role.  The md5
 * of the query a table holds (and of what the tables it reads hold) is a
 * session setting, so an aborted transaction takes it back with the table.
 */
CREATE FUNCTION pgcdc._fill(name text, query text, types text DEFAULT NULL, args text DEFAULT NULL,
							rows boolean DEFAULT true)
RETURNS bigint LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	made text := 'pgcdc.work_' || name;
	have text := current_setting(made, true);
	-- the query, and what the work tables it reads hold (s.* is another
	-- row type when the stage holds another target's columns)
	want text := md5(concat_ws(E'\n', query, types,
		(SELECT string_agg(current_setting('pgcdc.work_' || m[1], true), ',' ORDER BY m[1])
		   FROM regexp_matches(query, 'pg_temp\.(_pgcdc_[a-z_]+)', 'g') m)));
	keep boolean;
	owner name;
	sel text;
	n bigint := 0;
BEGIN
	SELECT c.relowner::regrole::name INTO owner FROM pg_class c
	 WHERE c.oid = to_regclass('pg_temp.' || quote_ident(name));
	IF owner IS NOT NULL AND NOT pg_has_role(owner, 'USAGE') THEN
		RAISE EXCEPTION 'work table pg_temp.% of this session belongs to role %', name, owner
			USING ERRCODE = '42501',
				  DETAIL = 'pgcdc keeps the work tables a role makes for the session when the session logged in as that role.',
				  HINT = format('Run DISCARD TEMP as role %s, or call this function from a session of its own.',
								quote_ident(owner));
	END IF;
	IF owner IS NULL THEN
		NULL;
	ELSIF have = want THEN
		PERFORM pgcdc._empty_temp(name);
	ELSIF have <> '' AND to_regclass('pg_temp.' || quote_ident(name || '_' || have)) IS NULL THEN
		EXECUTE format('ALTER TABLE pg_temp.%I RENAME TO %I', name, name || '_' || have);
	ELSE
		-- not ours, or its place aside is taken (by another role's)
		EXECUTE format('DROP TABLE pg_temp.%I', name);
	END IF;
	IF to_regclass('pg_temp.' || quote_ident(name)) IS NULL THEN
		IF (SELECT pg_has_role(c.relowner, 'USAGE') FROM pg_class c
			 WHERE c.oid = to_regclass('pg_temp.' || quote_ident(name || '_' || want))) THEN
			EXECUTE format('ALTER TABLE pg_temp.%I RENAME TO %I', name || '_' || want, name);
			PERFORM pgcdc._empty_temp(name);
		ELSE
			-- kept or not, decided when made (the role the session logged in
			-- as: session_user is another after SET SESSION AUTHORIZATION)
			keep := current_setting('pgcdc.keep_work_tables', true) = 'on'
					OR (SELECT NOT r.rolsuper AND r.oid = (SELECT a.usesysid
															 FROM pg_stat_get_activity(pg_backend_pid()) a)
						  FROM pg_roles r WHERE r.rolname = current_user);
			-- made with this call's rows (a table that goes at commit is made
			-- by every transaction: the query planned once, not twice); the
			-- SELECT is not kept, as the same text (s.*) gives other row
			-- types over another target's stage
			sel := pgcdc._prepared(query, types);
			EXECUTE format('CREATE TEMP TABLE %I%s AS EXECUTE %I%s WITH %s', name,
						   CASE WHEN coalesce(keep, false) THEN '' ELSE ' ON COMMIT DROP' END, sel,
						   coalesce('(' || args || ')', ''), CASE WHEN rows THEN 'DATA' ELSE 'NO DATA' END);
			GET DIAGNOSTICS n = ROW_COUNT;
			EXECUTE format('DEALLOCATE %I', sel);
			rows := false;
		END IF;
		-- for the session even when the table goes at commit: it is read
		-- only while a table of that name is there, and set whenever one comes
		PERFORM set_config(made, want, false);
	END IF;
	IF rows THEN
		EXECUTE pgcdc._count(format('INSERT INTO pg_temp.%I ', name) || query, types, args) INTO n;
	END IF;
	RETURN n;
END
$$;

-- The text of the session's prepared statement name, or NULL (C: one hash
-- lookup, where pg_prepared_statements lists them all).  It runs no SQL; its
-- search_path is pinned all the same, as every function's here.
CREATE FUNCTION pgcdc._prepared_statement(name text)
RETURNS text LANGUAGE c STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'pgcdc_prepared_statement';

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
	have text := pgcdc._prepared_statement(stmt);
BEGIN
	IF have IS DISTINCT FROM want THEN
		IF have IS NOT NULL THEN
			EXECUTE format('DEALLOCATE %I', stmt);
		END IF;
		EXECUTE want;
	END IF;
	RETURN stmt;
END
$$;

-- The command that runs query as a prepared statement (_prepared), with
-- args, SQL literals, for its parameters of types.  (EXECUTE ... USING
-- cannot pass parameters to a prepared statement.)
CREATE FUNCTION pgcdc._exec(query text, types text DEFAULT NULL, args text DEFAULT NULL)
RETURNS text LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT 'EXECUTE ' || quote_ident(pgcdc._prepared(query, types)) || coalesce('(' || args || ')', '') $$;

-- The same for an INSERT, UPDATE or DELETE, giving the number of rows it
-- wrote (GET DIAGNOSTICS sees none through EXECUTE of a prepared statement).
CREATE FUNCTION pgcdc._count(dml text, types text DEFAULT NULL, args text DEFAULT NULL)
RETURNS text LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT pgcdc._exec('WITH pgcdc_dml AS (' || dml || E'\nRETURNING 1) SELECT pg_catalog.count(*) FROM pgcdc_dml',
					   types, args)
$$;

-- The name of a session setting that holds the statements a function
-- prepared for a call of this shape: everything their text depends on (the
-- arguments, the names and columns of both relations, the source of the
-- functions in code that write them), hashed.  A later call of the same
-- shape runs them without checking and generating them again.  _shape
-- (C, shape.c) keeps it for the session until the relcache or syscache says
-- that something it read changed.
CREATE FUNCTION pgcdc._shape_of(code text[], target regclass, changes regclass, args text[])
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

CREATE FUNCTION pgcdc._shape(code text[], target regclass, changes regclass, VARIADIC args text[])
RETURNS text LANGUAGE c STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'pgcdc_shape';

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
	   (SELECT count(*) FROM unnest(stmts) s
		 WHERE s = 'pgcdc_' || md5(substr(pgcdc._prepared_statement(s),
										  length(format('PREPARE %I AS ', s)) + 1))) = n THEN
		RETURN stmts;
	END IF;
	RETURN NULL;
END
$$;

-- The query that says whether a batch of change rows is plain: ops I, U and
-- D only, none of the columns not_null null, no unchanged TOAST, no key
-- change (counted: how many rows a plain one has, NULL for another).  One pass over the routing columns only (a view over staged
-- events does not build its rows for it).  A batch that is not plain takes
-- the staged path, which also says what is wrong with a bad one.
CREATE FUNCTION pgcdc._plain_sql(changes regclass, op_column text, not_null text[],
								 counted boolean DEFAULT false)
RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT format($f$
		SELECT %6$s pg_catalog.count(*) FILTER (WHERE c.%1$I IS NULL OR c.%1$I NOT IN ('I', 'U', 'D')
			OR %2$s OR %3$s OR %4$s) = 0 %7$s
		  FROM %5$s c$f$,
		op_column,
		coalesce((SELECT string_agg(format('c.%I IS NULL', x), ' OR ') FROM unnest(not_null) x), 'false'),
		CASE WHEN pgcdc._has_column(changes, 'unchanged_toast', 'text[]')
			 THEN 'c.unchanged_toast IS NOT NULL' ELSE 'false' END,
		CASE WHEN pgcdc._has_column(changes, '_old_key', 'jsonb')
			 THEN format('(c.%I = ''U'' AND c._old_key IS NOT NULL)', op_column)
			 ELSE 'false' END,
		pgcdc._qname(changes),
		-- counted: the number of rows of a plain batch, NULL for another
		CASE WHEN counted THEN 'CASE WHEN' ELSE '' END,
		CASE WHEN counted THEN 'THEN pg_catalog.count(*) END' ELSE '' END)
$$;
