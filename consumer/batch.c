/*
 * batch.c
 *		Batches: whole source transactions applied in one target transaction
 *		together with the checkpoint that covers them.
 *
 *		Events are streamed into the target session's pgcdc_events with
 *		COPY as they arrive: one row per event and table map, with the row
 *		as a composite literal of the map's columns (the target parses no
 *		JSON per change).  The consumer keeps no events in memory, so a
 *		huge source transaction costs no client memory.
 *
 *		A full batch is applied by the apply thread (apply.c) while the
 *		stream goes on: the next batch's rows wait in a spill file until the
 *		target session is free, and then go to it with one COPY.  Only one
 *		batch is applied at a time, in source order, and the source learns
 *		a position only after the batch holding it has committed.
 *
 *		The event JSON (for the quarantine) goes to a per-batch file, not to
 *		the target, except for append maps whose rows are the JSON.
 */
#include "postgres_fe.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include "consumer.h"

struct Batch
{
	PGconn	   *conn;
	Pipeline   *p;
	bool		open;			/* a batch is filling */
	bool		copying;		/* ... and its COPY runs (else its rows go to the spill) */
	bool		skipping;		/* current source transaction is at/before the checkpoint */
	bool		tables_ready;	/* session temp tables created */
	ApplyJob	jobs[2];		/* jobs[fill] fills; the other may be applying */
	int			fill;
	bool		inflight;		/* the apply thread runs jobs[1 - fill] */
	bool		done;			/* ... and has finished (set by it) */
	pthread_t	thread;
	int			done_pipe[2];	/* the apply thread writes a byte when it ends */
	FILE	   *spill;			/* COPY rows of the filling batch while the session is busy */
	PQExpBuffer line;			/* the COPY line being built */
	PQExpBuffer tmp;			/* a field being built */
};

Batch *
batch_new(PGconn *target, Pipeline *p)
{
	Batch	   *b = pg_malloc0(sizeof(Batch));
	int			i;

	b->conn = target;
	b->p = p;
	b->done_pipe[0] = b->done_pipe[1] = -1;
	for (i = 0; i < 2; i++)
	{
		b->jobs[i].per_map = pg_malloc0(sizeof(long) * p->nmaps);
		b->jobs[i].raw = tmpfile();
	}
	b->spill = tmpfile();
	if (b->jobs[0].raw == NULL || b->jobs[1].raw == NULL || b->spill == NULL ||
		pipe(b->done_pipe) != 0)
	{
		log_msg(LOG_ERROR, "could not create the batch's temporary files: %m");
		batch_free(b);
		return NULL;
	}
	fcntl(b->done_pipe[0], F_SETFL, O_NONBLOCK);
	b->line = createPQExpBuffer();
	b->tmp = createPQExpBuffer();
	return b;
}

void
batch_free(Batch *b)
{
	int			i;

	if (b == NULL)
		return;
	batch_abort(b);
	for (i = 0; i < 2; i++)
	{
		free(b->jobs[i].per_map);
		if (b->jobs[i].raw)
			fclose(b->jobs[i].raw);
	}
	if (b->spill)
		fclose(b->spill);
	for (i = 0; i < 2; i++)
		if (b->done_pipe[i] >= 0)
			close(b->done_pipe[i]);
	if (b->line)
		destroyPQExpBuffer(b->line);
	if (b->tmp)
		destroyPQExpBuffer(b->tmp);
	free(b);
}

long
batch_events(Batch *b)
{
	return b->jobs[b->fill].events;
}

bool
batch_open(Batch *b)
{
	return b->open;
}

/* A batch is filling or being applied: nothing past it may be confirmed. */
bool
batch_pending(Batch *b)
{
	return b->open || b->inflight;
}

/* Readable when the batch being applied is done (-1: none is). */
int
batch_wait_fd(Batch *b)
{
	return b->inflight ? b->done_pipe[0] : -1;
}

int64_t
batch_started_us(Batch *b)
{
	return b->jobs[b->fill].started_us;
}

static bool
empty_file(FILE *f)
{
	fflush(f);
	rewind(f);
	return ftruncate(fileno(f), 0) == 0;
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
	 * the server), and the event's JSON for append targets (raw) or where
	 * it is in the batch's file (raw_off, raw_len).
	 */
	appendPQExpBufferStr(sql, "DROP TABLE IF EXISTS pg_temp.pgcdc_events CASCADE; "
						 "CREATE TEMP TABLE pgcdc_events (ord bigint NOT NULL, "
						 "map integer NOT NULL, op text NOT NULL, commit_lsn pg_catalog.pg_lsn, seq integer, "
						 "ts timestamptz, ut text[], old_key jsonb, row_text text, raw text, "
						 "raw_off bigint, raw_len integer) ON COMMIT DELETE ROWS;");
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

/* Open the target transaction and the COPY of the filling batch. */
static bool
start_copy(Batch *b)
{
	PGresult   *res;

	if (!b->tables_ready && !create_session_tables(b))
		return false;
	if (!exec_cmd(b->conn, "BEGIN"))
		return false;
	/* CSV with separators that text rarely contains; fields are quoted (csv_field) */
	res = PQexec(b->conn, "COPY pg_temp.pgcdc_events (ord, map, op, commit_lsn, seq, ts, ut, old_key, "
				 "row_text, raw, raw_off, raw_len) "
				 "FROM STDIN (FORMAT csv, DELIMITER E'\\x1f', QUOTE E'\\x1e')");
	if (PQresultStatus(res) != PGRES_COPY_IN)
	{
		log_msg(LOG_ERROR, "could not stage events in the target: %s", conn_error(b->conn));
		PQclear(res);
		return false;
	}
	PQclear(res);
	b->copying = true;
	return true;
}

/* The session is free: send it the rows that waited in the spill file. */
static bool
drain_spill(Batch *b)
{
	char		chunk[65536];
	size_t		n;

	if (!start_copy(b))
		return false;
	fflush(b->spill);
	rewind(b->spill);
	while ((n = fread(chunk, 1, sizeof(chunk), b->spill)) > 0)
	{
		if (PQputCopyData(b->conn, chunk, (int) n) != 1)
		{
			log_msg(LOG_ERROR, "could not stage events in the target: %s", conn_error(b->conn));
			return false;
		}
	}
	if (ferror(b->spill) || !empty_file(b->spill))
	{
		log_msg(LOG_ERROR, "could not read the batch's spill file: %m");
		return false;
	}
	return true;
}

static bool
end_copy(Batch *b)
{
	PGresult   *res;
	bool		ok;

	b->copying = false;
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

/* Start filling a new batch. */
static bool
open_batch(Batch *b)
{
	ApplyJob   *j = &b->jobs[b->fill];

	j->events = j->xacts = j->lines = 0;
	memset(j->per_op, 0, sizeof(j->per_op));
	memset(j->per_map, 0, sizeof(long) * b->p->nmaps);
	j->first_lsn = j->last_commit_lsn = j->last_end_lsn = InvalidLsn;
	j->last_ts[0] = '\0';
	j->raw_len = 0;
	if (!empty_file(j->raw))
	{
		log_msg(LOG_ERROR, "could not empty the batch's event file: %m");
		return false;
	}
	if (!b->inflight && !start_copy(b))
		return false;
	b->open = true;
	j->started_us = now_us();
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
	if (!b->open && !open_batch(b))
		return false;
	if (b->jobs[b->fill].first_lsn == InvalidLsn)
		b->jobs[b->fill].first_lsn = begin->commit_lsn;
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

/*
 * One line of pgcdc_events: the event as it feeds map i.  *raw_off is the
 * event's place in the batch's event file, -1 until it is written there.
 */
static bool
event_line(Batch *b, int i, const EventInfo *ev, const char *json, size_t len, off_t *raw_off)
{
	TableMap   *m = &b->p->maps[i];
	ApplyJob   *j = &b->jobs[b->fill];
	PQExpBuffer line = b->line;
	bool		append = strcmp(m->mode, "append") == 0;
	char		lsn[32];

	resetPQExpBuffer(line);
	appendPQExpBuffer(line, "%ld\x1f%d\x1f%c\x1f%s\x1f%ld\x1f", ++j->lines, i, ev->op,
					  format_lsn(ev->commit_lsn, lsn), ev->seq);
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
	if (!append && ev->op != 'T')
	{
		JsonSpan	row = ev->op == 'D' ? (ev->old.ptr ? ev->old : ev->key) : ev->new_row;

		resetPQExpBuffer(b->tmp);
		if (row.ptr && !row_literal(b->tmp, m, row))
			return false;
		if (row.ptr)
			csv_field(line, b->tmp->data, b->tmp->len);
	}
	appendPQExpBufferChar(line, '\x1f');
	if (append)
	{
		csv_field(line, json, len);
		appendPQExpBufferStr(line, "\x1f\x1f\n");
		return true;
	}
	if (*raw_off < 0)
	{
		if (fwrite(json, 1, len, j->raw) != len)
		{
			log_msg(LOG_ERROR, "could not write the batch's event file: %m");
			return false;
		}
		*raw_off = j->raw_len;
		j->raw_len += len;
	}
	appendPQExpBuffer(line, "\x1f%lld\x1f%zu\n", (long long) *raw_off, len);
	return true;
}

bool
batch_add_event(Batch *b, const EventInfo *ev, const char *json, size_t len)
{
	ApplyJob   *j = &b->jobs[b->fill];
	off_t		raw_off = -1;
	bool		found = false;
	int			i;

	if (b->skipping || !b->open || ev->op == 'M' || ev->schema == NULL || ev->table == NULL)
		return true;
	/* one source table may feed several targets: a line for each */
	for (i = 0; i < b->p->nmaps; i++)
	{
		if (strcmp(b->p->maps[i].source_schema, ev->schema) != 0 ||
			strcmp(b->p->maps[i].source_name, ev->table) != 0)
			continue;
		if (!event_line(b, i, ev, json, len, &raw_off))
		{
			log_msg(LOG_ERROR, "could not read the row of an event: %.200s", json);
			return false;
		}
		if (b->copying ? PQputCopyData(b->conn, b->line->data, b->line->len) != 1 :
			fwrite(b->line->data, 1, b->line->len, b->spill) != b->line->len)
		{
			log_msg(LOG_ERROR, "could not stage events: %s",
					b->copying ? conn_error(b->conn) : strerror(errno));
			return false;
		}
		j->per_map[i]++;
		found = true;
	}
	if (!found)
		return true;
	j->events++;
	stats.events++;
	switch (ev->op)
	{
		case 'I':
			j->per_op[0]++;
			break;
		case 'U':
			j->per_op[1]++;
			break;
		case 'D':
			j->per_op[2]++;
			break;
		case 'T':
			j->per_op[3]++;
			break;
	}
	return true;
}

bool
batch_end_xact(Batch *b, const EventInfo *commit)
{
	ApplyJob   *j = &b->jobs[b->fill];

	if (b->skipping || !b->open)
	{
		b->skipping = false;
		return true;
	}
	j->xacts++;
	j->last_commit_lsn = commit->commit_lsn;
	j->last_end_lsn = commit->end_lsn;
	snprintf(j->last_ts, sizeof(j->last_ts), "%s", commit->ts ? commit->ts : "");
	return true;
}

static void *
apply_thread(void *arg)
{
	Batch	   *b = arg;
	sigset_t	all;

	/* signals are the stream loop's: its select() must see them */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	apply_job(&b->jobs[1 - b->fill]);
	__atomic_store_n(&b->done, true, __ATOMIC_RELEASE);
	if (write(b->done_pipe[1], "x", 1) != 1)
		log_msg(LOG_ERROR, "could not signal the end of a batch: %m");
	return NULL;
}

/*
 * Wait for the batch being applied.  On success *applied is the end LSN of
 * its last transaction: what the source may forget.
 */
static bool
collect(Batch *b, Lsn *applied)
{
	ApplyJob   *j = &b->jobs[1 - b->fill];
	char		c;

	pthread_join(b->thread, NULL);
	b->inflight = false;
	while (read(b->done_pipe[0], &c, 1) == 1)
		;
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

		log_msg(LOG_DEBUG, "batch: %ld transactions, %ld events, %ld quarantined, up to %s in %.1f ms",
				j->xacts, j->events, j->quarantined, format_lsn(j->last_end_lsn, lb),
				(now_us() - j->started_us) / 1000.0);
	}
	/* the filling batch may have the session now */
	if (b->open && !b->copying && !drain_spill(b))
		return false;
	return true;
}

/* If the batch being applied is done, take its result (*applied as in batch_flush). */
bool
batch_poll(Batch *b, Lsn *applied)
{
	*applied = InvalidLsn;
	/* called per message: a flag, not a system call */
	if (!b->inflight || !__atomic_load_n(&b->done, __ATOMIC_ACQUIRE))
		return true;
	return collect(b, applied);
}

/* Wait until no batch is being applied. */
bool
batch_wait(Batch *b, Lsn *applied)
{
	*applied = InvalidLsn;
	return !b->inflight || collect(b, applied);
}

/*
 * The filling batch is complete: hand it to the apply thread, once the
 * previous one has committed.  *applied is the end LSN of the batch that
 * committed meanwhile (InvalidLsn if none did).
 */
bool
batch_flush(Batch *b, Lsn *applied)
{
	*applied = InvalidLsn;
	if (!b->open)
		return true;
	if (b->inflight && !collect(b, applied))
		return false;
	if (!b->copying && !drain_spill(b))
		return false;
	if (!end_copy(b))
		return false;
	b->jobs[b->fill].conn = b->conn;
	b->jobs[b->fill].p = b->p;
	b->jobs[b->fill].source_lsn = stats.source_lsn;
	b->open = false;
	b->fill = 1 - b->fill;
	b->inflight = true;
	b->done = false;
	if ((errno = pthread_create(&b->thread, NULL, apply_thread, b)) != 0)
	{
		b->inflight = false;
		log_msg(LOG_ERROR, "could not start the apply thread: %m");
		return false;
	}
	return true;
}

/*
 * Throw the filling batch away (its transactions come again from the
 * slot), after the batch being applied, if any, has ended.
 */
void
batch_abort(Batch *b)
{
	PGresult   *res;
	Lsn			ignored;

	if (b == NULL)
		return;
	if (b->open && !b->copying)
		(void) empty_file(b->spill);
	b->open = false;			/* before collect: nothing to hand the session to */
	if (b->inflight)
		(void) collect(b, &ignored);
	if (PQstatus(b->conn) != CONNECTION_OK)
	{
		b->copying = false;
		return;
	}
	if (b->copying)
	{
		PQputCopyEnd(b->conn, "batch abandoned");
		while ((res = PQgetResult(b->conn)) != NULL)
			PQclear(res);
		b->copying = false;
	}
	if (PQtransactionStatus(b->conn) != PQTRANS_IDLE)
	{
		res = PQexec(b->conn, "ROLLBACK");
		PQclear(res);
	}
}
