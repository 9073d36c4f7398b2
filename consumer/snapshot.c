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
 *		table.  The parent writes the checkpoint at the consistent point
 *		only when every table is done; until then a restart drops the slot
 *		and starts the snapshot over.
 */
#include "postgres_fe.h"

#include <sys/wait.h>
#include <time.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "consumer.h"

/* a child's exit status when it failed for a reason a retry may not meet */
#define CHILD_TRANSIENT	3

static volatile sig_atomic_t child_stop = 0;
static PGcancel *volatile child_cancel[2];

/*
 * Stop a copy: also cancel what the child's connections run, so a child
 * whose parent died does not go on to commit its table (PQcancel is safe
 * in a signal handler).
 */
static void
child_sigterm(int sig)
{
	char		errbuf[256];

	child_stop = 1;
	stop_requested = 1;
	for (int i = 0; i < lengthof(child_cancel); i++)
		if (child_cancel[i])
			PQcancel(child_cancel[i], errbuf, sizeof(errbuf));
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

static bool
copy_rows(PGconn *src, PGconn *dst, TableMap *m, long *rows)
{
	PQExpBuffer sql = createPQExpBuffer();
	PGresult   *res;
	char	   *buf;
	int			r = 0;
	int64_t		last_log = now_us();
	bool		ok = true;

	appendPQExpBuffer(sql, "COPY (SELECT %s FROM %s) TO STDOUT", m->data_columns, m->source_table);
	res = PQexec(src, sql->data);
	if (PQresultStatus(res) != PGRES_COPY_OUT)
	{
		log_msg(LOG_ERROR, "could not read %s: %s", m->source_table, conn_error(src));
		PQclear(res);
		destroyPQExpBuffer(sql);
		return false;
	}
	PQclear(res);
	resetPQExpBuffer(sql);
	appendPQExpBuffer(sql, "COPY pg_temp.pgcdc_snapshot (%s) FROM STDIN", m->data_columns);
	res = PQexec(dst, sql->data);
	destroyPQExpBuffer(sql);
	if (PQresultStatus(res) != PGRES_COPY_IN)
	{
		log_msg(LOG_ERROR, "could not load %s: %s", m->target, conn_error(dst));
		PQclear(res);
		return false;
	}
	PQclear(res);

	while (!child_stop && (r = PQgetCopyData(src, &buf, 0)) > 0)
	{
		if (PQputCopyData(dst, buf, r) != 1)
		{
			ok = false;
			PQfreemem(buf);
			break;
		}
		PQfreemem(buf);
		(*rows)++;
		if (child_stop)
		{
			ok = false;
			break;
		}
		if ((*rows & 0x3FFF) == 0 && now_us() - last_log > 5000000)
		{
			log_msg(LOG_INFO, "snapshot of %s: %ld rows copied", m->source_table, *rows);
			last_log = now_us();
		}
	}
	if (PQputCopyEnd(dst, ok ? NULL : "snapshot interrupted") != 1)
		ok = false;
	res = PQgetResult(dst);
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		if (!child_stop)
			log_msg(LOG_ERROR, "could not load %s: %s", m->target, conn_error(dst));
		ok = false;
	}
	PQclear(res);
	while ((res = PQgetResult(dst)) != NULL)
		PQclear(res);

	/*
	 * An interrupted COPY OUT cannot be drained (PQgetResult would return
	 * PGRES_COPY_OUT forever); the caller closes the connection instead.
	 */
	if (r == -1)
		while ((res = PQgetResult(src)) != NULL)
			PQclear(res);
	else
		ok = false;
	return ok;
}

/* res: a count of copied rows sent to the quarantine, for `why` */
static bool
log_quarantined(PGresult *res, TableMap *m, const char *why)
{
	if (res == NULL)
		return false;
	if (atol(PQgetvalue(res, 0, 0)) > 0)
		log_msg(LOG_INFO, "snapshot of %s into %s: %s rows %s and are quarantined",
				m->source_table, m->target, PQgetvalue(res, 0, 0), why);
	PQclear(res);
	return true;
}

/* The pipeline's rules hold for copied rows as for streamed ones. */
static bool
snapshot_rules(PGconn *dst, Pipeline *p, TableMap *m)
{
	const char *params[3] = {p->name, m->source_table, m->target};

	return log_quarantined(exec_ok(dst, "SELECT pgcdc.apply_rules($1, $2, 'pg_temp.pgcdc_snapshot_changes', $3, 'op')",
								   3, params), m, "fail a rule");
}

/*
 * A copied row with NULL in a key column the map names cannot be applied
 * (streamed, such an event is quarantined): quarantine it as an insert at
 * the snapshot's position, and apply the rest.
 */
static bool
snapshot_null_keys(PGconn *dst, Pipeline *p, TableMap *m)
{
	const char *params[6] = {p->name, m->source_table, m->target, m->key_columns,
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
		char	   *ident = PQescapeIdentifier(dst, col, strlen(col));

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
	ok = log_quarantined(exec_ok(dst, sql->data, 6, params), m, "have a NULL key");
	destroyPQExpBuffer(sql);
	return ok;
}

/* Copy one table map in a child process; returns the exit status. */
static int
snapshot_table(const char *source_conninfo, const char *target_conninfo, Pipeline *p, int i,
			   const char *snapshot_name, Lsn lsn, const char *snapshot_ts)
{
	TableMap   *m = &p->maps[i];
	PGconn	   *src = target_connect(source_conninfo);
	PGconn	   *dst = src ? target_connect(target_conninfo) : NULL;
	PQExpBuffer sql = createPQExpBuffer();
	char		lb[32];
	long		rows = 0;
	bool		is_append = strcmp(m->mode, "append") == 0;
	char	   *what = psprintf("snapshot of %s into %s: applying", m->source_table, m->target);
	PGresult   *res;
	bool		ok;
	int			ok_status = EXIT_ERROR;	/* when not ok */

	if (dst == NULL)
		return CHILD_TRANSIENT;
	child_cancel[0] = PQgetCancel(src);
	child_cancel[1] = PQgetCancel(dst);
	format_lsn(lsn, lb);
	ok = exec_cmd(src, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
	if (ok)
	{
		char	   *lit = PQescapeLiteral(src, snapshot_name, strlen(snapshot_name));

		appendPQExpBuffer(sql, "SET TRANSACTION SNAPSHOT %s", lit);
		PQfreemem(lit);
		ok = exec_cmd(src, sql->data);
	}

	/* the target starts empty: from here on it equals the source */
	resetPQExpBuffer(sql);
	appendPQExpBuffer(sql, "BEGIN; TRUNCATE %s; CREATE TEMP TABLE pgcdc_snapshot (%s) ON COMMIT DROP",
					  m->target, is_append ? "_row jsonb" : m->data_types);
	ok = ok && exec_cmd(dst, sql->data);
	if (ok)
	{
		TableMap	rows_of = *m;

		/* append keeps each row whole, as jsonb, for one 'R' (read) event each */
		if (is_append)
		{
			rows_of.data_columns = "_row";
			rows_of.source_table = psprintf("(SELECT pg_catalog.to_jsonb(t) AS _row FROM %s t) s",
											m->source_table);
		}
		ok = copy_rows(src, dst, &rows_of, &rows);
	}

	resetPQExpBuffer(sql);
	if (ok && is_append)
	{
		const char *params[3] = {lb, snapshot_ts,
			m->key_columns ? m->key_columns : source_identity(src, m->source_table)};

		/* _key as a streamed event's: the key columns (none: null) */
		appendPQExpBuffer(sql,
						  "INSERT INTO %s (_op, _source_lsn, _source_seq, _commit_ts, _key, _new, _received_at) "
						  "SELECT 'R', $1::pg_catalog.pg_lsn, pg_catalog.row_number() OVER (), $2::timestamptz, "
						  "(SELECT pg_catalog.jsonb_object_agg(k, s._row OPERATOR(pg_catalog.->) k) "
						  "   FROM pg_catalog.unnest($3::text[]) k), "
						  "_row, pg_catalog.now() FROM pg_temp.pgcdc_snapshot s",
						  m->target);
		res = exec_ok_progress(dst, sql->data, 3, params, what);
		ok = res != NULL;
		PQclear(res);
	}
	else if (ok)
	{
		const char *params[4] = {m->target, m->key_columns,
			strcmp(m->mode, "mirror") == 0 ? (m->soft_delete ? "true" : "false") : m->track_columns,
		NULL};

		appendPQExpBuffer(sql,
						  "CREATE TEMP TABLE pgcdc_snapshot_changes ON COMMIT DROP AS "
						  "SELECT %s, 'I'::text AS op, '%s'::pg_catalog.pg_lsn AS _source_lsn, 0 AS _source_seq, "
						  "'%s'::timestamptz AS _commit_ts FROM pg_temp.pgcdc_snapshot",
						  m->data_columns, lb, snapshot_ts);
		ok = exec_cmd(dst, sql->data) && snapshot_rules(dst, p, m) && snapshot_null_keys(dst, p, m);
		if (ok)
			log_msg(LOG_INFO, "snapshot of %s into %s: %ld rows copied, applying them",
					m->source_table, m->target, rows);
		res = !ok ? NULL : strcmp(m->mode, "mirror") == 0 ?
			exec_ok_progress(dst, "SELECT pgcdc.apply_mirror($1::pg_catalog.regclass, "
							 "'pg_temp.pgcdc_snapshot_changes', $2::text[], $3::boolean, 'op')", 3, params,
							 what) :
			exec_ok_progress(dst, "SELECT pgcdc.scd2_apply_changes($1::pg_catalog.regclass, "
							 "'pg_temp.pgcdc_snapshot_changes', $2::text[], '_source_lsn,_source_seq', 'op', "
							 "$3::text[], '_commit_ts')", 3, params, what);
		ok = res != NULL;
		PQclear(res);
	}
	/* a target made for this copy is complete with it */
	ok = ok && (!m->copy_now || target_copy_done(dst, m));
	ok = ok && !child_stop && exec_cmd(dst, "COMMIT");
	if (ok)
		log_msg(LOG_INFO, "snapshot of %s into %s: %ld rows", m->source_table, m->target, rows);
	else if (child_stop)
		log_msg(LOG_INFO, "snapshot of %s into %s stopped, nothing of it kept", m->source_table, m->target);
	else
		log_msg(LOG_ERROR, "snapshot of %s into %s failed", m->source_table, m->target);
	destroyPQExpBuffer(sql);
	free(what);
	if (!ok && (child_stop || PQstatus(src) == CONNECTION_BAD || PQstatus(dst) == CONNECTION_BAD ||
				sql_error_is_transient(&last_sql_error)))
		ok_status = CHILD_TRANSIENT;
	PQfinish(src);
	PQfinish(dst);
	return ok ? EXIT_DONE : ok_status;
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
		log_msg(LOG_INFO, "copying the rows of the mirror targets added to pipeline \"%s\" at %s (targets: %d)",
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
			if (!WIFEXITED(status) || WEXITSTATUS(status) == CHILD_TRANSIENT)
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
 * Mirror targets created now, after the pipeline's snapshot, get the rows
 * their source table holds: copied at a temporary slot's consistent point
 * P, each row at position (P, 0).  The stream then resumes from the
 * checkpoint, before P: the mirror's position guard makes the changes
 * before P that the copy already holds no-ops, and replays the others
 * (keys deleted before P come and go again), so the target converges to
 * the source.  (scd2 and append maps cannot take changes twice: they get
 * no copy, and a warning says so; see target.c.)
 *
 * Stopped, or failed for a reason a retry may not meet (a lost
 * connection), the targets are dropped and false returned: the next start
 * makes and copies them again.  A copy the data refuses (a NULL key, say)
 * would fail again: a warning, and its target gets only changes, as
 * streamed events it would be quarantined one by one.
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
		log_msg(LOG_WARNING, "the rows of the mirror targets added to pipeline \"%s\" were not all copied "
				"(the error is above): those not copied get only the changes from now on", p->name);
		log_hint("Fix the rows the copy refused, then drop the target: the next start makes and copies it again.");
		/* (else the next start would take the copy again, over the changes applied since) */
		for (int i = 0; i < sub.nmaps; i++)
			(void) target_copy_done(target, &sub.maps[i]);
		ok = true;
	}
	free(name);
	free(ts);
	free(slot);
	free(sub.maps);
	return ok;
}
