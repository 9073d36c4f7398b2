/*
 * snapshot_table.c
 *		One table map's copy at the snapshot, in a child process of
 *		snapshot.c: the rows are streamed with COPY from the exported
 *		snapshot into a staging table typed as the target, as inserts at the
 *		slot's consistent point; the pipeline's rules and the map's key check
 *		run over them, and the map's apply function applies them, all in one
 *		target transaction.
 *
 *		If the target refuses rows (a value its type refuses, a constraint),
 *		the copy is taken again from the same snapshot with each row
 *		numbered, and applied by halves inside savepoints, as a failing
 *		streamed batch is (apply.c):
 *		the rows that fail alone are quarantined as 'I' events at the
 *		snapshot's position with their SQLSTATE, and the rest applied.  An
 *		append map's rows are numbered from the start and go the same way.
 */
#include "postgres_fe.h"

#include "consumer.h"

/*
 * More refused rows than this in one table say the target does not fit the
 * table (a type or constraint refusing much of it), not that a few rows are
 * bad: the copy fails instead of quarantining row after row.
 */
#define MAX_REFUSED_ROWS 1000

volatile sig_atomic_t snapshot_child_stop = 0;
PGcancel   *volatile snapshot_child_cancel[2];

typedef struct Copy Copy;

/* One table map's copy. */
struct Copy
{
	const char *source_conninfo;
	const char *snapshot_name;
	Pipeline   *p;
	TableMap   *m;
	PGconn	   *src;			/* in the exported snapshot */
	PGconn	   *dst;			/* in the copy's transaction */
	char		lsn[32];		/* the consistent point: each row's position */
	const char *ts;				/* and its time */
	long		rows;
	long		refused;		/* rows quarantined because the target refused them */
	long		ruled;			/* an append map's rows quarantined by a rule */
	const char *keys;			/* the rows' key columns (text[]), to name a row */
	bool		finding;		/* applying by halves: the rule counts are of parts */
	/* applying by halves: rows lo..hi of pgcdc_snapshot_json into the target */
	bool		(*apply) (Copy *c, const char *lo, const char *hi);
	const char *fill;			/* (mirror, scd2: the staging of rows lo..hi) */
	bool		indexed;		/* pgcdc_snapshot_json has its index on pgcdc_ord */
};

/* A source connection reading the exported snapshot. */
static PGconn *
source_open(Copy *c)
{
	PGconn	   *src = target_connect(c->source_conninfo);
	char	   *lit;
	char	   *sql;
	bool		ok;

	if (src == NULL)
		return NULL;
	snapshot_child_cancel[0] = PQgetCancel(src);
	lit = PQescapeLiteral(src, c->snapshot_name, strlen(c->snapshot_name));
	sql = psprintf("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT %s", lit);
	ok = exec_cmd(src, sql);
	PQfreemem(lit);
	free(sql);
	if (!ok)
	{
		/* the exporting session is gone (or the server): the snapshot is taken again */
		PQfinish(src);
		return NULL;
	}
	return src;
}

/* Stream the rows of query on the source into table (with its column list) in the target. */
static bool
copy_rows(Copy *c, const char *query, const char *into)
{
	PQExpBuffer sql = createPQExpBuffer();
	PGresult   *res;
	char	   *buf;
	int			r = 0;
	int64_t		last_log = now_us();
	bool		ok = true;

	c->rows = 0;
	appendPQExpBuffer(sql, "COPY (%s) TO STDOUT", query);
	res = PQexec(c->src, sql->data);
	if (PQresultStatus(res) != PGRES_COPY_OUT)
	{
		keep_sql_error(c->src, res);
		log_msg(LOG_ERROR, "could not read %s", c->m->source_table);
		PQclear(res);
		destroyPQExpBuffer(sql);
		return false;
	}
	PQclear(res);
	resetPQExpBuffer(sql);
	appendPQExpBuffer(sql, "COPY %s FROM STDIN", into);
	res = PQexec(c->dst, sql->data);
	destroyPQExpBuffer(sql);
	if (PQresultStatus(res) != PGRES_COPY_IN)
	{
		keep_sql_error(c->dst, res);
		PQclear(res);
		return false;
	}
	PQclear(res);

	while (!snapshot_child_stop && (r = PQgetCopyData(c->src, &buf, 0)) > 0)
	{
		if (PQputCopyData(c->dst, buf, r) != 1)
		{
			ok = false;
			PQfreemem(buf);
			break;
		}
		PQfreemem(buf);
		c->rows++;
		if (snapshot_child_stop)
		{
			ok = false;
			break;
		}
		if ((c->rows & 0x3FFF) == 0 && now_us() - last_log > 5000000)
		{
			log_msg(LOG_INFO, "snapshot of %s: %ld rows copied", c->m->source_table, c->rows);
			last_log = now_us();
		}
	}
	if (PQputCopyEnd(c->dst, ok ? NULL : "snapshot interrupted") != 1)
		ok = false;
	res = PQgetResult(c->dst);
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		if (!snapshot_child_stop)
			keep_sql_error(c->dst, res);
		ok = false;
	}
	PQclear(res);
	while ((res = PQgetResult(c->dst)) != NULL)
		PQclear(res);

	/*
	 * An interrupted COPY OUT cannot be drained (PQgetResult would return
	 * PGRES_COPY_OUT forever): the connection is closed instead, by the
	 * caller, or reopened to copy again (source_open).
	 */
	if (r == -1)
		while ((res = PQgetResult(c->src)) != NULL)
			PQclear(res);
	else
		ok = false;
	return ok;
}

/* res: a count of copied rows sent to the quarantine, for `why` */
static bool
log_quarantined(Copy *c, PGresult *res, const char *why)
{
	if (res == NULL)
		return false;
	if (!c->finding && atol(PQgetvalue(res, 0, 0)) > 0)
		log_msg(LOG_INFO, "snapshot of %s into %s: %s rows %s and are quarantined",
				c->m->source_table, c->m->target, PQgetvalue(res, 0, 0), why);
	PQclear(res);
	return true;
}

/* The pipeline's rules hold for copied rows as for streamed ones. */
static bool
snapshot_rules(Copy *c)
{
	const char *params[3] = {c->p->name, c->m->map_table, c->m->target};

	return log_quarantined(c, exec_ok(c->dst, "SELECT pgcdc.apply_rules($1, $2, 'pg_temp.pgcdc_snapshot_changes', $3, 'op')",
									  3, params), "fail a rule");
}

/*
 * A copied row with NULL in a key column the map names cannot be applied
 * (streamed, such an event is quarantined): quarantine it as an insert at
 * the snapshot's position, and apply the rest.
 */
static bool
snapshot_null_keys(Copy *c)
{
	TableMap   *m = c->m;
	const char *params[6] = {c->p->name, m->map_table, m->target, m->key_columns,
	m->source_schema, m->source_name};
	PQExpBuffer sql;
	bool		ok;

	if (m->key_columns == NULL)
		return true;			/* the source's identity: never NULL */
	sql = createPQExpBuffer();
	appendPQExpBufferStr(sql, "WITH bad AS (DELETE FROM pg_temp.pgcdc_snapshot_changes c WHERE ");
	if (m->nkeys == 0)			/* a key column that is no data column (the apply will say) */
		appendPQExpBufferStr(sql, "EXISTS (SELECT FROM pg_catalog.unnest($4::text[]) k "
							 "WHERE COALESCE(pg_catalog.to_jsonb(c) OPERATOR(pg_catalog.->) k, 'null') "
							 "OPERATOR(pg_catalog.=) 'null'::pg_catalog.jsonb)");
	for (int k = 0; k < m->nkeys; k++)
	{
		const char *col = m->colnames[m->keyidx[k]];
		char	   *ident = PQescapeIdentifier(c->dst, col, strlen(col));

		appendPQExpBuffer(sql, "%sc.%s IS NULL", k > 0 ? " OR " : "", ident ? ident : "\"?\"");
		PQfreemem(ident);
	}
	appendPQExpBufferStr(sql,
						 " RETURNING pg_catalog.to_jsonb(c) AS r) "
						 "SELECT pg_catalog.count(pgcdc.quarantine_event($1, $2, $3, "
						 "  pg_catalog.jsonb_build_object('op', 'I', 'commit_lsn', r OPERATOR(pg_catalog.->) '_source_lsn', "
						 "    'seq', 0, 'ts', r OPERATOR(pg_catalog.->) '_commit_ts', 'schema', $5::text, 'table', $6::text, "
						 "    'new', r OPERATOR(pg_catalog.-) '{op,_source_lsn,_source_seq,_commit_ts}'::text[]), "
						 "  '23502', pg_catalog.format('null value in a key column of %s', $2::text), "
						 "  pg_catalog.format('The table map''s key columns are %s.', $4::text))) FROM bad");
	ok = log_quarantined(c, exec_ok(c->dst, sql->data, 6, params), "have a NULL key");
	destroyPQExpBuffer(sql);
	return ok;
}

/* The rows in pg_temp.pgcdc_snapshot_changes through the rules into the target. */
static bool
apply_rows(Copy *c)
{
	TableMap   *m = c->m;
	const char *params[3] = {m->target, m->key_columns,
		m->kind == MAP_MIRROR ? (m->soft_delete ? "true" : "false") : m->track_columns};
	char	   *what;
	PGresult   *res;

	if (!snapshot_rules(c) || !snapshot_null_keys(c))
		return false;
	what = psprintf("snapshot of %s into %s: applying", m->source_table, m->target);
	if (m->kind == MAP_MIRROR)
		res = exec_ok_progress(c->dst, "SELECT pgcdc.apply_mirror($1::pg_catalog.regclass, "
							   "'pg_temp.pgcdc_snapshot_changes', $2::text[], $3::boolean, 'op')",
							   3, params, what);
	else
		res = exec_ok_progress(c->dst, "SELECT pgcdc.scd2_apply_changes($1::pg_catalog.regclass, "
							   "'pg_temp.pgcdc_snapshot_changes', $2::text[], '_source_lsn,_source_seq', 'op', "
							   "$3::text[], '_commit_ts')", 3, params, what);
	free(what);
	PQclear(res);
	return res != NULL;
}

/*
 * Append rows lo..hi of the copy, kept whole as jsonb, one 'R' (read) event
 * each, numbered in the copy's order.
 */
static bool
append_range(Copy *c, const char *lo, const char *hi)
{
	const char *params[5] = {c->lsn, c->ts, c->keys, lo, hi};
	char	   *what;
	char	   *sql;
	PGresult   *res;
	long		ruled;

	/* the rules hold for copied rows as for streamed events (quarantined as inserts) */
	if ((ruled = append_rules(c->dst, c->p, c->m, "pg_temp.pgcdc_snapshot_json", c->lsn, c->ts, lo, hi)) < 0)
		return false;
	what = psprintf("snapshot of %s into %s: applying", c->m->source_table, c->m->target);
	/* _key as a streamed event's: the key columns (none: null) */
	sql = psprintf("INSERT INTO %s (_op, _source_lsn, _source_seq, _commit_ts, _key, _new, _received_at) "
				   "SELECT 'R', $1::pg_catalog.pg_lsn, s.pgcdc_ord, $2::timestamptz, "
				   "(SELECT pg_catalog.jsonb_object_agg(k, s.pgcdc_row OPERATOR(pg_catalog.->) k) "
				   "   FROM pg_catalog.unnest($3::text[]) k), "
				   "s.pgcdc_row, pg_catalog.now() FROM pg_temp.pgcdc_snapshot_json s "
				   "WHERE s.pgcdc_ord BETWEEN $4::bigint AND $5::bigint",
				   c->m->target);
	res = exec_ok_progress(c->dst, sql, 5, params, what);
	free(sql);
	free(what);
	PQclear(res);
	/* (a part that fails is rolled back, its rule failures with it) */
	if (res != NULL)
		c->ruled += ruled;
	return res != NULL;
}

static bool apply_range(Copy *c, long lo, long hi);

/* After a copy applied by halves: how many rows went to the quarantine. */
static void
log_refused(Copy *c, bool ok)
{
	if (ok && c->refused > 0)
		log_msg(LOG_INFO, "snapshot of %s into %s: %ld rows the target refuses are quarantined, the other %ld applied",
				c->m->source_table, c->m->target, c->refused, c->rows - c->refused - c->ruled);
}

/*
 * An append map's rows: numbered from the start, applied together, and if
 * the target refuses some (a constraint of its own), by halves.
 */
static bool
copy_append(Copy *c)
{
	TableMap   *m = c->m;
	char	   *query = psprintf("SELECT pg_catalog.row_number() OVER (), NULL, pg_catalog.to_jsonb(t) FROM %s t",
								 m->source_table);
	bool		ok;

	ok = exec_cmd(c->dst, "CREATE TEMP TABLE pgcdc_snapshot_json (pgcdc_ord bigint, pgcdc_rec text, pgcdc_row jsonb) "
				  "ON COMMIT DROP") &&
		copy_rows(c, query, "pg_temp.pgcdc_snapshot_json");
	free(query);
	if (!ok)
		return false;
	c->keys = m->key_columns ? m->key_columns : source_identity(c->src, m->source_table, NULL);
	c->apply = append_range;
	ok = c->rows == 0 || apply_range(c, 1, c->rows);
	if (ok && c->ruled > 0)
		log_msg(LOG_INFO, "snapshot of %s into %s: %ld rows fail a rule and are quarantined",
				m->source_table, m->target, c->ruled);
	log_refused(c, ok);
	return ok;
}

/*
 * Errors that are the rows' doing: a value a type refuses (class 22), a
 * constraint (23), a trigger's exception (P0), a view's check option (44).
 * Others (a missing column, a privilege) would fail for every row alike.
 */
static bool
error_is_the_rows(const SqlError *e)
{
	return strncmp(e->code, "22", 2) == 0 || strncmp(e->code, "23", 2) == 0 ||
		strncmp(e->code, "P0", 2) == 0 || strncmp(e->code, "44", 2) == 0;
}

/*
 * Record copied row ord in the quarantine, with the error it raised alone;
 * log the first few by their key.
 */
static bool
quarantine_row(Copy *c, const char *ord, const SqlError *e)
{
	/* an append log holds each row once, by position: its number tells them apart */
	const char *seq = c->m->kind == MAP_APPEND ? ord : "0";
	const char *params[13] = {c->p->name, c->m->map_table, c->m->target, c->lsn, c->ts,
		c->m->source_schema, c->m->source_name, e->code, e->message, e->detail[0] ? e->detail : NULL, ord,
	c->keys, seq};
	PGresult   *res = exec_ok(c->dst,
							  "SELECT pgcdc.quarantine_event($1, $2, $3, "
							  "  pg_catalog.jsonb_build_object('op', 'I', 'commit_lsn', $4::pg_catalog.pg_lsn, "
							  "    'seq', $13::integer, 'ts', $5::timestamptz, 'schema', $6::text, 'table', $7::text, "
							  "    'new', s.pgcdc_row), $8, $9, $10), "
							  "  (SELECT pg_catalog.jsonb_object_agg(k, s.pgcdc_row OPERATOR(pg_catalog.->) k) "
							  "     FROM pg_catalog.unnest($12::text[]) k) "
							  "FROM pg_temp.pgcdc_snapshot_json s WHERE s.pgcdc_ord OPERATOR(pg_catalog.=) $11::bigint",
							  13, params);

	if (res == NULL)
		return false;
	if (++c->refused <= 10)
		log_msg(LOG_INFO, "snapshot of %s into %s: the row %s is quarantined: %s (SQLSTATE %s)",
				c->m->source_table, c->m->target, PQgetisnull(res, 0, 1) ? ord : PQgetvalue(res, 0, 1),
				e->message, e->code);
	PQclear(res);
	return true;
}

/* Stage the copied rows lo..hi of a mirror or scd2 map (c->fill) and apply them. */
static bool
changes_range(Copy *c, const char *lo, const char *hi)
{
	const char *params[2] = {lo, hi};
	PGresult   *res;
	bool		ok;

	ok = exec_cmd(c->dst, "DELETE FROM pg_temp.pgcdc_snapshot_changes");
	res = ok ? exec_ok(c->dst, c->fill, 2, params) : NULL;
	ok = res != NULL && apply_rows(c);
	PQclear(res);
	return ok;
}

/*
 * Apply the copied rows lo..hi (their numbers in pgcdc_snapshot_json) in a
 * savepoint; if that fails for the rows' sake, the two halves, and so on:
 * a row that fails alone is quarantined with its error.
 */
static bool
apply_range(Copy *c, long lo, long hi)
{
	char		l[24],
				h[24];
	SqlError	e;
	bool		ok;

	snprintf(l, sizeof(l), "%ld", lo);
	snprintf(h, sizeof(h), "%ld", hi);
	if (!exec_savepoint(c->dst, "SAVEPOINT", "pgcdc_rows"))
		return false;
	quiet_sql_errors = true;
	ok = c->apply(c, l, h);
	quiet_sql_errors = false;
	if (ok)
		return exec_savepoint(c->dst, "RELEASE SAVEPOINT", "pgcdc_rows");
	e = last_sql_error;
	/* (only the rows' errors are worth halving for: another fails them all) */
	if (snapshot_child_stop || sql_error_is_transient(&e) || PQstatus(c->dst) != CONNECTION_OK ||
		!error_is_the_rows(&e))
	{
		if (!snapshot_child_stop)
			log_msg(LOG_ERROR, "%s (SQLSTATE %s)", e.message, e.code);
		return false;
	}
	if (!exec_savepoint(c->dst, "ROLLBACK TO SAVEPOINT", "pgcdc_rows") ||
		!exec_savepoint(c->dst, "RELEASE SAVEPOINT", "pgcdc_rows"))
		return false;
	if (hi > lo)
	{
		/* the halves read a part of the copy: by its number */
		if (!c->indexed &&
			!exec_cmd(c->dst, "CREATE INDEX ON pg_temp.pgcdc_snapshot_json (pgcdc_ord)"))
			return false;
		c->indexed = true;
		return apply_range(c, lo, lo + (hi - lo) / 2) &&
			apply_range(c, lo + (hi - lo) / 2 + 1, hi);
	}
	if (c->refused >= MAX_REFUSED_ROWS)
	{
		log_msg(LOG_ERROR, "target %s refuses more than %d rows of %s, the last: %s (SQLSTATE %s)",
				c->m->target, MAX_REFUSED_ROWS, c->m->source_table, e.message, e.code);
		return false;
	}
	return quarantine_row(c, l, &e);
}

/*
 * The target refused the copy: take it again from the snapshot, numbered,
 * and apply it by halves (apply_range).
 */
static bool
find_refused(Copy *c)
{
	TableMap   *m = c->m;
	char	   *query;
	char	   *shape;
	char	   *fill;
	bool		ok;

	if (PQtransactionStatus(c->src) != PQTRANS_INTRANS)
	{
		PGcancel   *cancel = snapshot_child_cancel[0];

		/*
		 * Left in the middle of its COPY (libpq reports the target's error
		 * only at the end, so only a broken connection does this): read
		 * the snapshot on a new connection.
		 */
		log_msg(LOG_DEBUG, "snapshot of %s: reading it again on a new connection", m->source_table);
		snapshot_child_cancel[0] = NULL;
		PQfreeCancel(cancel);
		PQfinish(c->src);
		if ((c->src = source_open(c)) == NULL)
			return false;
	}
	if (!exec_savepoint(c->dst, "ROLLBACK TO SAVEPOINT", "pgcdc_copy"))
		return false;
	/*
	 * Each row numbered, as its record's text (turned back into the target's
	 * types by record_in: each column's input function and typmod, as COPY
	 * does) and as JSON (the quarantined event's "new").
	 */
	query = psprintf("SELECT pg_catalog.row_number() OVER (), s::text, pg_catalog.to_jsonb(s) "
					 "FROM (SELECT %s FROM %s) s", m->data_columns, m->source_table);
	shape = psprintf("CREATE TEMP TABLE pgcdc_snapshot_shape (%s) ON COMMIT DROP; "
					 "CREATE TEMP TABLE pgcdc_snapshot_json (pgcdc_ord bigint, pgcdc_rec text, pgcdc_row jsonb) "
					 "ON COMMIT DROP", m->data_types);
	ok = exec_cmd(c->dst, shape) &&
		copy_rows(c, query, "pg_temp.pgcdc_snapshot_json");
	free(query);
	free(shape);
	c->fill = fill = psprintf("INSERT INTO pg_temp.pgcdc_snapshot_changes (%s) SELECT (s.r).* "
					"FROM (SELECT j.pgcdc_rec::pg_temp.pgcdc_snapshot_shape AS r FROM pg_temp.pgcdc_snapshot_json j "
					"      WHERE j.pgcdc_ord BETWEEN $1::bigint AND $2::bigint OFFSET 0) s",
					m->data_columns);
	c->keys = m->key_columns ? m->key_columns : source_identity(c->src, m->source_table, NULL);
	c->finding = true;
	c->apply = changes_range;
	ok = ok && (c->rows == 0 || apply_range(c, 1, c->rows));
	c->finding = false;
	c->fill = NULL;
	free(fill);
	log_refused(c, ok);
	return ok;
}

/* The rows of a mirror or scd2 map: copied typed, then applied; by halves if refused. */
static bool
copy_changes(Copy *c)
{
	TableMap   *m = c->m;
	char	   *sql;
	char	   *into;
	bool		ok;

	/* the rows arrive as the inserts of the snapshot, at its consistent point */
	sql = psprintf("CREATE TEMP TABLE pgcdc_snapshot_changes (%s, op text DEFAULT 'I', "
				   "_source_lsn pg_catalog.pg_lsn DEFAULT '%s', _source_seq integer DEFAULT 0, "
				   "_commit_ts timestamptz DEFAULT '%s') ON COMMIT DROP; SAVEPOINT pgcdc_copy",
				   m->data_types, c->lsn, c->ts);
	ok = exec_cmd(c->dst, sql);
	free(sql);
	if (!ok)
		return false;

	sql = psprintf("SELECT %s FROM %s", m->data_columns, m->source_table);
	quiet_sql_errors = true;
	into = psprintf("pg_temp.pgcdc_snapshot_changes (%s)", m->data_columns);
	ok = copy_rows(c, sql, into);
	free(sql);
	free(into);
	if (ok)
	{
		log_msg(LOG_INFO, "snapshot of %s into %s: %ld rows copied, applying them",
				m->source_table, m->target, c->rows);
		ok = apply_rows(c);
	}
	quiet_sql_errors = false;
	if (ok || snapshot_child_stop)
		return ok;
	if (!error_is_the_rows(&last_sql_error) || PQstatus(c->dst) != CONNECTION_OK)
	{
		log_msg(LOG_ERROR, "%s (SQLSTATE %s)", last_sql_error.message, last_sql_error.code);
		return false;
	}
	log_msg(LOG_INFO, "snapshot of %s into %s: the target refuses rows (SQLSTATE %s: %s); finding them",
			m->source_table, m->target, last_sql_error.code, last_sql_error.message);
	return find_refused(c);
}

/* Copy map i in a child process; returns the exit status. */
int
snapshot_table(const char *source_conninfo, const char *target_conninfo, Pipeline *p, int i,
			   const char *snapshot_name, Lsn lsn, const char *snapshot_ts)
{
	Copy		c = {source_conninfo, snapshot_name, p, &p->maps[i]};
	TableMap   *m = c.m;
	char	   *sql;
	bool		ok;
	int			status;

	format_lsn(lsn, c.lsn);
	c.ts = snapshot_ts;
	c.src = source_open(&c);
	c.dst = c.src ? target_connect(target_conninfo) : NULL;
	if (c.dst == NULL)
	{
		if (c.src)
			PQfinish(c.src);
		return SNAPSHOT_CHILD_TRANSIENT;
	}
	snapshot_child_cancel[1] = PQgetCancel(c.dst);

	/* the target starts empty: from here on it equals the source */
	sql = psprintf("BEGIN; TRUNCATE %s", m->target);
	ok = exec_cmd(c.dst, sql);
	free(sql);
	if (ok)
		ok = m->kind == MAP_APPEND ? copy_append(&c) : copy_changes(&c);
	/*
	 * A target made for this copy is complete with it, and says where it
	 * was taken; the initial snapshot clears such a mark left by an
	 * earlier pipeline (its position may be another server's).
	 */
	if (m->copy_now)
		ok = ok && target_copy_done(c.dst, m, lsn);
	else if (m->created && m->copied_at != InvalidLsn)
		ok = ok && target_copy_done(c.dst, m, InvalidLsn);
	ok = ok && !snapshot_child_stop && exec_cmd(c.dst, "COMMIT");
	if (ok)
		log_msg(LOG_INFO, "snapshot of %s into %s: %ld rows", m->source_table, m->target, c.rows);
	else if (snapshot_child_stop)
		log_msg(LOG_INFO, "snapshot of %s into %s stopped, nothing of it kept", m->source_table, m->target);
	else
		log_msg(LOG_ERROR, "snapshot of %s into %s failed", m->source_table, m->target);
	status = ok ? EXIT_DONE : EXIT_ERROR;
	if (!ok && (snapshot_child_stop || c.src == NULL || PQstatus(c.src) == CONNECTION_BAD ||
				PQstatus(c.dst) == CONNECTION_BAD || sql_error_is_transient(&last_sql_error)))
		status = SNAPSHOT_CHILD_TRANSIENT;
	PQfinish(c.src);
	PQfinish(c.dst);
	return status;
}
