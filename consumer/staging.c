/*
 * staging.c
 *		A batch's rows into its target session: the session's staging
 *		tables, one COPY per table map (for mirror maps, less the rows a
 *		later event on the same key makes moot: compact.c), rows the
 *		target's types refuse found by halves and quarantined, and which
 *		maps have rules (read as the batch is staged).  Runs in the batch's
 *		apply thread (target_sessions.c), on its session's connection.
 */
#include "postgres_fe.h"

#include "batch_int.h"

/* The session's staging tables: one per map. */
static bool
create_session_tables(Batch *b, int k)
{
	PGconn	   *conn = b->lane_of[k]->conn;
	PQExpBuffer sql = createPQExpBuffer();
	bool		ok;
	int			i;

	for (i = 0; i < b->p->nmaps; i++)
	{
		TableMap   *m = &b->p->maps[i];

		/* an append map's rows are the events' JSON */
		if (m->kind == MAP_APPEND)
		{
			appendPQExpBuffer(sql,
							  "DROP TABLE IF EXISTS pg_temp.pgcdc_events_%d; "
							  "CREATE TEMP TABLE pgcdc_events_%d (pgcdc_ord bigint NOT NULL, op text NOT NULL, "
							  "_source_lsn pg_catalog.pg_lsn, _source_seq integer, _commit_ts timestamptz, raw text NOT NULL) "
							  "ON COMMIT DELETE ROWS;",
							  i, i);
			continue;
		}

		/*
		 * The others' are the change rows the apply functions read: the
		 * routing fields, the map's data columns typed as the target's
		 * (COPY parses each value once, with the column's input function:
		 * no JSON work on the server), and where the event's JSON is in
		 * the batch's file.  pgcdc_one_N holds one of them when a failing
		 * batch is retried event by event; it is emptied before each use
		 * (apply.c), not at commit: PostgreSQL truncates every ON COMMIT
		 * DELETE ROWS table (heap, TOAST table and its index) at each commit
		 * that touched a temp table, a fixed cost per batch that was a
		 * twelfth of the target's CPU under a trickle of small transactions.
		 */
		appendPQExpBuffer(sql,
						  "DROP TABLE IF EXISTS pg_temp.pgcdc_changes_%d, pg_temp.pgcdc_one_%d; "
						  "CREATE TEMP TABLE pgcdc_changes_%d (pgcdc_ord bigint NOT NULL, op text NOT NULL, "
						  "_source_lsn pg_catalog.pg_lsn, _source_seq integer, _commit_ts timestamptz, "
						  "unchanged_toast text[], _old_key jsonb, pgcdc_raw_off bigint, pgcdc_raw_len integer, %s) "
						  "ON COMMIT DELETE ROWS; "
						  "CREATE TEMP TABLE pgcdc_one_%d (LIKE pg_temp.pgcdc_changes_%d);",
						  i, i, i, m->data_types, i, i);
	}
	ok = exec_cmd(conn, sql->data);
	destroyPQExpBuffer(sql);
	b->lane_of[k]->tables_ready = ok;
	return ok;
}

/* Start the COPY of map i's rows (in the batch's open target transaction). */
static bool
start_copy(Batch *b, int k, int i)
{
	PGconn	   *conn = b->lane_of[k]->conn;
	TableMap   *m = &b->p->maps[i];
	PQExpBuffer sql = createPQExpBuffer();
	PGresult   *res;
	bool		ok;

	/* text format, \x1f between fields (copy_field): cheaper to parse than quoted CSV */
	if (m->kind == MAP_APPEND)
		appendPQExpBuffer(sql, "COPY pg_temp.pgcdc_events_%d (pgcdc_ord, op, _source_lsn, _source_seq, _commit_ts, raw) ", i);
	else
		appendPQExpBuffer(sql, "COPY pg_temp.pgcdc_changes_%d (pgcdc_ord, op, _source_lsn, _source_seq, "
						  "_commit_ts, unchanged_toast, _old_key, pgcdc_raw_off, pgcdc_raw_len, %s) ",
						  i, m->data_columns);
	appendPQExpBufferStr(sql, "FROM STDIN (FORMAT text, DELIMITER E'\\x1f')");
	res = PQexec(conn, sql->data);
	destroyPQExpBuffer(sql);
	ok = PQresultStatus(res) == PGRES_COPY_IN;
	if (!ok)
		log_msg(LOG_ERROR, "could not stage events in the target: %s", conn_error(conn));
	PQclear(res);
	b->lane_of[k]->copying = ok;
	return ok;
}

/*
 * Which maps have rules, read once per batch as it is staged (rules may
 * change at any time; one added later applies from the next batch): such
 * maps get every event, not only each key's last, and their commit times.
 */
static bool
load_rules(Batch *b, int k)
{
	PGconn	   *conn = b->lane_of[k]->conn;
	const char *params[1] = {b->p->name};
	PGresult   *res = exec_ok(conn, "SELECT DISTINCT source_table FROM pgcdc.rule WHERE pipeline = $1",
							  1, params);

	if (res == NULL)
		return false;
	for (int i = 0; i < b->p->nmaps; i++)
	{
		b->lane_of[k]->has_rules[i] = false;
		for (int r = 0; r < PQntuples(res); r++)
			if (strcmp(PQgetvalue(res, r, 0), b->p->maps[i].map_table) == 0)
				b->lane_of[k]->has_rules[i] = true;
	}
	PQclear(res);
	return true;
}

static bool
end_copy(Batch *b, int k)
{
	PGconn	   *conn = b->lane_of[k]->conn;
	PGresult   *res;
	bool		ok;

	b->lane_of[k]->copying = false;
	if (PQputCopyEnd(conn, NULL) != 1)
	{
		log_msg(LOG_ERROR, "could not stage events in the target: %s", conn_error(conn));
		return false;
	}
	res = PQgetResult(conn);
	ok = PQresultStatus(res) == PGRES_COMMAND_OK;
	if (!ok)
		keep_sql_error(conn, res);
	PQclear(res);
	while ((res = PQgetResult(conn)) != NULL)
		PQclear(res);
	return ok;
}

/*
 * A change line less its commit time (the fifth field, NULL instead) into
 * row.  Mirror maps without rules do not read it (scd2 versions and rule
 * quarantines do), and parsing it as timestamptz was about a seventh of the
 * COPY's time.
 */
static void
drop_commit_ts(PQExpBuffer row, const char *line, size_t len)
{
	const char *end = line + len;
	const char *from = line;
	const char *to = NULL;

	resetPQExpBuffer(row);
	for (int f = 0; f < 4 && from != NULL; f++)
	{
		from = memchr(from, '\x1f', end - from);
		if (from != NULL)
			from++;
	}
	if (from != NULL)
		to = memchr(from, '\x1f', end - from);
	if (to == NULL)
	{
		appendBinaryPQExpBuffer(row, line, len);
		return;
	}
	appendBinaryPQExpBuffer(row, line, from - line);
	appendPQExpBufferStr(row, "\\N");
	appendBinaryPQExpBuffer(row, to, end - to);
}

/*
 * COPY map i's rows of job k to the target, less the moot ones (row and
 * tsless: buffers for a line read from a file, and one less its commit
 * time).
 */
static bool
copy_spill(Batch *b, int k, int i, PQExpBuffer row, PQExpBuffer tsless)
{
	PGconn	   *conn = b->lane_of[k]->conn;
	char		chunk[65536];
	Spool	   *spill = b->spill[k];
	size_t		n = 0;
	long		line = 0;
	SpillHeader h;
	const char *p;
	bool		rules = b->lane_of[k]->has_rules[i];	/* every line goes: each is checked */
	bool		no_ts = b->p->maps[i].kind == MAP_MIRROR && !rules;

	if (!start_copy(b, k, i))
		return false;
	spool_rewind(spill);
	while ((p = spool_read(spill, sizeof(h), (char *) &h)) != NULL)
	{
		const char *data;
		size_t		len;

		if (p != (char *) &h)
			memcpy(&h, p, sizeof(h));
		line++;					/* numbered across maps, as compact_line saw them */
		if (h.map != i || (!rules && compact_dead(b->compact[k], line)))
		{
			if (!spool_skip(spill, h.len))
				break;
			if (h.map == i)
				b->jobs[k].moot++;
			continue;
		}
		enlargePQExpBuffer(row, h.len);
		if ((data = spool_read(spill, h.len, row->data)) == NULL)
			break;
		len = h.len;
		if (no_ts)
		{
			/* (not in place: the line is read again if the COPY fails) */
			drop_commit_ts(tsless, data, len);
			data = tsless->data;
			len = tsless->len;
		}
		if (n + len > sizeof(chunk))
		{
			if (PQputCopyData(conn, chunk, (int) n) != 1)
				goto copy_failed;
			n = 0;
		}
		if (len > sizeof(chunk))
		{
			if (PQputCopyData(conn, data, (int) len) != 1)
				goto copy_failed;
			continue;
		}
		memcpy(chunk + n, data, len);
		n += len;
	}
	if (!spool_at_end(spill))
	{
		log_msg(LOG_ERROR, "could not read the batch's spill file: %m");
		return false;
	}
	if (n > 0 && PQputCopyData(conn, chunk, (int) n) != 1)
		goto copy_failed;
	return end_copy(b, k);

copy_failed:
	log_msg(LOG_ERROR, "could not stage events in the target: %s", conn_error(conn));
	return false;
}

/* COPY the rows v[0..n) of map i. */
static bool
copy_rows(Batch *b, int k, int i, SpillRow *v, long n)
{
	PGconn	   *conn = b->lane_of[k]->conn;

	if (!start_copy(b, k, i))
		return false;
	for (long r = 0; r < n; r++)
		if (PQputCopyData(conn, v[r].data, (int) v[r].h.len) != 1)
		{
			log_msg(LOG_ERROR, "could not stage events in the target: %s", conn_error(conn));
			return false;
		}
	return end_copy(b, k);
}

/* A refused row: its event goes to the quarantine with the COPY's error. */
static bool
quarantine_row(Batch *b, int k, int i, const SpillRow *row, const SqlError *e)
{
	PGconn	   *conn = b->lane_of[k]->conn;
	ApplyJob   *j = &b->jobs[k];
	TableMap   *m = &b->p->maps[i];
	char	   *json = pg_malloc(row->h.raw_len + 1);
	const char *params[7] = {b->p->name, m->map_table, m->target, json, e->code, e->message,
	e->detail[0] ? e->detail : NULL};
	PGresult   *res = NULL;
	const char *p = spool_get(j->raw, (size_t) row->h.raw_off, row->h.raw_len, json);

	if (p == NULL)
		log_msg(LOG_ERROR, "could not read an event back from the batch's file: %m");
	else
	{
		if (p != json)
			memcpy(json, p, row->h.raw_len);
		json[row->h.raw_len] = '\0';
		res = exec_ok(conn, "SELECT pgcdc.quarantine_event($1, $2, $3, $4::jsonb, $5, $6, $7)",
					  7, params);
	}
	if (res != NULL)
	{
		log_msg(LOG_INFO, "quarantined an event of %s for %s: the target's types refuse it: %s (SQLSTATE %s)",
				m->source_table, m->target, e->message, e->code);
		j->refused++;
	}
	free(json);
	PQclear(res);
	return res != NULL;
}

/*
 * COPY v[0..n); if the target's types refuse a row (a value too long, not
 * of its type, out of a domain), find it by halves, each half in a
 * savepoint, and quarantine it: the others are staged.
 */
static bool
copy_or_split(Batch *b, int k, int i, SpillRow *v, long n)
{
	PGconn	   *conn = b->lane_of[k]->conn;
	SqlError	e;
	bool		ok;

	if (!exec_cmd(conn, "SAVEPOINT pgcdc_part"))
		return false;
	quiet_sql_errors = true;
	ok = copy_rows(b, k, i, v, n);
	quiet_sql_errors = false;
	if (ok)
		return exec_cmd(conn, "RELEASE SAVEPOINT pgcdc_part");
	e = last_sql_error;
	if (sql_error_is_transient(&e) || !exec_cmd(conn, "ROLLBACK TO SAVEPOINT pgcdc_part") ||
		!exec_cmd(conn, "RELEASE SAVEPOINT pgcdc_part"))
		return false;
	if (n == 1)
		return quarantine_row(b, k, i, &v[0], &e);
	return copy_or_split(b, k, i, v, n / 2) && copy_or_split(b, k, i, v + n / 2, n - n / 2);
}

/* The rows of map i that copy_spill sends, in memory. */
static SpillRow *
read_rows(Batch *b, int k, int i, long *n)
{
	Spool	   *spill = b->spill[k];
	SpillRow   *v = pg_malloc(sizeof(SpillRow) * Max(b->jobs[k].per_map[i], 1));
	SpillHeader h;
	const char *p;
	long		line = 0;
	bool		rules = b->lane_of[k]->has_rules[i];

	*n = 0;
	spool_rewind(spill);
	while ((p = spool_read(spill, sizeof(h), (char *) &h)) != NULL)
	{
		if (p != (char *) &h)
			memcpy(&h, p, sizeof(h));
		line++;
		if (h.map != i || (!rules && compact_dead(b->compact[k], line)))
		{
			if (!spool_skip(spill, h.len))
				break;
			continue;
		}
		v[*n].h = h;
		v[*n].data = pg_malloc(h.len);
		if ((p = spool_read(spill, h.len, v[*n].data)) == NULL)
		{
			free(v[*n].data);
			break;
		}
		if (p != v[*n].data)
			memcpy(v[*n].data, p, h.len);
		(*n)++;
	}
	return v;
}

/*
 * COPY map i's rows of job k, in a savepoint: if the target's types refuse
 * some of them (SQLSTATE class 22 or 23), they are found and quarantined,
 * and the others staged; the batch goes on.  (An append map's rows are
 * text: nothing to refuse.)
 */
static bool
send_map(Batch *b, int k, int i, PQExpBuffer row, PQExpBuffer tsless)
{
	PGconn	   *conn = b->lane_of[k]->conn;
	SpillRow   *v;
	long		n;
	bool		ok;
	SqlError	e;

	if (!exec_cmd(conn, "SAVEPOINT pgcdc_copy"))
		return false;
	quiet_sql_errors = true;
	ok = copy_spill(b, k, i, row, tsless);
	quiet_sql_errors = false;
	if (ok)
		return exec_cmd(conn, "RELEASE SAVEPOINT pgcdc_copy");
	e = last_sql_error;
	if (b->p->maps[i].kind == MAP_APPEND || sql_error_is_transient(&e) ||
		(strncmp(e.code, "22", 2) != 0 && strncmp(e.code, "23", 2) != 0))
	{
		log_msg(LOG_ERROR, "could not stage events of %s for %s: %s (SQLSTATE %s)",
				b->p->maps[i].source_table, b->p->maps[i].target, e.message, e.code);
		return false;
	}
	log_msg(LOG_INFO, "%s refused events of %s (SQLSTATE %s: %s); finding them",
			b->p->maps[i].target, b->p->maps[i].source_table, e.code, e.message);
	if (!exec_cmd(conn, "ROLLBACK TO SAVEPOINT pgcdc_copy"))
		return false;
	v = read_rows(b, k, i, &n);
	ok = copy_or_split(b, k, i, v, n) && exec_cmd(conn, "RELEASE SAVEPOINT pgcdc_copy");
	for (long r = 0; r < n; r++)
		free(v[r].data);
	free(v);
	return ok;
}

/*
 * Open the target transaction of job k and COPY its rows there, one COPY
 * per table map (in the apply thread).
 */
bool
send_spill(Batch *b, int k)
{
	PGconn	   *conn = b->lane_of[k]->conn;
	PQExpBufferData row,
				tsless;
	bool		ok;

	b->jobs[k].moot = 0;
	b->jobs[k].refused = 0;
	if (!b->lane_of[k]->tables_ready && !create_session_tables(b, k))
		return false;
	/* (read committed whatever the default: it applies after the batch before commits) */
	if (!load_rules(b, k) || !exec_cmd(conn, "BEGIN ISOLATION LEVEL READ COMMITTED"))
		return false;
	initPQExpBuffer(&row);
	initPQExpBuffer(&tsless);
	ok = true;
	for (int i = 0; i < b->p->nmaps && ok; i++)
		if (b->jobs[k].per_map[i] > 0)
			ok = send_map(b, k, i, &row, &tsless);
	termPQExpBuffer(&row);
	termPQExpBuffer(&tsless);
	return ok && spool_reset(b->spill[k]);
}
