/*
 * staging.c
 *		A batch's rows into its target session: the session's staging
 *		tables, one COPY per table map (for mirror maps, less the rows a
 *		later event on the same key makes moot: compact.c; the rows of keys
 *		born in the batch go into the mirror itself: born.c), rows the
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

/* The SQL of the COPY of map i's rows into its staging table. */
static char *
staging_copy_sql(Batch *b, int i)
{
	TableMap   *m = &b->p->maps[i];

	/* text format, \x1f between fields (copy_field): cheaper to parse than quoted CSV */
	if (m->kind == MAP_APPEND)
		return psprintf("COPY pg_temp.pgcdc_events_%d (pgcdc_ord, op, _source_lsn, _source_seq, _commit_ts, raw) "
						"FROM STDIN (FORMAT text, DELIMITER E'\\x1f')", i);
	return psprintf("COPY pg_temp.pgcdc_changes_%d (pgcdc_ord, op, _source_lsn, _source_seq, "
					"_commit_ts, unchanged_toast, _old_key, pgcdc_raw_off, pgcdc_raw_len, %s) "
					"FROM STDIN (FORMAT text, DELIMITER E'\\x1f')", i, m->data_columns);
}

/* Start a COPY (in the batch's open target transaction). */
static bool
start_copy(Batch *b, int k, const char *sql)
{
	PGconn	   *conn = b->lane_of[k]->conn;
	PGresult   *res = PQexec(conn, sql);
	bool		ok = PQresultStatus(res) == PGRES_COPY_IN;

	if (!ok)
		keep_sql_error(conn, res);
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
 * The next of set's lines, from the batch's header file or set->v (*r:
 * where; start at 0); NULL at the end.  *moot counts those left out as
 * moot (a later event on the key replaced them), if not NULL.
 */
static const SpillHeader *
next_line(Batch *b, int k, const LineSet *set, long *r, SpillHeader *h, long *moot)
{
	Compactor  *c = b->compact[k];
	bool		rules = b->lane_of[k]->has_rules[set->map];	/* every line goes: each is checked */
	const char *p;

	if (set->v != NULL)
		return *r < set->n ? &set->v[(*r)++] : NULL;
	if (*r == 0)
		spool_rewind(b->heads[k]);
	while ((p = spool_read(b->heads[k], sizeof(*h), (char *) h)) != NULL)
	{
		long		line = ++(*r);	/* numbered across maps, as compact_line saw them */

		if (p != (char *) h)
			memcpy(h, p, sizeof(*h));
		if (h->map != set->map)
			continue;
		if (rules)
			return h;
		if (compact_dead(c, line))
		{
			if (moot)
				(*moot)++;
			continue;
		}
		if (set->which == LINES_LIVE || compact_born(c, line) == (set->which == LINES_BORN))
			return h;
	}
	return NULL;
}

/*
 * COPY set's lines of job k with `sql`, each as `shape` gives it: as
 * staged, less its commit time (mirror maps without rules do not read it,
 * and parsing it was a seventh of the COPY's time), or as a row of the
 * mirror itself (born.c; now: the sync time).  *sent: how many; *moot:
 * see next_line.
 */
static bool
copy_lines(Batch *b, int k, const char *sql, const LineSet *set, LineShape shape, const char *now,
		   long *sent, long *moot)
{
	Lane	   *l = b->lane_of[k];
	PGconn	   *conn = l->conn;
	char		chunk[65536];
	size_t		n = 0;
	const SpillHeader *h;
	SpillHeader hbuf;
	long		r = 0;

	if (!start_copy(b, k, sql))
		return false;
	while ((h = next_line(b, k, set, &r, &hbuf, moot)) != NULL)
	{
		const char *data;
		size_t		len = h->len;

		enlargePQExpBuffer(l->row, len);
		if ((data = spool_get(b->spill[k], (size_t) h->off, len, l->row->data)) == NULL)
			break;
		(*sent)++;
		if (shape == LINE_NO_TS)
			drop_commit_ts(l->shaped, data, len);
		else if (shape == LINE_BORN && !born_row(l->shaped, data, len, now))
		{
			log_msg(LOG_ERROR, "a change line lacks its fields");
			return false;
		}
		if (shape != LINE_AS_IS)
		{
			data = l->shaped->data;
			len = l->shaped->len;
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
	if (h != NULL || (set->v == NULL && !spool_at_end(b->heads[k])))
	{
		/* (the COPY stays open: the batch is retried, batch_abort ends it) */
		log_msg(LOG_ERROR, "could not read the batch's spill file: %m");
		strcpy(last_sql_error.code, "58030");
		strcpy(last_sql_error.message, "could not read the batch's spill file");
		last_sql_error.detail[0] = '\0';
		return false;
	}
	if (n > 0 && PQputCopyData(conn, chunk, (int) n) != 1)
		goto copy_failed;
	return end_copy(b, k);

copy_failed:
	log_msg(LOG_ERROR, "could not stage events in the target: %s", conn_error(conn));
	return false;
}

/*
 * COPY set's lines of job k with `sql`, in savepoint `name`: 1 if they
 * went in; 0 if the target refused them (rolled back, *e says why); -1 on a
 * failure that the batch's retry must mend.  Lines sent to the staging
 * table are counted in the job, and so are the moot ones of a whole map.
 */
int
copy_in_savepoint(Batch *b, int k, const char *name, const char *sql, const LineSet *set,
				  LineShape shape, const char *now, SqlError *e)
{
	PGconn	   *conn = b->lane_of[k]->conn;
	char	   *start = psprintf("SAVEPOINT %s; %s", name, sql);	/* one round trip */
	char		cmd[96];
	long		sent = 0;
	long		moot = 0;
	bool		ok;

	quiet_sql_errors = true;
	ok = copy_lines(b, k, start, set, shape, now, &sent, &moot);
	quiet_sql_errors = false;
	free(start);
	snprintf(cmd, sizeof(cmd), "RELEASE SAVEPOINT %s", name);
	if (ok && !exec_cmd(conn, cmd))
		return -1;
	if (ok)
	{
		if (shape != LINE_BORN)
			b->jobs[k].staged[set->map] += sent;
		if (set->v == NULL && set->which != LINES_BORN)
			b->jobs[k].moot += moot;
		return 1;
	}
	*e = last_sql_error;
	if (sql_error_is_transient(e) || b->lane_of[k]->copying)	/* (a local failure) */
		return -1;
	snprintf(cmd, sizeof(cmd), "ROLLBACK TO SAVEPOINT %s; RELEASE SAVEPOINT %s", name, name);
	return exec_cmd(conn, cmd) ? 0 : -1;
}

/* A refused line: its event goes to the quarantine with the COPY's error. */
static bool
quarantine_line(Batch *b, int k, int i, const SpillHeader *line, const SqlError *e)
{
	PGconn	   *conn = b->lane_of[k]->conn;
	ApplyJob   *j = &b->jobs[k];
	TableMap   *m = &b->p->maps[i];
	char	   *json = spool_copy(j->raw, (size_t) line->raw_off, line->raw_len);
	const char *params[7] = {b->p->name, m->map_table, m->target, json, e->code, e->message,
	e->detail[0] ? e->detail : NULL};
	PGresult   *res = NULL;

	if (json == NULL)
		log_msg(LOG_ERROR, "could not read an event back from the batch's file: %m");
	else
		res = exec_ok(conn, "SELECT pgcdc.quarantine_event($1, $2, $3, $4::jsonb, $5, $6, $7)",
					  7, params);
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
 * Stage lines v[0..n) of map i; if the target's types refuse a row (a
 * value too long, not of its type, out of a domain), find it by halves,
 * each half in a savepoint, and quarantine it: the others are staged.
 */
static bool
copy_or_split(Batch *b, int k, int i, const char *sql, LineShape shape, const SpillHeader *v, long n)
{
	LineSet		part = {i, LINES_LIVE, v, n};
	SqlError	e;

	switch (copy_in_savepoint(b, k, "pgcdc_part", sql, &part, shape, NULL, &e))
	{
		case 1:
			return true;
		case 0:
			break;
		default:
			return false;
	}
	if (n == 1)
		return quarantine_line(b, k, i, &v[0], &e);
	return copy_or_split(b, k, i, sql, shape, v, n / 2) &&
		copy_or_split(b, k, i, sql, shape, v + n / 2, n - n / 2);
}

/* The headers of set's lines, in memory (*n of them), to find refused ones among. */
static SpillHeader *
read_lines(Batch *b, int k, const LineSet *set, long *n, long *moot)
{
	long		cap = 1024;
	SpillHeader *v = pg_malloc(sizeof(SpillHeader) * cap);
	const SpillHeader *h;
	SpillHeader hbuf;
	long		r = 0;

	*n = 0;
	while ((h = next_line(b, k, set, &r, &hbuf, moot)) != NULL)
	{
		if (*n == cap)
			v = pg_realloc(v, sizeof(SpillHeader) * (cap *= 2));
		v[(*n)++] = *h;
	}
	if (!spool_at_end(b->heads[k]))
	{
		log_msg(LOG_ERROR, "could not read the batch's spill file: %m");
		free(v);
		return NULL;
	}
	return v;
}

/*
 * COPY set's lines of job k into the staging table of its map, in a
 * savepoint: if the target's types refuse some of them (SQLSTATE class 22
 * or 23), they are found and quarantined, and the others staged; the batch
 * goes on.  (An append map's rows are text: nothing to refuse.)
 */
bool
stage_lines(Batch *b, int k, const LineSet *set)
{
	int			i = set->map;
	TableMap   *m = &b->p->maps[i];
	LineShape	shape = m->kind == MAP_MIRROR && !b->lane_of[k]->has_rules[i] ? LINE_NO_TS : LINE_AS_IS;
	SqlError	e;
	char	   *sql;
	SpillHeader *v;
	long		n;
	int			r;
	bool		ok = false;

	sql = staging_copy_sql(b, i);
	e.code[0] = '\0';
	r = copy_in_savepoint(b, k, "pgcdc_copy", sql, set, shape, NULL, &e);
	if (r == 1)
		ok = true;
	else if (r == 0 && m->kind != MAP_APPEND &&
			 (strncmp(e.code, "22", 2) == 0 || strncmp(e.code, "23", 2) == 0))
	{
		log_msg(LOG_INFO, "%s refused events of %s (SQLSTATE %s: %s); finding them",
				m->target, m->source_table, e.code, e.message);
		if ((v = read_lines(b, k, set, &n, set->which == LINES_BORN ? NULL : &b->jobs[k].moot)) != NULL)
		{
			ok = copy_or_split(b, k, i, sql, shape, v, n);
			free(v);
		}
	}
	else if (e.code[0] != '\0')
		log_msg(LOG_ERROR, "could not stage events of %s for %s: %s (SQLSTATE %s)",
				m->source_table, m->target, e.message, e.code);
	free(sql);
	return ok;
}

/*
 * Open the target transaction of job k and COPY its rows into the staging
 * tables, one COPY per table map (in the apply thread, maybe while the
 * batch before is applied).  The lines of keys born in the batch wait for
 * its turn (send_born_lines).
 */
bool
send_spill(Batch *b, int k)
{
	Lane	   *l = b->lane_of[k];
	bool		ok;

	b->jobs[k].moot = 0;
	b->jobs[k].refused = 0;
	memset(b->jobs[k].staged, 0, sizeof(long) * Max(b->p->nmaps, 1));
	if (!l->tables_ready && !create_session_tables(b, k))
		return false;
	/* (read committed whatever the default: it applies after the batch before commits) */
	if (!load_rules(b, k) || !exec_cmd(l->conn, "BEGIN ISOLATION LEVEL READ COMMITTED"))
		return false;
	ok = true;
	for (int i = 0; i < b->p->nmaps && ok; i++)
	{
		LineSet		set = {i, LINES_LIVE, NULL, 0};

		l->born_later[i] = false;
		if (b->jobs[k].per_map[i] == 0)
			continue;
		if (born_wanted(b, k, i))
		{
			l->born_later[i] = true;
			set.which = LINES_NOT_BORN;
		}
		ok = stage_lines(b, k, &set);
	}
	return ok;
}
