/*
 * apply.c
 *		Batches: whole source transactions applied in one target transaction
 *		together with the checkpoint that covers them.
 *
 *		Events are streamed into a temporary table with COPY as they arrive
 *		(the consumer keeps no events in memory, so a huge source transaction
 *		costs no client memory).  At flush, per table map, the map's events
 *		become typed change rows (jsonb_populate_record on the server) and
 *		one set-based call applies them: pgcdc.apply_mirror,
 *		pgcdc.scd2_apply_changes, or an INSERT for append targets.  Rules
 *		(pgcdc.apply_rules) run first.  If the batch fails, it is retried
 *		map by map and then event by event inside savepoints, and only the
 *		events that still fail go to pgcdc.quarantine with their SQLSTATE.
 */
#include "postgres_fe.h"

#include "consumer.h"

struct Batch
{
	PGconn	   *conn;
	Pipeline   *p;
	bool		open;			/* target transaction + COPY in progress */
	bool		skipping;		/* current source transaction is at/before the checkpoint */
	bool		tables_ready;	/* session temp tables created */
	long		events;
	long		xacts;
	long		per_op[4];		/* I U D T */
	long	   *per_map;		/* events per table map in this batch */
	Lsn			first_lsn;
	Lsn			last_commit_lsn;
	Lsn			last_end_lsn;
	char		last_ts[64];
	int64_t		started_us;
	PQExpBuffer line;			/* the COPY line being built */
	PQExpBuffer tmp;			/* a field being built */
};

Batch *
batch_new(PGconn *target, Pipeline *p)
{
	Batch	   *b = pg_malloc0(sizeof(Batch));

	b->conn = target;
	b->p = p;
	b->per_map = pg_malloc0(sizeof(long) * p->nmaps);
	b->line = createPQExpBuffer();
	b->tmp = createPQExpBuffer();
	return b;
}

void
batch_free(Batch *b)
{
	if (b == NULL)
		return;
	destroyPQExpBuffer(b->line);
	destroyPQExpBuffer(b->tmp);
	free(b->per_map);
	free(b);
}

long
batch_events(Batch *b)
{
	return b->events;
}

bool
batch_open(Batch *b)
{
	return b->open;
}

int64_t
batch_started_us(Batch *b)
{
	return b->started_us;
}

static void
reset_counts(Batch *b)
{
	b->events = b->xacts = 0;
	memset(b->per_op, 0, sizeof(b->per_op));
	memset(b->per_map, 0, sizeof(long) * b->p->nmaps);
	b->first_lsn = b->last_commit_lsn = b->last_end_lsn = InvalidLsn;
	b->last_ts[0] = '\0';
}

/* The session's staging tables: events, and one change table per map. */
static bool
create_session_tables(Batch *b)
{
	PQExpBuffer sql = createPQExpBuffer();
	bool		ok;
	int			i;

	/*
	 * One row per event and table map it feeds: the routing fields, the
	 * row as a composite literal of the map's data columns (written by
	 * row_literal, parsed by the columns' input functions: no JSON work on
	 * the server), and the event's text for append targets and quarantine.
	 */
	appendPQExpBufferStr(sql, "DROP TABLE IF EXISTS pg_temp.pgcdc_events CASCADE; "
						 "CREATE TEMP TABLE pgcdc_events (ord bigint GENERATED ALWAYS AS IDENTITY, "
						 "map integer NOT NULL, op text NOT NULL, commit_lsn pg_catalog.pg_lsn, seq integer, "
						 "ts timestamptz, ut text[], old_key jsonb, row_text text, raw text NOT NULL) "
						 "ON COMMIT DELETE ROWS;");
	for (i = 0; i < b->p->nmaps; i++)
	{
		TableMap   *m = &b->p->maps[i];

		if (strcmp(m->mode, "append") == 0)
			continue;
		/*
		 * The map's change rows, as a view over the staged events that the
		 * apply functions read directly; and as a table, for the paths that
		 * need to remove rows (rules) or to pick one event.
		 */
		appendPQExpBuffer(sql,
						  "DROP TABLE IF EXISTS pg_temp.pgcdc_changes_%d, pg_temp.pgcdc_row_%d; "
						  "CREATE TEMP TABLE pgcdc_row_%d (%s); "
						  "CREATE TEMP TABLE pgcdc_changes_%d (%s, op text, _source_lsn pg_catalog.pg_lsn, "
						  "_source_seq integer, _commit_ts timestamptz, unchanged_toast text[], _old_key jsonb) "
						  "ON COMMIT DELETE ROWS; "
						  "CREATE TEMP VIEW pgcdc_view_%d AS SELECT %s, e.op, e.commit_lsn AS _source_lsn, "
						  "e.seq AS _source_seq, e.ts AS _commit_ts, e.ut AS unchanged_toast, e.old_key AS _old_key, "
						  "e.ord AS pgcdc_ord "
						  "FROM pg_temp.pgcdc_events e "
						  "CROSS JOIN LATERAL (SELECT e.row_text::pg_temp.pgcdc_row_%d AS r OFFSET 0) x "
						  "WHERE e.map = %d;",
						  i, i, i, m->data_types, i, m->data_types, i, m->row_columns, i, i);
	}
	ok = exec_cmd(b->conn, sql->data);
	destroyPQExpBuffer(sql);
	b->tables_ready = ok;
	return ok;
}

static bool
start_copy(Batch *b)
{
	PGresult   *res;

	if (!b->tables_ready && !create_session_tables(b))
		return false;
	if (!exec_cmd(b->conn, "BEGIN"))
		return false;
	/* CSV with separators that text rarely contains; fields are quoted (csv_field) */
	res = PQexec(b->conn, "COPY pg_temp.pgcdc_events (map, op, commit_lsn, seq, ts, ut, old_key, row_text, raw) "
				 "FROM STDIN (FORMAT csv, DELIMITER E'\\x1f', QUOTE E'\\x1e')");
	if (PQresultStatus(res) != PGRES_COPY_IN)
	{
		log_msg(LOG_ERROR, "could not stage events in the target: %s", conn_error(b->conn));
		PQclear(res);
		return false;
	}
	PQclear(res);
	b->open = true;
	b->started_us = now_us();
	reset_counts(b);
	return true;
}

bool
batch_begin_xact(Batch *b, const EventInfo *begin)
{
	b->skipping = b->p->has_checkpoint && begin->commit_lsn <= b->p->ckpt_commit_lsn;
	if (b->skipping)
	{
		stats.skipped++;
		return true;
	}
	if (!b->open && !start_copy(b))
		return false;
	if (b->first_lsn == InvalidLsn)
		b->first_lsn = begin->commit_lsn;
	return true;
}

/* A CSV field quoted with \x1e (doubled inside); NULL is an empty unquoted field. */
static void
csv_field(PQExpBuffer line, const char *v, size_t len)
{
	const char *end = v + len;

	if (v == NULL)
		return;
	appendPQExpBufferChar(line, '\x1e');
	while (v < end)
	{
		const char *q = memchr(v, '\x1e', end - v);

		if (q == NULL)
		{
			appendBinaryPQExpBuffer(line, v, end - v);
			break;
		}
		appendBinaryPQExpBuffer(line, v, q + 1 - v);
		appendPQExpBufferChar(line, '\x1e');
		v = q + 1;
	}
	appendPQExpBufferChar(line, '\x1e');
}

/* One line of pgcdc_events: the event as it feeds map i. */
static bool
event_line(Batch *b, int i, const EventInfo *ev, const char *json, size_t len)
{
	TableMap   *m = &b->p->maps[i];
	PQExpBuffer line = b->line;
	char		lsn[32];

	resetPQExpBuffer(line);
	appendPQExpBuffer(line, "%d\x1f%c\x1f%s\x1f%ld\x1f", i, ev->op, format_lsn(ev->commit_lsn, lsn), ev->seq);
	csv_field(line, ev->ts, ev->ts ? strlen(ev->ts) : 0);
	appendPQExpBufferChar(line, '\x1f');
	if (ev->unchanged_toast.ptr)
	{
		resetPQExpBuffer(b->tmp);
		if (!array_literal(b->tmp, ev->unchanged_toast))
			return false;
		csv_field(line, b->tmp->data, b->tmp->len);
	}
	appendPQExpBufferChar(line, '\x1f');
	if (ev->op == 'U' && ev->old.ptr)
		csv_field(line, ev->old.ptr, ev->old.len);
	appendPQExpBufferChar(line, '\x1f');
	if (strcmp(m->mode, "append") != 0 && ev->op != 'T')
	{
		JsonSpan	row = ev->op == 'D' ? (ev->old.ptr ? ev->old : ev->key) : ev->new_row;

		resetPQExpBuffer(b->tmp);
		if (row.ptr && !row_literal(b->tmp, m, row))
			return false;
		if (row.ptr)
			csv_field(line, b->tmp->data, b->tmp->len);
	}
	appendPQExpBufferChar(line, '\x1f');
	csv_field(line, json, len);
	appendPQExpBufferChar(line, '\n');
	return true;
}

bool
batch_add_event(Batch *b, const EventInfo *ev, const char *json, size_t len)
{
	int			i;
	bool		found = false;

	if (b->skipping || !b->open || ev->op == 'M' || ev->schema == NULL || ev->table == NULL)
		return true;
	/* one source table may feed several targets: a line for each */
	for (i = 0; i < b->p->nmaps; i++)
	{
		if (strcmp(b->p->maps[i].source_schema, ev->schema) != 0 ||
			strcmp(b->p->maps[i].source_name, ev->table) != 0)
			continue;
		if (!event_line(b, i, ev, json, len))
		{
			log_msg(LOG_ERROR, "could not read the row of an event: %.200s", json);
			return false;
		}
		if (PQputCopyData(b->conn, b->line->data, b->line->len) != 1)
		{
			log_msg(LOG_ERROR, "could not stage events in the target: %s", conn_error(b->conn));
			return false;
		}
		b->per_map[i]++;
		found = true;
	}
	if (!found)
		return true;
	b->events++;
	stats.events++;
	switch (ev->op)
	{
		case 'I':
			b->per_op[0]++;
			break;
		case 'U':
			b->per_op[1]++;
			break;
		case 'D':
			b->per_op[2]++;
			break;
		case 'T':
			b->per_op[3]++;
			break;
	}
	return true;
}

bool
batch_end_xact(Batch *b, const EventInfo *commit)
{
	if (b->skipping || !b->open)
	{
		b->skipping = false;
		return true;
	}
	b->xacts++;
	b->last_commit_lsn = commit->commit_lsn;
	b->last_end_lsn = commit->end_lsn;
	snprintf(b->last_ts, sizeof(b->last_ts), "%s", commit->ts ? commit->ts : "");
	return true;
}

/*
 * The change rows of map i, from its view, in a table that rules can remove
 * rows from; "ord" narrows them to one event (isolating a failure).
 */
static bool
stage_changes(Batch *b, int i, const char *ord)
{
	TableMap   *m = &b->p->maps[i];
	PQExpBuffer sql = createPQExpBuffer();
	const char *params[1] = {ord};
	PGresult   *res;

	appendPQExpBuffer(sql,
					  "INSERT INTO pg_temp.pgcdc_changes_%d "
					  "SELECT %s, op, _source_lsn, _source_seq, _commit_ts, unchanged_toast, _old_key "
					  "FROM pg_temp.pgcdc_view_%d WHERE $1::bigint IS NULL OR pgcdc_ord = $1::bigint "
					  "ORDER BY pgcdc_ord",
					  i, m->data_columns, i);
	res = exec_ok(b->conn, sql->data, 1, params);
	destroyPQExpBuffer(sql);
	PQclear(res);
	return res != NULL;
}

/* Does the map's source table have rules (looked up per batch: they may change)? */
static bool
map_has_rules(Batch *b, TableMap *m)
{
	const char *params[2] = {b->p->name, m->source_table};
	PGresult   *res = exec_ok(b->conn,
							  "SELECT EXISTS (SELECT FROM pgcdc.rule WHERE pipeline = $1 AND source_table = $2)",
							  2, params);
	bool		has = res == NULL || strcmp(PQgetvalue(res, 0, 0), "t") == 0;

	PQclear(res);
	return has;
}

/* Apply map i's staged changes (or append its events) with one call. */
static bool
apply_map(Batch *b, int i, const char *ord, long *quarantined)
{
	TableMap   *m = &b->p->maps[i];
	PQExpBuffer sql = createPQExpBuffer();
	PGresult   *res;
	bool		ok;
	bool		use_table;
	char		changes[64];
	long		by_rules = 0;	/* counted only if the map's apply commits */

	if (strcmp(m->mode, "append") == 0)
	{
		const char *params[1] = {ord};

		appendPQExpBuffer(sql,
						  "INSERT INTO %s (_op, _source_lsn, _source_seq, _xid, _commit_ts, _key, _new, _old, _received_at) "
						  "SELECT e.op, e.commit_lsn, e.seq, (e.j->>'xid')::bigint, e.ts, e.j->'key', e.j->'new', "
						  "  e.j->'old', pg_catalog.now() "
						  "FROM (SELECT e.*, e.raw::jsonb AS j FROM pg_temp.pgcdc_events e "
						  "      WHERE e.map = %d AND ($1::bigint IS NULL OR e.ord = $1::bigint)) e "
						  "ORDER BY e.ord ON CONFLICT DO NOTHING",
						  m->target, i);
		res = exec_ok(b->conn, sql->data, 1, params);
		destroyPQExpBuffer(sql);
		PQclear(res);
		return res != NULL;
	}

	/*
	 * A whole batch of a map without rules is read by the apply function
	 * straight from the view over the staged events; rules (which remove
	 * rows) and single events go through the change table.
	 */
	use_table = ord != NULL || map_has_rules(b, m);
	if (use_table)
	{
		const char *params[3] = {b->p->name, m->source_table, m->target};

		if (!stage_changes(b, i, ord))
		{
			destroyPQExpBuffer(sql);
			return false;
		}
		/* rules move failing rows to the quarantine before anything is applied */
		appendPQExpBuffer(sql, "SELECT pgcdc.apply_rules($1, $2, 'pg_temp.pgcdc_changes_%d', $3, 'op')", i);
		res = exec_ok(b->conn, sql->data, 3, params);
		if (res == NULL)
		{
			destroyPQExpBuffer(sql);
			return false;
		}
		by_rules = atol(PQgetvalue(res, 0, 0));
		PQclear(res);
	}
	snprintf(changes, sizeof(changes), "pg_temp.pgcdc_%s_%d", use_table ? "changes" : "view", i);

	resetPQExpBuffer(sql);
	if (strcmp(m->mode, "mirror") == 0)
	{
		const char *params[3] = {m->target, m->key_columns, m->soft_delete ? "true" : "false"};

		appendPQExpBuffer(sql, "SELECT * FROM pgcdc.apply_mirror($1::pg_catalog.regclass, "
						  "'%s', $2::text[], $3::boolean, 'op')", changes);
		res = exec_ok(b->conn, sql->data, 3, params);
	}
	else
	{
		const char *params[3] = {m->target, m->key_columns, m->track_columns};

		appendPQExpBuffer(sql, "SELECT * FROM pgcdc.scd2_apply_changes($1::pg_catalog.regclass, "
						  "'%s', $2::text[], '_source_lsn,_source_seq', 'op', "
						  "$3::text[], '_commit_ts')", changes);
		res = exec_ok(b->conn, sql->data, 3, params);
	}
	ok = res != NULL;
	PQclear(res);
	if (ok && use_table)
	{
		resetPQExpBuffer(sql);
		appendPQExpBuffer(sql, "TRUNCATE pg_temp.pgcdc_changes_%d", i);
		ok = exec_cmd(b->conn, sql->data);
	}
	destroyPQExpBuffer(sql);
	if (ok)
		*quarantined += by_rules;
	return ok;
}

static bool
savepoint(Batch *b, const char *verb, const char *name)
{
	char		sql[64];

	snprintf(sql, sizeof(sql), "%s %s", verb, name);
	return exec_cmd(b->conn, sql);
}

/* Record one failing event in the quarantine with the error it raised. */
static bool
quarantine_event(Batch *b, int i, const char *ord, const char *code,
				 const char *message, const char *detail)
{
	TableMap   *m = &b->p->maps[i];
	const char *params[7] = {b->p->name, m->source_table, m->target, ord, code, message, detail};
	PGresult   *res = exec_ok(b->conn,
							  "SELECT pgcdc.quarantine_event($1, $2, $3, e.raw::jsonb, $5, $6, $7) "
							  "FROM pg_temp.pgcdc_events e WHERE e.ord = $4::bigint",
							  7, params);

	PQclear(res);
	return res != NULL;
}

/*
 * Map i failed as a whole: apply its events one by one, each in a
 * savepoint; an event that fails is quarantined with its error.
 */
static bool
isolate_map(Batch *b, int i, long *quarantined)
{
	TableMap   *m = &b->p->maps[i];
	char		map[16];
	const char *params[1] = {map};
	PGresult   *ords;
	int			n;

	snprintf(map, sizeof(map), "%d", i);
	ords = exec_ok(b->conn,
				   "SELECT ord, e.op, e.commit_lsn, e.seq FROM pg_temp.pgcdc_events e "
				   "WHERE e.map = $1::integer ORDER BY ord",
				   1, params);
	if (ords == NULL)
		return false;
	for (n = 0; n < PQntuples(ords); n++)
	{
		const char *ord = PQgetvalue(ords, n, 0);
		bool		ok;

		if (!savepoint(b, "SAVEPOINT", "pgcdc_event"))
			break;
		quiet_sql_errors = true;
		ok = apply_map(b, i, ord, quarantined);
		quiet_sql_errors = false;
		if (ok)
		{
			if (!savepoint(b, "RELEASE SAVEPOINT", "pgcdc_event"))
				break;
			continue;
		}
		/* the error is replaced by the rollback: keep it */
		{
			SqlError	e = last_sql_error;

			if (sql_error_is_transient(&e))
			{
				log_msg(LOG_ERROR, "could not apply an event of %s to %s: %s (SQLSTATE %s)",
						m->source_table, m->target, e.message, e.code);
				break;
			}
			if (!savepoint(b, "ROLLBACK TO SAVEPOINT", "pgcdc_event") ||
				!quarantine_event(b, i, ord, e.code, e.message, e.detail[0] ? e.detail : NULL))
				break;
			/* named as the source knows it: commit LSN and position */
			log_msg(LOG_INFO, "quarantined %s event %s:%s of %s for %s: %s (SQLSTATE %s)",
					PQgetvalue(ords, n, 1), PQgetvalue(ords, n, 2), PQgetvalue(ords, n, 3),
					m->source_table, m->target, e.message, e.code);
			(*quarantined)++;
		}
	}
	n = n == PQntuples(ords);
	PQclear(ords);
	return n;
}

/* The checkpoint and the batch log, in the batch's transaction. */
static bool
record_batch(Batch *b, long quarantined, int64_t started_us)
{
	char		first[32],
				commit[32],
				n_x[24],
				n_ev[24],
				n_q[24],
				started[32],
				ops[4][24];
	const char *params[12] = {b->p->name, first, commit, started, n_x, ops[0], ops[1], ops[2], ops[3],
	n_ev, n_q, quarantined > 0 ? "partial" : "ok"};
	PGresult   *res;

	if (!checkpoint_advance(b->conn, b->p, b->last_commit_lsn, b->last_end_lsn,
							b->last_ts[0] ? b->last_ts : NULL, b->xacts, b->events, quarantined))
		return false;

	format_lsn(b->first_lsn, first);
	format_lsn(b->last_commit_lsn, commit);
	snprintf(n_x, sizeof(n_x), "%ld", b->xacts);
	snprintf(n_ev, sizeof(n_ev), "%ld", b->events);
	snprintf(n_q, sizeof(n_q), "%ld", quarantined);
	snprintf(started, sizeof(started), "%.6f", started_us / 1e6);
	for (int i = 0; i < 4; i++)
		snprintf(ops[i], sizeof(ops[i]), "%ld", b->per_op[i]);
	res = exec_ok(b->conn,
				  "INSERT INTO pgcdc.batch (pipeline, first_lsn, last_lsn, started_at, finished_at, duration_ms, "
				  "  transactions, inserts, updates, deletes, truncates, applied, skipped, quarantined, status) "
				  "VALUES ($1, $2, $3, pg_catalog.to_timestamp($4::float8), pg_catalog.clock_timestamp(), "
				  "  extract(epoch FROM pg_catalog.clock_timestamp() - pg_catalog.to_timestamp($4::float8)) * 1000, "
				  "  $5, $6, $7, $8, $9, $10::bigint - $11::bigint, 0, $11, $12)",
				  12, params);
	PQclear(res);
	return res != NULL;
}

static bool
end_copy(Batch *b)
{
	PGresult   *res;
	bool		ok;

	if (PQputCopyEnd(b->conn, NULL) != 1)
	{
		log_msg(LOG_ERROR, "could not stage events in the target: %s", conn_error(b->conn));
		return false;
	}
	res = PQgetResult(b->conn);
	ok = PQresultStatus(res) == PGRES_COMMAND_OK;
	if (!ok)
		log_msg(LOG_ERROR, "could not stage events in the target: %s", conn_error(b->conn));
	PQclear(res);
	while ((res = PQgetResult(b->conn)) != NULL)
		PQclear(res);
	return ok;
}

/*
 * Apply the batch and commit it with its checkpoint.  On success *applied
 * is the end LSN of its last transaction: what the source may forget.
 */
bool
batch_flush(Batch *b, Lsn *applied)
{
	long		quarantined = 0;
	bool		ok = true;
	int64_t		t0 = now_us();
	int			i;

	if (!b->open)
		return true;
	if (!end_copy(b))
		return false;

	if (b->events > 0)
	{
		if (!savepoint(b, "SAVEPOINT", "pgcdc_batch"))
			return false;
		/* a failure is logged once, below, with what happens next */
		quiet_sql_errors = true;
		for (i = 0; i < b->p->nmaps && ok; i++)
			if (b->per_map[i] > 0)
				ok = apply_map(b, i, NULL, &quarantined);
		quiet_sql_errors = false;
		if (!ok && sql_error_is_transient(&last_sql_error))
		{
			log_msg(LOG_ERROR, "batch of %ld events failed (SQLSTATE %s: %s); it will be retried",
					b->events, last_sql_error.code, last_sql_error.message);
			return false;
		}
		if (!ok)
		{
			log_msg(LOG_INFO, "batch of %ld events failed (SQLSTATE %s: %s); isolating the failing events",
					b->events, last_sql_error.code, last_sql_error.message);
			if (!savepoint(b, "ROLLBACK TO SAVEPOINT", "pgcdc_batch"))
				return false;
			quarantined = 0;
			for (i = 0; i < b->p->nmaps; i++)
			{
				if (b->per_map[i] == 0)
					continue;
				if (!savepoint(b, "SAVEPOINT", "pgcdc_map"))
					return false;
				quiet_sql_errors = true;
				ok = apply_map(b, i, NULL, &quarantined);
				quiet_sql_errors = false;
				if (ok)
				{
					if (!savepoint(b, "RELEASE SAVEPOINT", "pgcdc_map"))
						return false;
					continue;
				}
				if (sql_error_is_transient(&last_sql_error))
				{
					log_msg(LOG_ERROR, "could not apply %s to %s: %s (SQLSTATE %s)", b->p->maps[i].source_table,
							b->p->maps[i].target, last_sql_error.message, last_sql_error.code);
					return false;
				}
				if (!savepoint(b, "ROLLBACK TO SAVEPOINT", "pgcdc_map") ||
					!isolate_map(b, i, &quarantined))
					return false;
			}
		}
	}

	if (!record_batch(b, quarantined, t0) || !exec_cmd(b->conn, "COMMIT"))
		return false;

	b->open = false;
	b->p->ckpt_commit_lsn = b->last_commit_lsn;
	b->p->ckpt_end_lsn = b->last_end_lsn;
	b->p->has_checkpoint = true;
	*applied = b->last_end_lsn;
	stats.transactions += b->xacts;
	stats.batches++;
	stats.quarantined += quarantined;
	if (opts.verbose > 0)
	{
		char		lb[32];

		log_msg(LOG_DEBUG, "batch: %ld transactions, %ld events, %ld quarantined, up to %s in %.1f ms",
				b->xacts, b->events, quarantined, format_lsn(b->last_end_lsn, lb),
				(now_us() - t0) / 1000.0);
	}
	return true;
}

/* Throw the open batch away: its transactions come again from the slot. */
void
batch_abort(Batch *b)
{
	PGresult   *res;

	if (b == NULL || !b->open)
		return;
	b->open = false;
	if (PQstatus(b->conn) != CONNECTION_OK)
		return;
	if (PQtransactionStatus(b->conn) == PQTRANS_ACTIVE)
	{
		PQputCopyEnd(b->conn, "batch abandoned");
		while ((res = PQgetResult(b->conn)) != NULL)
			PQclear(res);
	}
	res = PQexec(b->conn, "ROLLBACK");
	PQclear(res);
}
