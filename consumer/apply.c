/*
 * apply.c
 *		Applying one batch in the target, in the apply thread: per table
 *		map one set-based call over the staged events (pgcdc.apply_mirror,
 *		pgcdc.scd2_apply_changes, or an INSERT for append targets), rules
 *		(pgcdc.apply_rules) first; then the checkpoint and the batch log,
 *		and COMMIT.  If the batch fails, it is retried map by map and then
 *		by halves of a map's events inside savepoints, and only the events
 *		that fail alone go to pgcdc.quarantine with their SQLSTATE.
 *
 *		Everything here runs on the job's connection and touches no global
 *		state but the thread's own last_sql_error: the stream goes on
 *		meanwhile (target_sessions.c).
 */
#include "postgres_fe.h"

#include "consumer.h"

/* Map i's staging table: its rows of the batch, in pgcdc_ord order. */
static const char *
staging_table(ApplyJob *b, int i, char *buf, size_t len)
{
	snprintf(buf, len, "pg_temp.pgcdc_%s_%d",
			 b->p->maps[i].kind == MAP_APPEND ? "events" : "changes", i);
	return buf;
}

/* Map i's events lo..hi (pgcdc_ord) alone in pgcdc_one_N (isolating a failure). */
static bool
stage_range(ApplyJob *b, int i, const char *lo, const char *hi)
{
	char		sql[256];
	const char *params[2] = {lo, hi};
	PGresult   *res;

	snprintf(sql, sizeof(sql), "DELETE FROM pg_temp.pgcdc_one_%d", i);
	if (!exec_cmd(b->conn, sql))
		return false;
	snprintf(sql, sizeof(sql), "INSERT INTO pg_temp.pgcdc_one_%d SELECT * FROM pg_temp.pgcdc_changes_%d "
			 "WHERE pgcdc_ord BETWEEN $1::bigint AND $2::bigint", i, i);
	res = exec_ok(b->conn, sql, 2, params);
	PQclear(res);
	return res != NULL;
}

/*
 * The pipeline's rules over an append map's staged events (JSON, typed by
 * the source's columns): failing ones go to the quarantine.  staged is
 * pgcdc_events_N, or the initial copy's pgcdc_snapshot_json with the
 * snapshot's position and time; lo..hi (pgcdc_ord), when isolating a
 * failure, else NULLs.  The count of rows quarantined, or -1.
 */
long
append_rules(PGconn *conn, const Pipeline *p, const TableMap *m, const char *staged, const char *lsn,
			 const char *ts, const char *lo, const char *hi)
{
	const char *params[10] = {p->name, m->map_table, staged, m->target, m->src_names, m->src_types, lsn, ts,
	lo, hi};
	PGresult   *res;
	long		n;

	res = exec_ok(conn, "SELECT pgcdc._apply_rules_json($1, $2, $3::pg_catalog.regclass, $4, "
				  "(SELECT pg_catalog.jsonb_object_agg(n, t) "
				  "   FROM ROWS FROM (pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::text[])) u(n, t)), "
				  "$7::pg_catalog.pg_lsn, $8::timestamptz, $9::bigint, $10::bigint)", 10, params);
	if (res == NULL)
		return -1;
	n = atol(PQgetvalue(res, 0, 0));
	PQclear(res);
	return n;
}

/* Apply map i's staged rows (all, or the events lo..hi) with one call. */
static bool
apply_map(ApplyJob *b, int i, const char *lo, const char *hi, long *quarantined)
{
	TableMap   *m = &b->p->maps[i];
	PQExpBuffer sql = createPQExpBuffer();
	PGresult   *res;
	bool		ok;
	char		changes[64];
	long		by_rules = 0;	/* counted only if the map's apply commits */

	if (m->kind == MAP_APPEND)
	{
		const char *params[2] = {lo, hi};

		/* the rules as the batch was staged, before anything is applied */
		if (b->has_rules[i])
		{
			char		events[64];

			snprintf(events, sizeof(events), "pg_temp.pgcdc_events_%d", i);
			if ((by_rules = append_rules(b->conn, b->p, m, events, NULL, NULL, lo, hi)) < 0)
			{
				destroyPQExpBuffer(sql);
				return false;
			}
		}
		appendPQExpBuffer(sql,
						  "INSERT INTO %s (_op, _source_lsn, _source_seq, _xid, _commit_ts, _key, _new, _old, _received_at) "
						  "SELECT e.op, e._source_lsn, e._source_seq, (e.j->>'xid')::bigint, e._commit_ts, e.j->'key', e.j->'new', "
						  "  e.j->'old', pg_catalog.now() "
						  "FROM (SELECT e.*, e.raw::jsonb AS j FROM pg_temp.pgcdc_events_%d e "
						  "      WHERE $1::bigint IS NULL OR e.pgcdc_ord BETWEEN $1::bigint AND $2::bigint) e "
						  "ORDER BY e.pgcdc_ord ON CONFLICT DO NOTHING",
						  m->target, i);
		res = exec_ok(b->conn, sql->data, 2, params);
		destroyPQExpBuffer(sql);
		PQclear(res);
		if (res != NULL)
			*quarantined += by_rules;
		return res != NULL;
	}

	if (lo != NULL && !stage_range(b, i, lo, hi))
	{
		destroyPQExpBuffer(sql);
		return false;
	}
	snprintf(changes, sizeof(changes), "pg_temp.pgcdc_%s_%d", lo ? "one" : "changes", i);
	/* the rules as the batch was staged: its rows were sent for them */
	if (b->has_rules[i])
	{
		const char *params[4] = {b->p->name, m->map_table, changes, m->target};

		/* rules move failing rows to the quarantine before anything is applied */
		res = exec_ok(b->conn, "SELECT pgcdc.apply_rules($1, $2, $3::pg_catalog.regclass, $4, 'op')",
					  4, params);
		if (res == NULL)
		{
			destroyPQExpBuffer(sql);
			return false;
		}
		by_rules = atol(PQgetvalue(res, 0, 0));
		PQclear(res);
	}

	if (m->kind == MAP_MIRROR)
	{
		const char *params[4] = {m->target, m->key_columns, m->soft_delete ? "true" : "false", changes};

		res = exec_ok(b->conn, "SELECT * FROM pgcdc.apply_mirror($1::pg_catalog.regclass, "
					  "$4::pg_catalog.regclass, $2::text[], $3::boolean, 'op')", 4, params);
	}
	else
	{
		const char *params[4] = {m->target, m->key_columns, m->track_columns, changes};

		res = exec_ok(b->conn, "SELECT * FROM pgcdc.scd2_apply_changes($1::pg_catalog.regclass, "
					  "$4::pg_catalog.regclass, $2::text[], '_source_lsn,_source_seq', 'op', "
					  "$3::text[], '_commit_ts')", 4, params);
	}
	ok = res != NULL;
	PQclear(res);
	destroyPQExpBuffer(sql);
	if (ok)
		*quarantined += by_rules;
	return ok;
}

/* The event JSON of one pgcdc_events row: kept in the row, or in the job's raw file. */
static char *
event_json(ApplyJob *b, PGresult *row)
{
	char	   *json;

	if (!PQgetisnull(row, 0, 0))
		return pg_strdup(PQgetvalue(row, 0, 0));
	json = spool_copy(b->raw, (size_t) atoll(PQgetvalue(row, 0, 1)), (size_t) atol(PQgetvalue(row, 0, 2)));
	if (json == NULL)
		log_msg(LOG_ERROR, "could not read an event back from the batch's file: %m");
	return json;
}

/* Record one failing event in the quarantine with the error it raised. */
static bool
quarantine_event(ApplyJob *b, int i, const char *ord, const char *code,
				 const char *message, const char *detail)
{
	TableMap   *m = &b->p->maps[i];
	const char *q[1] = {ord};
	const char *params[7] = {b->p->name, m->map_table, m->target, NULL, code, message, detail};
	char		sql[160];
	PGresult   *res = NULL;
	char	   *json;
	char		table[64];

	/* append maps keep the JSON in the row; the others, its place in the job's file */
	snprintf(sql, sizeof(sql), "SELECT %s FROM %s WHERE pgcdc_ord = $1::bigint",
			 m->kind == MAP_APPEND ? "raw, NULL, NULL" : "NULL, pgcdc_raw_off, pgcdc_raw_len",
			 staging_table(b, i, table, sizeof(table)));
	res = exec_ok(b->conn, sql, 1, q);
	json = res && PQntuples(res) == 1 ? event_json(b, res) : NULL;
	PQclear(res);
	res = NULL;
	params[3] = json;
	if (json != NULL)
		res = exec_ok(b->conn, "SELECT pgcdc.quarantine_event($1, $2, $3, $4::jsonb, $5, $6, $7)",
					  7, params);
	free(json);
	PQclear(res);
	return res != NULL;
}

/*
 * Apply the events ords[lo..hi) of map i in a savepoint; if that fails,
 * the two halves, and so on: an event that fails alone is quarantined with
 * its error.  One bad event among n costs about 2 log2(n) calls, not n.
 * Halves keep the source order, so applying them one after the other
 * gives what applying them together would.
 */
static bool
isolate_range(ApplyJob *b, int i, PGresult *ords, int lo, int hi, long *quarantined)
{
	TableMap   *m = &b->p->maps[i];
	SqlError	e;
	bool		ok;

	if (!exec_savepoint(b->conn, "SAVEPOINT", "pgcdc_event"))
		return false;
	quiet_sql_errors = true;
	ok = apply_map(b, i, PQgetvalue(ords, lo, 0), PQgetvalue(ords, hi - 1, 0), quarantined);
	quiet_sql_errors = false;
	if (ok)
		return exec_savepoint(b->conn, "RELEASE SAVEPOINT", "pgcdc_event");
	/* the error is replaced by the rollback: keep it */
	e = last_sql_error;
	if (sql_error_is_transient(&e))
	{
		log_msg(LOG_ERROR, "could not apply an event of %s to %s: %s (SQLSTATE %s)",
				m->source_table, m->target, e.message, e.code);
		return false;
	}
	if (!exec_savepoint(b->conn, "ROLLBACK TO SAVEPOINT", "pgcdc_event") ||
		!exec_savepoint(b->conn, "RELEASE SAVEPOINT", "pgcdc_event"))
		return false;
	if (hi - lo > 1)
		return isolate_range(b, i, ords, lo, lo + (hi - lo) / 2, quarantined) &&
			isolate_range(b, i, ords, lo + (hi - lo) / 2, hi, quarantined);
	if (!quarantine_event(b, i, PQgetvalue(ords, lo, 0), e.code, e.message, e.detail[0] ? e.detail : NULL))
		return false;
	/* named as the source knows it: commit LSN and position */
	log_msg(LOG_INFO, "quarantined %s event %s:%s of %s for %s: %s (SQLSTATE %s)",
			PQgetvalue(ords, lo, 1), PQgetvalue(ords, lo, 2), PQgetvalue(ords, lo, 3),
			m->source_table, m->target, e.message, e.code);
	(*quarantined)++;
	return true;
}

/* Map i failed as a whole: find the events that fail (isolate_range). */
static bool
isolate_map(ApplyJob *b, int i, long *quarantined)
{
	char		sql[160];
	PGresult   *ords;
	bool		ok;
	char		table[64];

	snprintf(sql, sizeof(sql), "SELECT pgcdc_ord, op, _source_lsn, _source_seq FROM %s ORDER BY pgcdc_ord",
			 staging_table(b, i, table, sizeof(table)));
	ords = exec_ok(b->conn, sql, 0, NULL);
	if (ords == NULL)
		return false;
	ok = PQntuples(ords) == 0 || isolate_range(b, i, ords, 0, PQntuples(ords), quarantined);
	PQclear(ords);
	return ok;
}

/* The checkpoint and the batch log, in the batch's transaction. */
static bool
record_batch(ApplyJob *b, long quarantined, int64_t started_us)
{
	char		first[32],
				commit[32],
				n_x[24],
				n_ev[24],
				n_q[24],
				started[32],
				ops[4][24];
	char		n_m[24];
	const char *params[13] = {b->p->name, first, commit, started, n_x, ops[0], ops[1], ops[2], ops[3],
	n_ev, n_q, quarantined > 0 ? "partial" : "ok", n_m};
	PGresult   *res;

	if (!checkpoint_advance(b->conn, b->p, b->last_commit_lsn, b->last_end_lsn,
							b->last_ts[0] ? b->last_ts : NULL, b->xacts, b->events, quarantined,
							b->source_lsn, b->source_moves, &b->lag_seconds))
		return false;
	/* heartbeats and markers move the checkpoint; a log row for each would be noise */
	if (b->events == 0 && quarantined == 0)
		return true;

	format_lsn(b->first_lsn, first);
	format_lsn(b->last_commit_lsn, commit);
	snprintf(n_x, sizeof(n_x), "%ld", b->xacts);
	snprintf(n_ev, sizeof(n_ev), "%ld", b->events);
	snprintf(n_q, sizeof(n_q), "%ld", quarantined);
	snprintf(n_m, sizeof(n_m), "%ld", b->moot);
	snprintf(started, sizeof(started), "%.6f", started_us / 1e6);
	for (int i = 0; i < 4; i++)
		snprintf(ops[i], sizeof(ops[i]), "%ld", b->per_op[i]);
	res = exec_ok(b->conn,
				  "INSERT INTO pgcdc.batch (pipeline, first_lsn, last_lsn, started_at, finished_at, duration_ms, "
				  "  transactions, inserts, updates, deletes, truncates, applied, skipped, quarantined, status) "
				  "VALUES ($1, $2, $3, pg_catalog.to_timestamp($4::float8), pg_catalog.clock_timestamp(), "
				  "  extract(epoch FROM pg_catalog.clock_timestamp() - pg_catalog.to_timestamp($4::float8)) * 1000, "
				  "  $5, $6, $7, $8, $9, $10::bigint - $11::bigint - $13::bigint, $13, $11, $12)",
				  13, params);
	PQclear(res);
	return res != NULL;
}

/*
 * Apply the job's batch and commit it with its checkpoint (in the apply
 * thread).  Returns false, with job->error set, if the batch did not
 * commit: its transactions will come again from the slot.
 */
static bool
apply_batch(ApplyJob *b, int64_t started_us)
{
	long		quarantined = b->refused;	/* by the staging COPY, already */
	bool		ok = true;
	int			i;

	if (b->events > 0)
	{
		if (!exec_savepoint(b->conn, "SAVEPOINT", "pgcdc_batch"))
			return false;
		/* a failure is logged once, below, with what happens next */
		quiet_sql_errors = true;
		for (i = 0; i < b->p->nmaps && ok; i++)
			if (b->staged[i] > 0)
				ok = apply_map(b, i, NULL, NULL, &quarantined);
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
			if (!exec_savepoint(b->conn, "ROLLBACK TO SAVEPOINT", "pgcdc_batch"))
				return false;
			quarantined = b->refused;
			for (i = 0; i < b->p->nmaps; i++)
			{
				if (b->staged[i] == 0)
					continue;
				if (!exec_savepoint(b->conn, "SAVEPOINT", "pgcdc_map"))
					return false;
				quiet_sql_errors = true;
				ok = apply_map(b, i, NULL, NULL, &quarantined);
				quiet_sql_errors = false;
				if (ok)
				{
					if (!exec_savepoint(b->conn, "RELEASE SAVEPOINT", "pgcdc_map"))
						return false;
					continue;
				}
				if (sql_error_is_transient(&last_sql_error))
				{
					log_msg(LOG_ERROR, "could not apply %s to %s: %s (SQLSTATE %s)", b->p->maps[i].source_table,
							b->p->maps[i].target, last_sql_error.message, last_sql_error.code);
					return false;
				}
				if (!exec_savepoint(b->conn, "ROLLBACK TO SAVEPOINT", "pgcdc_map") ||
					!isolate_map(b, i, &quarantined))
					return false;
			}
		}
	}

	if (!record_batch(b, quarantined, started_us) || !exec_cmd(b->conn, "COMMIT"))
		return false;
	b->quarantined = quarantined;
	return true;
}

/*
 * A batch that did not commit (it will be retried) leaves a 'failed' row in
 * the batch log, in a transaction of its own, so that pgcdc.status shows a
 * stuck pipeline and why.  Best effort: the connection may be gone.
 */
void
record_failed_batch(ApplyJob *b, const SqlError *e)
{
	char		first[32],
				commit[32],
				source[32],
				error[1100];
	const char *params[5] = {b->p->name, first, commit, error, source};
	PGresult   *res;

	if (PQstatus(b->conn) != CONNECTION_OK)
		return;
	quiet_sql_errors = true;
	if (PQtransactionStatus(b->conn) != PQTRANS_IDLE)
		(void) exec_cmd(b->conn, "ROLLBACK");
	format_lsn(b->first_lsn, first);
	format_lsn(b->last_commit_lsn, commit);
	snprintf(error, sizeof(error), "%s (SQLSTATE %s)", e->message, e->code);
	/* and the source's position as last seen: lag_bytes grows while it is stuck */
	format_lsn(b->source_lsn, source);
	res = exec_ok(b->conn,
				  "WITH c AS (UPDATE pgcdc.checkpoint SET source_lsn = greatest(source_lsn, $5::pg_catalog.pg_lsn), "
				  "                  source_seen_at = pg_catalog.clock_timestamp() WHERE pipeline = $1) "
				  "INSERT INTO pgcdc.batch (pipeline, first_lsn, last_lsn, finished_at, status, error) "
				  "VALUES ($1, $2, $3, pg_catalog.clock_timestamp(), 'failed', $4)", 5, params);
	PQclear(res);
	quiet_sql_errors = false;
}

bool
apply_job(ApplyJob *b)
{
	memset(&last_sql_error, 0, sizeof(last_sql_error));
	b->quarantined = 0;
	b->ok = apply_batch(b, now_us());
	if (!b->ok)
		b->error = last_sql_error;
	return b->ok;
}
