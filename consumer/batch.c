/*
 * batch.c
 *		Batches: whole source transactions applied in one target transaction
 *		together with the checkpoint that covers them.
 *
 *		Each event becomes, per table map it feeds, one COPY row of the
 *		map's staging table in the target session (pgcdc_changes_N: routing
 *		fields and the map's columns, each value a field its column's input
 *		function parses, so the target parses no JSON per change;
 *		pgcdc_events_N, the event JSON, for append maps).  Rows are written
 *		to a spill file as events arrive: the consumer keeps no events in
 *		memory, so a huge source transaction costs it disk, not memory.
 *
 *		When the batch is full, an apply thread sends its rows with one
 *		COPY per map (for mirror maps, less the rows a later event on the
 *		same key makes moot: compact.c) and applies them (apply.c), while
 *		the stream goes on into the next batch's spill file.  Batches
 *		alternate between two target sessions (lanes): the next batch's
 *		COPY runs in one while the batch before is applied in the other,
 *		and waits for that one's COMMIT before it applies anything, so
 *		batches still commit one at a time, in source order.  The source
 *		learns a position only after the batch holding it has committed.
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

/*
 * A target session and the job it runs.  A job goes to the lane of the job
 * before if that one has ended (its session is warm: its temp tables, plans
 * and buffers), else to the other.  With one session (--apply-sessions 1,
 * or the second could not be opened) both lanes use it, and a job starts
 * only after the one before has ended.
 */
typedef struct Lane
{
	struct Batch *b;
	int			job;			/* the jobs[] slot it runs */
	PGconn	   *conn;
	bool		tables_ready;	/* its session's temp tables exist */
	bool		copying;		/* a COPY is open in it */
	bool		has_origin;		/* its session uses the pipeline's replication origin */
	bool	   *has_rules;		/* per map, as its job was staged */
	bool		inflight;		/* a thread runs the job (main thread's view) */
	bool		done;			/* ... and has ended (set by it) */
	uint64_t	seq;			/* the job's number: it applies after job seq - 1 ended */
	pthread_t	thread;
} Lane;

struct Batch
{
	Pipeline   *p;
	bool		open;			/* a batch is filling */
	bool		skipping;		/* current source transaction is at/before the checkpoint */
	ApplyJob	jobs[2];		/* jobs[fill] fills; the other may be applying */
	Lane		lanes[2];
	Lane	   *lane_of[2];		/* the lane of jobs[k] */
	Lane	   *last;			/* the lane of the last job */
	int			fill;
	int			done_pipe[2];	/* each apply thread writes a byte when it ends */
	/* jobs end in the order they started (each waits for the one before) */
	pthread_mutex_t mu;
	pthread_cond_t ended_cv;
	uint64_t	started;		/* jobs started */
	uint64_t	ended;			/* jobs ended (under mu) */
	bool		broken;			/* one of them failed: later ones apply nothing (under mu) */
	/* per job, as jobs[]: */
	FILE	   *spill[2];		/* its COPY rows, each after a SpillHeader */
	char	   *buffers[4];		/* stdio buffers of spill[] and jobs[].raw */
	Compactor  *compact[2];		/* its mirror keys */
	PQExpBuffer line;			/* the COPY line being built */
	PQExpBuffer tmp;			/* a field being built */
	PQExpBuffer key;			/* a compaction key being built */
};

#define SPILL_BUFFER	(1024 * 1024)

typedef struct SpillHeader
{
	uint32_t	len;
	int32_t		map;
	int64_t		raw_off;		/* the event's JSON in the job's raw file (not append) */
	uint32_t	raw_len;
} SpillHeader;

/* A line held in memory while the lines a COPY refused are found. */
typedef struct SpillRow
{
	SpillHeader h;
	char	   *data;
} SpillRow;

/*
 * An anonymous file for a batch: in $TMPDIR (default /tmp), removed at once
 * so that nothing is left behind, whatever way the consumer ends.
 */
static FILE *
batch_file(void)
{
	const char *dir = getenv("TMPDIR");
	char		path[MAXPGPATH];
	int			fd;
	FILE	   *f;

	snprintf(path, sizeof(path), "%s/pgcdc_consumer.XXXXXX", dir && *dir ? dir : "/tmp");
	if ((fd = mkstemp(path)) < 0)
		return NULL;
	unlink(path);
	if ((f = fdopen(fd, "w+")) == NULL)
		close(fd);
	return f;
}

Batch *
batch_new(PGconn *target, PGconn *target2, Pipeline *p)
{
	Batch	   *b = pg_malloc0(sizeof(Batch));
	int			i;

	b->p = p;
	b->done_pipe[0] = b->done_pipe[1] = -1;
	pthread_mutex_init(&b->mu, NULL);
	pthread_cond_init(&b->ended_cv, NULL);
	for (i = 0; i < 2; i++)
	{
		b->jobs[i].per_map = pg_malloc0(sizeof(long) * p->nmaps);
		b->jobs[i].raw = batch_file();
		b->lanes[i].b = b;
		b->lane_of[i] = &b->lanes[i];
		b->lanes[i].has_rules = pg_malloc0(sizeof(bool) * Max(p->nmaps, 1));
	}
	for (i = 0; i < 2; i++)
	{
		b->spill[i] = batch_file();
		b->compact[i] = compact_new();
	}
	b->lanes[0].conn = target;
	b->lanes[1].conn = target2 ? target2 : target;
	/* run_once set the origin up in the first session */
	b->lanes[0].has_origin = p->origin != NULL;
	b->lanes[1].has_origin = p->origin != NULL && target2 == NULL;
	b->last = &b->lanes[0];
	if (b->jobs[0].raw == NULL || b->jobs[1].raw == NULL || b->spill[0] == NULL || b->spill[1] == NULL ||
		pipe(b->done_pipe) != 0)
	{
		log_msg(LOG_ERROR, "could not create the batch's temporary files in $TMPDIR (default /tmp): %m");
		batch_free(b);
		return NULL;
	}
	/*
	 * Every event passes through these files: write and read them in large
	 * pieces.  (glibc ignores the size of a buffer it is to allocate itself,
	 * and uses 4 kB: a write() for every ten events.)
	 */
	for (i = 0; i < 2; i++)
	{
		b->buffers[2 * i] = pg_malloc(SPILL_BUFFER);
		b->buffers[2 * i + 1] = pg_malloc(SPILL_BUFFER);
		setvbuf(b->spill[i], b->buffers[2 * i], _IOFBF, SPILL_BUFFER);
		setvbuf(b->jobs[i].raw, b->buffers[2 * i + 1], _IOFBF, SPILL_BUFFER);
	}
	fcntl(b->done_pipe[0], F_SETFL, O_NONBLOCK);
	b->line = createPQExpBuffer();
	b->tmp = createPQExpBuffer();
	b->key = createPQExpBuffer();
	return b;
}

void
batch_free(Batch *b)
{
	int			i;

	if (b == NULL)
		return;
	batch_abort(b);
	pthread_mutex_destroy(&b->mu);
	pthread_cond_destroy(&b->ended_cv);
	for (i = 0; i < 2; i++)
	{
		free(b->lanes[i].has_rules);
		free(b->jobs[i].per_map);
		free(b->jobs[i].source_moves);
		if (b->jobs[i].raw)
			fclose(b->jobs[i].raw);
	}
	for (i = 0; i < 2; i++)
	{
		if (b->spill[i])
			fclose(b->spill[i]);
		compact_free(b->compact[i]);
	}
	for (i = 0; i < 4; i++)
		free(b->buffers[i]);	/* after fclose, which may still write from them */
	for (i = 0; i < 2; i++)
		if (b->done_pipe[i] >= 0)
			close(b->done_pipe[i]);
	if (b->line)
		destroyPQExpBuffer(b->line);
	if (b->tmp)
		destroyPQExpBuffer(b->tmp);
	if (b->key)
		destroyPQExpBuffer(b->key);
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

/* A batch is being applied. */
bool
batch_applying(Batch *b)
{
	return b->lanes[0].inflight || b->lanes[1].inflight;
}

/* A batch is filling or being applied: nothing past it may be confirmed. */
bool
batch_pending(Batch *b)
{
	return b->open || batch_applying(b);
}

/* Readable when the batch being applied is done (-1: none is). */
int
batch_wait_fd(Batch *b)
{
	return batch_applying(b) ? b->done_pipe[0] : -1;
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
		if (strcmp(m->mode, "append") == 0)
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
	if (strcmp(m->mode, "append") == 0)
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
 * Pass over n bytes of a spill file.  Read, not fseeko(): glibc's seek
 * drops the stream's buffer, and then a dead line costs an lseek() and the
 * next line a read() of a whole buffer.
 */
static bool
skip_bytes(FILE *f, size_t n)
{
	char		sink[4096];

	while (n > 0)
	{
		size_t		part = Min(n, sizeof(sink));

		if (fread(sink, 1, part, f) != part)
			return false;
		n -= part;
	}
	return true;
}

/*
 * Null a change line's commit time (the fifth field).  Mirror maps without
 * rules do not read it (scd2 versions and rule quarantines do), and parsing
 * it as timestamptz was about a seventh of the COPY's time.
 */
static void
drop_commit_ts(PQExpBuffer row)
{
	char	   *end = row->data + row->len;
	char	   *from = row->data;
	char	   *to;

	for (int f = 0; f < 4; f++)
	{
		from = memchr(from, '\x1f', end - from);
		if (from == NULL)
			return;
		from++;
	}
	to = memchr(from, '\x1f', end - from);
	if (to == NULL || to - from < 2)
		return;
	/* NULL (\N) in its place */
	from[0] = '\\';
	from[1] = 'N';
	memmove(from + 2, to, end - to);
	row->len -= to - from - 2;
	row->data[row->len] = '\0';
}

/* COPY map i's rows of job k to the target, less the moot ones. */
static bool
copy_spill(Batch *b, int k, int i, PQExpBuffer row)
{
	PGconn	   *conn = b->lane_of[k]->conn;
	char		chunk[65536];
	FILE	   *spill = b->spill[k];
	size_t		n = 0;
	long		line = 0;
	SpillHeader h;
	bool		no_ts = strcmp(b->p->maps[i].mode, "mirror") == 0 && !b->lane_of[k]->has_rules[i];

	if (!start_copy(b, k, i))
		return false;
	rewind(spill);
	while (fread(&h, sizeof(h), 1, spill) == 1)
	{
		bool		send;

		line++;					/* numbered across maps, as compact_line saw them */
		send = h.map == i && (b->lane_of[k]->has_rules[i] || !compact_dead(b->compact[k], line));
		if (!send)
		{
			if (!skip_bytes(spill, h.len))
				break;
			if (h.map == i)
				b->jobs[k].moot++;
			continue;
		}
		resetPQExpBuffer(row);
		enlargePQExpBuffer(row, h.len);
		if (fread(row->data, 1, h.len, spill) != h.len)
			break;
		row->len = h.len;
		if (no_ts)
			drop_commit_ts(row);
		if (n + row->len > sizeof(chunk))
		{
			if (PQputCopyData(conn, chunk, (int) n) != 1)
				goto copy_failed;
			n = 0;
		}
		if (row->len > sizeof(chunk))
		{
			if (PQputCopyData(conn, row->data, (int) row->len) != 1)
				goto copy_failed;
			continue;
		}
		memcpy(chunk + n, row->data, row->len);
		n += row->len;
	}
	if (ferror(spill) || !feof(spill))
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

	if (fseeko(j->raw, (off_t) row->h.raw_off, SEEK_SET) != 0 ||
		fread(json, 1, row->h.raw_len, j->raw) != row->h.raw_len)
		log_msg(LOG_ERROR, "could not read an event back from the batch's file: %m");
	else
	{
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
	FILE	   *spill = b->spill[k];
	SpillRow   *v = pg_malloc(sizeof(SpillRow) * Max(b->jobs[k].per_map[i], 1));
	SpillHeader h;
	long		line = 0;

	*n = 0;
	rewind(spill);
	while (fread(&h, sizeof(h), 1, spill) == 1)
	{
		line++;
		if (h.map != i || (!b->lane_of[k]->has_rules[i] && compact_dead(b->compact[k], line)))
		{
			if (!skip_bytes(spill, h.len))
				break;
			continue;
		}
		v[*n].h = h;
		v[*n].data = pg_malloc(h.len);
		if (fread(v[*n].data, 1, h.len, spill) != h.len)
			break;
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
send_map(Batch *b, int k, int i, PQExpBuffer row)
{
	PGconn	   *conn = b->lane_of[k]->conn;
	SpillRow   *v;
	long		n;
	bool		ok;
	SqlError	e;

	if (!exec_cmd(conn, "SAVEPOINT pgcdc_copy"))
		return false;
	quiet_sql_errors = true;
	ok = copy_spill(b, k, i, row);
	quiet_sql_errors = false;
	if (ok)
		return exec_cmd(conn, "RELEASE SAVEPOINT pgcdc_copy");
	e = last_sql_error;
	if (strcmp(b->p->maps[i].mode, "append") == 0 || sql_error_is_transient(&e) ||
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
static bool
send_spill(Batch *b, int k)
{
	PGconn	   *conn = b->lane_of[k]->conn;
	PQExpBufferData row;
	bool		ok;

	b->jobs[k].moot = 0;
	b->jobs[k].refused = 0;
	if (!b->lane_of[k]->tables_ready && !create_session_tables(b, k))
		return false;
	/* (read committed whatever the default: it applies after the batch before commits) */
	if (!load_rules(b, k) || !exec_cmd(conn, "BEGIN ISOLATION LEVEL READ COMMITTED"))
		return false;
	fflush(b->spill[k]);
	initPQExpBuffer(&row);
	ok = true;
	for (int i = 0; i < b->p->nmaps && ok; i++)
		if (b->jobs[k].per_map[i] > 0)
			ok = send_map(b, k, i, &row);
	termPQExpBuffer(&row);
	return ok && empty_file(b->spill[k]);
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
	if (!empty_file(j->raw) || !empty_file(b->spill[b->fill]))
	{
		log_msg(LOG_ERROR, "could not empty the batch's files: %m");
		return false;
	}
	compact_reset(b->compact[b->fill]);
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

/* A field of the batch's COPY (text format, \x1f between fields): NULL is \N. */
static void
copy_field(PQExpBuffer line, const char *v, size_t len)
{
	if (v == NULL)
		appendPQExpBufferStr(line, "\\N");
	else
		copy_text(line, v, len);
}

/*
 * The COPY line of an event for map i: of pgcdc_events_N (append maps) or
 * pgcdc_changes_N.  *raw_off is the event's place in the batch's event
 * file, -1 until it is written there.
 */
static bool
event_line(Batch *b, int i, const EventInfo *ev, const char *json, size_t len, off_t *raw_off)
{
	TableMap   *m = &b->p->maps[i];
	ApplyJob   *j = &b->jobs[b->fill];
	PQExpBuffer line = b->line;
	char		lsn[32];

	resetPQExpBuffer(line);
	appendPQExpBuffer(line, "%ld\x1f%c\x1f%s\x1f%ld\x1f", ++j->lines, ev->op,
					  format_lsn(ev->commit_lsn, lsn), ev->seq);
	copy_field(line, ev->ts, ev->ts ? strlen(ev->ts) : 0);
	if (strcmp(m->mode, "append") == 0)
	{
		appendPQExpBufferChar(line, '\x1f');
		copy_field(line, json, len);
		appendPQExpBufferChar(line, '\n');
		return true;
	}
	appendPQExpBufferChar(line, '\x1f');
	if (ev->unchanged_toast.ptr)
	{
		resetPQExpBuffer(b->tmp);
		if (!array_literal(b->tmp, ev->unchanged_toast))
			return false;
		copy_field(line, b->tmp->data, b->tmp->len);
	}
	else
		copy_field(line, NULL, 0);
	appendPQExpBufferChar(line, '\x1f');
	if (ev->op == 'U' && ev->old.ptr)
		copy_field(line, ev->old.ptr, ev->old.len);
	else
		copy_field(line, NULL, 0);
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
	appendPQExpBuffer(line, "\x1f%lld\x1f%zu", (long long) *raw_off, len);
	{
		JsonSpan	row = ev->op == 'T' ? (JsonSpan) {NULL, 0} :
		ev->op == 'D' ? (ev->old.ptr ? ev->old : ev->key) : ev->new_row;

		/* no row (a truncate; a delete without replica identity): every column empty */
		if (row.ptr == NULL)
			memset(m->values, 0, sizeof(JsonSpan) * m->ncols);
		else if (!row_values(m, row, ev->op != 'D' && ev->unchanged_toast.ptr == NULL))
			return false;
		if (!row_fields(line, m))
			return false;
	}
	appendPQExpBufferChar(line, '\n');
	return true;
}

static bool
spill_line(Batch *b, int map, off_t raw_off, size_t raw_len)
{
	SpillHeader h = {(uint32_t) b->line->len, map, (int64_t) raw_off, (uint32_t) raw_len};

	if (fwrite(&h, sizeof(h), 1, b->spill[b->fill]) != 1 ||
		fwrite(b->line->data, 1, b->line->len, b->spill[b->fill]) != b->line->len)
	{
		log_msg(LOG_ERROR, "could not write the batch's spill file: %m");
		return false;
	}
	return true;
}

/*
 * Compaction of a mirror map's line (event_line has just filled m->values):
 * the line is its key's latest.  A truncate or a key change is a barrier:
 * lines before it stay.
 */
static void
note_key(Batch *b, int i, const EventInfo *ev, long line)
{
	TableMap   *m = &b->p->maps[i];

	if (strcmp(m->mode, "mirror") != 0 || m->nkeys == 0)
		return;
	if (ev->op == 'T' || (ev->op == 'U' && ev->old.ptr))
	{
		compact_barrier(b->compact[b->fill]);
		return;
	}
	if (ev->op != 'I' && ev->op != 'U' && ev->op != 'D')
		return;
	resetPQExpBuffer(b->key);
	for (int k = 0; k < m->nkeys; k++)
	{
		JsonSpan	v = m->values[m->keyidx[k]];
		uint32_t	len = (uint32_t) v.len;

		/* a null key fails in the target: each such event must get there */
		if (v.ptr == NULL || (v.len == 4 && memcmp(v.ptr, "null", 4) == 0))
			return;
		appendBinaryPQExpBuffer(b->key, (const char *) &len, sizeof(len));
		appendBinaryPQExpBuffer(b->key, v.ptr, v.len);
	}
	/*
	 * Not replaced: the line before an event with unchanged TOAST columns
	 * (the apply takes their values from it), nor before a soft delete (a
	 * key the target lacks is inserted flagged, with that line's values).
	 */
	compact_line(b->compact[b->fill], i, b->key->data, b->key->len, line,
				 ev->unchanged_toast.ptr == NULL && !(ev->op == 'D' && m->soft_delete));
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
		const TableMap *m = &b->p->maps[i];

		/* (a renamed table's changes come under an old name up to the rename) */
		if (strcmp(m->source_schema, ev->schema) != 0 || strcmp(m->source_name, ev->table) != 0)
		{
			bool		old = false;

			for (int o = 0; o < m->nold && !old; o++)
				old = strcmp(m->old_schemas[o], ev->schema) == 0 && strcmp(m->old_names[o], ev->table) == 0;
			if (!old)
				continue;
		}
		/* a target copied after the pipeline's snapshot holds this change already */
		if (ev->commit_lsn <= b->p->maps[i].copied_at)
			continue;
		if (!event_line(b, i, ev, json, len, &raw_off))
		{
			log_msg(LOG_ERROR, "could not read the row of an event: %.200s", json);
			return false;
		}
		if (!spill_line(b, i, raw_off, len))
			return false;
		note_key(b, i, ev, j->lines);
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

	if (!l->has_origin || b->lanes[0].conn == b->lanes[1].conn)
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
	if (staged && turn && !take_origin(b, l))
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
	if (b->lanes[0].conn == b->lanes[1].conn)
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
		l = busy == NULL ? b->last : busy == &b->lanes[0] ? &b->lanes[1] : &b->lanes[0];
	b->last = l;
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
