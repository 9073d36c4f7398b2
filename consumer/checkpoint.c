/*
 * checkpoint.c
 *		pgcdc.checkpoint, the consumer's exactly-once position: the last
 *		source transaction whose changes are in the target.  It is read at
 *		start, moved forward in the same target transaction as the batch it
 *		covers, and set once at the slot's consistent point by the snapshot.
 */
#include "postgres_fe.h"

#include "consumer.h"

bool
checkpoint_load(PGconn *conn, Pipeline *p)
{
	const char *params[1] = {p->name};
	PGresult   *res = exec_ok(conn, "SELECT commit_lsn, end_lsn FROM pgcdc.checkpoint "
							  "WHERE pipeline = $1 AND commit_lsn IS NOT NULL", 1, params);

	if (res == NULL)
		return false;
	p->has_checkpoint = PQntuples(res) == 1;
	if (p->has_checkpoint)
	{
		parse_lsn(PQgetvalue(res, 0, 0), &p->ckpt_commit_lsn);
		parse_lsn(PQgetvalue(res, 0, 1), &p->ckpt_end_lsn);
	}
	PQclear(res);
	return true;
}

/*
 * Move the checkpoint to a batch's last transaction, adding its totals.
 * Only ever forward: a checkpoint at or past commit_lsn means another
 * writer, and the batch must not commit.  source_lsn is where the source
 * was last seen; *lag_seconds gets the commit-to-apply delay.  Runs in the
 * apply thread: it touches no global state.
 */
bool
checkpoint_advance(PGconn *conn, Pipeline *p, Lsn commit_lsn, Lsn end_lsn, const char *commit_ts,
				   long xacts, long events, long quarantined, Lsn source_lsn, const char *source_moves,
				   double *lag_seconds)
{
	char		commit[32],
				end[32],
				src[32],
				n_x[24],
				n_ev[24],
				n_q[24];
	const char *params[9] = {p->name, commit, end, commit_ts, src, n_x, n_ev, n_q, source_moves};
	PGresult   *res;

	format_lsn(commit_lsn, commit);
	format_lsn(end_lsn, end);
	format_lsn(source_lsn > end_lsn ? source_lsn : end_lsn, src);
	snprintf(n_x, sizeof(n_x), "%ld", xacts);
	snprintf(n_ev, sizeof(n_ev), "%ld", events);
	snprintf(n_q, sizeof(n_q), "%ld", quarantined);
	res = exec_ok(conn,
				  "INSERT INTO pgcdc.checkpoint AS c (pipeline, commit_lsn, end_lsn, commit_ts, applied_at, "
				  "  source_lsn, source_seen_at, transactions, events, batches, quarantined, source_moves) "
				  "VALUES ($1, $2, $3, $4, pg_catalog.now(), $5, pg_catalog.now(), $6, $7, 1, $8, $9) "
				  "ON CONFLICT (pipeline) DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn, "
				  "  end_lsn = EXCLUDED.end_lsn, commit_ts = EXCLUDED.commit_ts, applied_at = EXCLUDED.applied_at, "
				  "  source_lsn = EXCLUDED.source_lsn, source_seen_at = EXCLUDED.source_seen_at, "
				  "  transactions = c.transactions + EXCLUDED.transactions, events = c.events + EXCLUDED.events, "
				  "  batches = c.batches + 1, quarantined = c.quarantined + EXCLUDED.quarantined, "
				  "  source_moves = EXCLUDED.source_moves "
				  "WHERE c.commit_lsn IS NULL OR c.commit_lsn < EXCLUDED.commit_lsn "
				  "RETURNING extract(epoch FROM pg_catalog.clock_timestamp() - c.commit_ts)",
				  9, params);
	if (res == NULL)
		return false;
	if (PQntuples(res) != 1)
	{
		log_msg(LOG_ERROR, "the checkpoint of pipeline \"%s\" is already at or past %s", p->name, commit);
		log_hint("Another writer moved it; only one consumer may run a pipeline.");
		PQclear(res);
		return false;
	}
	if (!PQgetisnull(res, 0, 0))
		*lag_seconds = atof(PQgetvalue(res, 0, 0));
	PQclear(res);
	return true;
}

/* The snapshot is in: the stream starts at the slot's consistent point. */
bool
checkpoint_set(PGconn *conn, Pipeline *p, Lsn lsn, const char *commit_ts)
{
	char		lb[32];
	const char *params[3] = {p->name, lb, commit_ts};
	PGresult   *res;

	format_lsn(lsn, lb);
	res = exec_ok(conn,
				  "INSERT INTO pgcdc.checkpoint AS c (pipeline, commit_lsn, end_lsn, commit_ts, applied_at) "
				  "VALUES ($1, $2, $2, $3, pg_catalog.now()) "
				  "ON CONFLICT (pipeline) DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn, "
				  "end_lsn = EXCLUDED.end_lsn, commit_ts = EXCLUDED.commit_ts, applied_at = EXCLUDED.applied_at",
				  3, params);
	if (res == NULL)
		return false;
	PQclear(res);
	p->has_checkpoint = true;
	p->ckpt_commit_lsn = p->ckpt_end_lsn = lsn;
	return true;
}

/*
 * A paused pipeline applies nothing, but the source goes on: record where
 * it is, so pgcdc.status and the metrics show the lag growing.  Best
 * effort: a failure here only leaves the lag as it was.
 */
void
checkpoint_note_source(PGconn *target, PGconn *source, Pipeline *p)
{
	PGresult   *res;

	quiet_sql_errors = true;
	if (p->has_checkpoint)
		stats.applied_lsn = p->ckpt_end_lsn;
	res = exec_ok(source, "SELECT pg_catalog.pg_current_wal_lsn()", 0, NULL);
	if (res != NULL)
	{
		const char *params[2] = {p->name, PQgetvalue(res, 0, 0)};

		parse_lsn(params[1], &stats.source_lsn);
		PQclear(exec_ok(target,
						"UPDATE pgcdc.checkpoint SET source_lsn = GREATEST(source_lsn, $2::pg_catalog.pg_lsn), "
						"source_seen_at = pg_catalog.now() WHERE pipeline = $1", 2, params));
		PQclear(res);
	}
	quiet_sql_errors = false;
}
