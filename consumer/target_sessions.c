/*
 * target_sessions.c
 *		The apply threads and the two target sessions (lanes) batches are
 *		applied in.  A complete batch goes to an apply thread, which stages
 *		it (staging.c) and applies it (apply.c).  While the batch before is
 *		still being applied it goes to the other session, so that its COPY
 *		runs meanwhile; it waits for that one's COMMIT before it applies
 *		anything, so batches commit one at a time, in source order, each
 *		with its checkpoint.  The pipeline's replication origin passes from
 *		session to session with the batches.
 */
#include "postgres_fe.h"

#include <signal.h>
#include <unistd.h>

#include "batch_int.h"

/*
 * The pipeline's replication origin marks what the batches write (see
 * target_setup_origin), and one session at a time may use it: a lane takes
 * it before it applies, and gives it up when its job has ended if the next
 * job is in the other lane (end_turn).
 */
static bool
take_origin(Batch *b, Lane *l)
{
	const char *params[1] = {b->p->origin};
	PGresult   *res;

	if (b->p->origin == NULL || l->has_origin)
		return true;
	res = exec_ok(l->conn, "SELECT pg_catalog.pg_replication_origin_session_setup($1)", 1, params);
	PQclear(res);
	l->has_origin = res != NULL;
	return l->has_origin;
}

static void
give_origin(Batch *b, Lane *l)
{
	PGresult   *res;

	if (!l->has_origin || one_session(b))
		return;
	/* (a session that is gone has released it) */
	quiet_sql_errors = true;
	res = exec_ok(l->conn, "SELECT pg_catalog.pg_replication_origin_session_reset()", 0, NULL);
	quiet_sql_errors = false;
	PQclear(res);
	l->has_origin = false;
}

/*
 * Wait until the job before this one (seq - 1) has ended: whether it
 * committed.  Jobs thus end, and commit, in the order they started.
 */
static bool
wait_turn(Batch *b, uint64_t seq)
{
	bool		ok;

	pthread_mutex_lock(&b->mu);
	while (b->ended < seq - 1)
		pthread_cond_wait(&b->ended_cv, &b->mu);
	ok = !b->broken;
	pthread_mutex_unlock(&b->mu);
	return ok;
}

/*
 * Job seq has ended.  If a later job started meanwhile (in the other lane),
 * its lane gets the replication origin; batch_flush looks at both counters
 * under the same lock, so a job that starts after this goes to this lane.
 */
static void
end_turn(Batch *b, Lane *l, uint64_t seq, bool ok)
{
	pthread_mutex_lock(&b->mu);
	if (l != NULL && b->started > seq)
		give_origin(b, l);
	b->ended = seq;
	if (!ok)
		b->broken = true;
	pthread_cond_broadcast(&b->ended_cv);
	pthread_mutex_unlock(&b->mu);
}

static void *
apply_thread(void *arg)
{
	Lane	   *l = arg;
	Batch	   *b = l->b;
	ApplyJob   *j = &b->jobs[l->job];
	sigset_t	all;
	bool		staged;
	bool		turn;

	/* signals are the stream loop's: its select() must see them */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	j->ok = false;
	staged = send_spill(b, l->job);
	if (!staged)
	{
		j->error = last_sql_error;
		if (j->error.code[0] == '\0')
		{
			/* a local file failed: worth a retry, as for a lost connection */
			strcpy(j->error.code, "58030");
			strcpy(j->error.message, "could not stage the batch");
		}
	}
	/* staged while the batch before was applied: apply it after that one committed */
	turn = wait_turn(b, l->seq);
	if (staged && turn && (!take_origin(b, l) || !send_born_lines(b, l->job)))
	{
		j->error = last_sql_error;
		staged = false;
	}
	if (staged && turn)
		apply_job(j);
	if (!j->ok && turn)
		record_failed_batch(j, &j->error);
	else if (!turn)
	{
		/* the batch before failed: this one comes again from the slot too */
		quiet_sql_errors = true;
		if (PQtransactionStatus(l->conn) != PQTRANS_IDLE)
			(void) exec_cmd(l->conn, "ROLLBACK");
		quiet_sql_errors = false;
		strcpy(j->error.code, "40001");
		strcpy(j->error.message, "the batch before failed");
		j->ok = false;
	}
	end_turn(b, l, l->seq, j->ok);
	__atomic_store_n(&l->done, true, __ATOMIC_RELEASE);
	if (write(b->done_pipe[1], "x", 1) != 1)
		log_msg(LOG_ERROR, "could not signal the end of a batch: %m");
	return NULL;
}

/* The lane of the last job started (the first lane before any). */
static Lane *
latest(Batch *b)
{
	return b->lanes[1].seq > b->lanes[0].seq ? &b->lanes[1] : &b->lanes[0];
}

/* The lane of the job that started first, of those in flight, or NULL. */
static Lane *
oldest(Batch *b)
{
	Lane	   *l = NULL;

	for (int k = 0; k < 2; k++)
		if (b->lanes[k].inflight && (l == NULL || b->lanes[k].seq < l->seq))
			l = &b->lanes[k];
	return l;
}

/*
 * Wait for the job of lane l (the oldest in flight).  On success *applied
 * is the end LSN of its last transaction: what the source may forget.
 */
static bool
collect(Batch *b, Lane *l, Lsn *applied)
{
	ApplyJob   *j = &b->jobs[l->job];
	char		c;

	pthread_join(l->thread, NULL);
	l->inflight = false;
	/* its thread wrote one byte; another may be the other lane's */
	if (read(b->done_pipe[0], &c, 1) != 1)
		log_msg(LOG_DEBUG, "no byte from the apply thread in its pipe");
	if (!j->ok)
	{
		last_sql_error = j->error;
		return false;
	}
	b->p->ckpt_commit_lsn = j->last_commit_lsn;
	b->p->ckpt_end_lsn = j->last_end_lsn;
	b->p->has_checkpoint = true;
	*applied = j->last_end_lsn;
	stats.transactions += j->xacts;
	stats.batches++;
	stats.quarantined += j->quarantined;
	stats.lag_seconds = j->lag_seconds;
	if (opts.verbose > 0)
	{
		char		lb[32];

		log_msg(LOG_DEBUG, "batch: %ld transactions, %ld events, %ld quarantined, up to %s in %.1f ms "
				"(target session %d)",
				j->xacts, j->events, j->quarantined, format_lsn(j->last_end_lsn, lb),
				(now_us() - j->started_us) / 1000.0, l == &b->lanes[0] ? 1 : 2);
	}
	return true;
}

/* If the batch being applied is done, take its result (*applied as in batch_flush). */
bool
batch_poll(Batch *b, Lsn *applied)
{
	Lane	   *l = oldest(b);

	*applied = InvalidLsn;
	/* called per message: a flag, not a system call */
	if (l == NULL || !__atomic_load_n(&l->done, __ATOMIC_ACQUIRE))
		return true;
	return collect(b, l, applied);
}

/* Wait until no batch is being applied. */
bool
batch_wait(Batch *b, Lsn *applied)
{
	Lane	   *l;

	*applied = InvalidLsn;
	while ((l = oldest(b)) != NULL)
		if (!collect(b, l, applied))
			return false;
	return true;
}

/*
 * The filling batch is complete: hand it to an apply thread, which stages
 * its rows at once (in the other session while the batch before is
 * applied) and applies them once that one has committed.  Then, as the
 * next batch fills the slot of the batch before, wait for that one.
 * *applied is the end LSN of the batch that committed meanwhile (InvalidLsn
 * if none did).
 */
bool
batch_flush(Batch *b, Lsn *applied)
{
	int			k = b->fill;
	Lane	   *busy = oldest(b);	/* runs jobs[1 - k] */
	Lane	   *l;
	uint64_t	seq;
	bool		running;

	*applied = InvalidLsn;
	if (!b->open)
		return true;
	if (one_session(b))
	{
		/* one session: the batch before must be done with it */
		if (busy != NULL && !collect(b, busy, applied))
			return false;
		busy = NULL;
	}
	pthread_mutex_lock(&b->mu);
	seq = ++b->started;
	running = busy != NULL && b->ended < busy->seq;
	pthread_mutex_unlock(&b->mu);
	if (busy != NULL && !running)
	{
		/* it has ended, keeping its session's origin: this one goes there */
		l = busy;
		busy = NULL;
		if (!collect(b, l, applied))
		{
			end_turn(b, NULL, seq, false);
			return false;
		}
	}
	else
		l = busy == NULL ? latest(b) : busy == &b->lanes[0] ? &b->lanes[1] : &b->lanes[0];
	b->lane_of[k] = l;
	l->job = k;
	b->jobs[k].conn = l->conn;
	b->jobs[k].p = b->p;
	b->jobs[k].has_rules = l->has_rules;
	b->jobs[k].source_lsn = stats.source_lsn;
	free(b->jobs[k].source_moves);
	b->jobs[k].source_moves = moves_text();
	b->open = false;
	b->fill = 1 - k;
	l->seq = seq;
	l->done = false;
	l->inflight = true;
	if ((errno = pthread_create(&l->thread, NULL, apply_thread, l)) != 0)
	{
		l->inflight = false;
		/* a job that never started never ends: later ones must not wait for it */
		end_turn(b, NULL, l->seq, false);
		log_msg(LOG_ERROR, "could not start the apply thread: %m");
		return false;
	}
	return busy == NULL || collect(b, busy, applied);
}

/*
 * Throw the filling batch away (its transactions come again from the
 * slot), after the batches being applied, if any, have ended.
 */
void
batch_abort(Batch *b)
{
	PGresult   *res;
	Lsn			ignored;
	Lane	   *l;

	if (b == NULL)
		return;
	b->open = false;
	while ((l = oldest(b)) != NULL)
		(void) collect(b, l, &ignored);
	for (int k = 0; k < 2; k++)
	{
		PGconn	   *conn = b->lanes[k].conn;

		if (conn == NULL || PQstatus(conn) != CONNECTION_OK)
		{
			b->lanes[k].copying = false;
			continue;
		}
		if (b->lanes[k].copying)
		{
			PQputCopyEnd(conn, "batch abandoned");
			while ((res = PQgetResult(conn)) != NULL)
				PQclear(res);
			b->lanes[k].copying = false;
		}
		if (PQtransactionStatus(conn) != PQTRANS_IDLE)
		{
			res = PQexec(conn, "ROLLBACK");
			PQclear(res);
		}
	}
}
