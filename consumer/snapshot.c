/*
 * snapshot.c
 *		The initial copy of a new pipeline, consistent with its slot.
 *
 *		The slot is created with an exported snapshot; each table map is
 *		copied by a child process that imports that snapshot on its own
 *		source connection (up to --snapshot-jobs at once), streams the rows
 *		with COPY into a staging table in the target, and applies them as
 *		inserts at the slot's consistent point (so the stream's first change
 *		is newer than every copied row), in one target transaction per
 *		table (snapshot_table.c).  The parent writes the checkpoint at the
 *		consistent point only when every table is done; until then a restart
 *		drops the slot and starts the snapshot over.
 */
#include "postgres_fe.h"

#include <sys/wait.h>
#include <time.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "consumer.h"

/*
 * Stop a copy: also cancel what the child's connections run, so a child
 * whose parent died does not go on to commit its table (PQcancel is safe
 * in a signal handler).
 */
static void
child_sigterm(int sig)
{
	char		errbuf[256];

	snapshot_child_stop = 1;
	stop_requested = 1;
	for (int i = 0; i < lengthof(snapshot_child_cancel); i++)
		if (snapshot_child_cancel[i])
			PQcancel(snapshot_child_cancel[i], errbuf, sizeof(errbuf));
}

/*
 * A child must not keep the parent's connections open: if the parent is
 * killed, its sessions (and the pipeline lock, and the slot) must end with
 * it.  The child only uses connections it opens itself.
 */
static void
close_inherited_fds(void)
{
	for (int fd = 3; fd < 1024; fd++)
		close(fd);
}

/*
 * Wait for a child to exit.  Signal handlers restart system calls, so a
 * blocking waitpid would not see a stop request: poll instead, answer
 * metrics scrapes meanwhile, and pass a stop request on to the children.
 */
static pid_t
wait_child(int *status, pid_t *pids, int n)
{
	bool		stopping = false;
	pid_t		pid;

	while ((pid = waitpid(-1, status, WNOHANG)) == 0)
	{
		struct timespec ts = {0, 100 * 1000 * 1000};

		if (stop_requested && !stopping)
		{
			for (int i = 0; i < n; i++)
				if (pids[i] > 0)
					kill(pids[i], SIGTERM);
			stopping = true;
		}
		metrics_poll();
		nanosleep(&ts, NULL);
	}
	return pid;
}

/*
 * The effective time of the snapshot's rows (scd2 _valid_from, the append
 * log's commit time): the source's clock just before the slot is created.
 * A transaction streamed later commits after every transaction that was
 * running then, so its commit time is not earlier; the target's clock, or
 * a time taken after the slot exists, can be later than such commits and
 * would make the first streamed changes look older than the snapshot.
 */
char *
snapshot_source_time(PGconn *source)
{
	PGresult   *res = exec_ok(source,
							  "SELECT pg_catalog.to_char(pg_catalog.clock_timestamp() AT TIME ZONE 'UTC', "
							  "'YYYY-MM-DD HH24:MI:SS.US') || '+00'", 0, NULL);
	char	   *ts;

	if (res == NULL)
		return NULL;
	ts = pg_strdup(PQgetvalue(res, 0, 0));
	PQclear(res);
	return ts;
}

/* Copy every map of p in forked children; the initial snapshot then sets the checkpoint. */
static bool
copy_maps(const char *source_conninfo, PGconn *target, Pipeline *p, const char *snapshot_name,
		  Lsn consistent_point, const char *snapshot_ts, bool initial, bool *transient)
{
	pid_t	   *pids = pg_malloc0(sizeof(pid_t) * p->nmaps);
	int			next = 0,
				running = 0,
				failed = 0;
	char		lb[32];
	char	   *ts;
	bool		ok;
	const char *target_conninfo;
	PQExpBuffer tconn = createPQExpBuffer();
	PQconninfoOption *o = PQconninfo(target);

	/* the children connect to the target with the parent's parameters */
	for (PQconninfoOption *c = o; c && c->keyword; c++)
	{
		if (c->val && *c->val && strcmp(c->keyword, "replication") != 0)
		{
			appendPQExpBuffer(tconn, "%s='", c->keyword);
			for (const char *v = c->val; *v; v++)
			{
				if (*v == '\'' || *v == '\\')
					appendPQExpBufferChar(tconn, '\\');
				appendPQExpBufferChar(tconn, *v);
			}
			appendPQExpBufferStr(tconn, "' ");
		}
	}
	PQconninfoFree(o);
	target_conninfo = tconn->data;

	ts = pg_strdup(snapshot_ts);
	if (initial)
		log_msg(LOG_INFO, "initial snapshot of %d tables at %s, %d at a time",
				p->nmaps, format_lsn(consistent_point, lb), opts.snapshot_jobs);
	else
		log_msg(LOG_INFO, "copying the rows of the targets added to pipeline \"%s\" at %s (targets: %d)",
				p->name, format_lsn(consistent_point, lb), p->nmaps);

	fflush(NULL);
	while (next < p->nmaps || running > 0)
	{
		int			status;
		pid_t		pid;

		while (next < p->nmaps && running < opts.snapshot_jobs && failed == 0 && !stop_requested)
		{
			pid = fork();
			if (pid < 0)
			{
				log_msg(LOG_ERROR, "could not fork: %m");
				*transient = true;
				failed++;
				break;
			}
			if (pid == 0)
			{
				signal(SIGTERM, child_sigterm);
				signal(SIGINT, child_sigterm);
#ifdef __linux__
				/* a parent killed with -9 must not leave copies running */
				prctl(PR_SET_PDEATHSIG, SIGTERM);
#endif
				if (getppid() == 1)
					_exit(EXIT_ERROR);
				close_inherited_fds();
				_exit(snapshot_table(source_conninfo, target_conninfo, p, next, snapshot_name,
									 consistent_point, ts));
			}
			pids[next++] = pid;
			running++;
		}
		if (running == 0)
			break;
		if ((pid = wait_child(&status, pids, next)) < 0)
			break;
		for (int i = 0; i < next; i++)
			if (pids[i] == pid)
				pids[i] = 0;
		running--;
		if (!WIFEXITED(status) || WEXITSTATUS(status) != EXIT_DONE)
		{
			if (!WIFEXITED(status) || WEXITSTATUS(status) == SNAPSHOT_CHILD_TRANSIENT)
				*transient = true;
			failed++;
			for (int i = 0; i < next; i++)
				if (pids[i] > 0)
					kill(pids[i], SIGTERM);
		}
	}
	free(pids);
	destroyPQExpBuffer(tconn);
	if (failed > 0 || stop_requested || next < p->nmaps)
	{
		if (stop_requested && initial)
			log_msg(LOG_INFO, "initial snapshot stopped: the next start takes it again");
		free(ts);
		return false;
	}
	if (!initial)
	{
		free(ts);
		return true;
	}

	/* every table is in: the stream starts at the consistent point */
	for (int i = 0; i < p->nmaps; i++)
		p->maps[i].copied_at = InvalidLsn;
	ok = checkpoint_set(target, p, consistent_point, ts);
	free(ts);
	if (!ok)
	{
		*transient = PQstatus(target) == CONNECTION_BAD || sql_error_is_transient(&last_sql_error);
		return false;
	}
	log_msg(LOG_INFO, "initial snapshot done at %s", lb);
	return true;
}

/* *transient: it failed for a reason a retry may not meet (else the data, or a bug, refused it) */
bool
snapshot_run(const char *source_conninfo, PGconn *target, Pipeline *p,
			 const char *snapshot_name, Lsn consistent_point, const char *snapshot_ts, bool *transient)
{
	*transient = false;
	return copy_maps(source_conninfo, target, p, snapshot_name, consistent_point, snapshot_ts, true, transient);
}

/* Drop the targets of p, made just now and empty: the next start makes and copies them again. */
static void
drop_targets(PGconn *target, Pipeline *p)
{
	for (int i = 0; i < p->nmaps; i++)
	{
		char	   *drop = psprintf("DROP TABLE IF EXISTS %s", p->maps[i].target);

		quiet_sql_errors = true;
		(void) exec_cmd(target, drop);
		quiet_sql_errors = false;
		free(drop);
	}
}

/*
 * Targets created now, after the pipeline's snapshot, get the rows their
 * source table holds: copied at a temporary slot's consistent point P,
 * each row at position (P, 0), and P written into the target's comment in
 * the copy's transaction.  The stream then resumes from the checkpoint,
 * before P, and skips for that target the changes committed at or before
 * P (they are in the copy), also after a restart: mirror, scd2 and append
 * targets each get every change once.
 *
 * Stopped, or failed for a reason a retry may not meet (a lost
 * connection), the targets are dropped and false returned: the next start
 * makes and copies them again.  Rows the target refuses are quarantined
 * (snapshot_table.c); a copy that fails otherwise would fail again: a
 * warning, and its target gets only changes.
 */
bool
snapshot_added_maps(const char *source_conninfo, PGconn *source, PGconn *target, Pipeline *p)
{
	Pipeline	sub = *p;
	Stream	   *s = NULL;
	char	   *slot;
	char	   *name = NULL;
	char	   *ts = NULL;
	Lsn			at = InvalidLsn;
	bool		ok = false;
	bool		transient = true;
	char		lb[32];

	sub.nmaps = 0;
	sub.maps = pg_malloc0(sizeof(TableMap) * Max(p->nmaps, 1));
	for (int i = 0; i < p->nmaps; i++)
		if (p->maps[i].copy_now)
			sub.maps[sub.nmaps++] = p->maps[i];
	if (sub.nmaps == 0)
	{
		free(sub.maps);
		return true;
	}
	slot = psprintf("pgcdc_copy_%d", (int) getpid());
	if ((ts = snapshot_source_time(source)) != NULL && (s = stream_open(source_conninfo)) != NULL)
	{
		if (stream_create_slot(s, slot, true, true, &at, &name))
		{
			transient = false;
			ok = copy_maps(source_conninfo, target, &sub, name, at, ts, false, &transient);
		}
		else
			transient = PQstatus(stream_conn(s)) == CONNECTION_BAD;
		stream_close(s);		/* the temporary slot goes with it */
	}
	if (ok)
		log_msg(LOG_INFO, "copy of the tables added to pipeline \"%s\" done at %s", p->name, format_lsn(at, lb));
	else if (transient || stop_requested)
		drop_targets(target, &sub);
	else
	{
		log_msg(LOG_WARNING, "the rows of the targets added to pipeline \"%s\" were not all copied "
				"(the error is above): those not copied get only the changes from now on", p->name);
		log_hint("Fix the rows the copy refused, then drop the target: the next start makes and copies it again.");
		/* (else the next start would take the copy again, over the changes applied since) */
		for (int i = 0; i < sub.nmaps; i++)
			(void) target_copy_given_up(target, &sub.maps[i]);
		ok = true;
	}
	/* the copies that committed: the stream skips what they hold */
	for (int i = 0; ok && i < p->nmaps; i++)
		if (p->maps[i].copy_now && !target_read_marks(target, &p->maps[i]))
			ok = false;
	free(name);
	free(ts);
	free(slot);
	free(sub.maps);
	return ok;
}
