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
 *		to a spool as events arrive (spool.c: memory up to a few megabytes,
 *		then a file), so a huge source transaction costs the consumer disk,
 *		not memory.
 *
 *		When the batch is full, an apply thread stages its rows with one
 *		COPY per map (staging.c) and applies them (apply.c) in one of two
 *		target sessions (target_sessions.c), while the stream goes on into
 *		the next batch's spill file.  Batches commit one at a time, in
 *		source order, and the source learns a position only after the batch
 *		holding it has committed.
 *
 *		The event JSON (for the quarantine) goes to a per-batch spool, not to
 *		the target, except for append maps whose rows are the JSON.
 */
#include "postgres_fe.h"

#include <fcntl.h>
#include <unistd.h>

#include "batch_int.h"

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
		b->jobs[i].staged = pg_malloc0(sizeof(long) * Max(p->nmaps, 1));
		b->jobs[i].raw = spool_new();
		b->lanes[i].b = b;
		b->lane_of[i] = &b->lanes[i];
		b->lanes[i].has_rules = pg_malloc0(sizeof(bool) * Max(p->nmaps, 1));
		b->lanes[i].born_later = pg_malloc0(sizeof(bool) * Max(p->nmaps, 1));
		b->lanes[i].row = createPQExpBuffer();
		b->lanes[i].shaped = createPQExpBuffer();
	}
	for (i = 0; i < 2; i++)
	{
		b->heads[i] = spool_new();
		b->spill[i] = spool_new();
		b->compact[i] = compact_new(p->nmaps);
	}
	b->lanes[0].conn = target;
	b->lanes[1].conn = target2 ? target2 : target;
	/* run_once set the origin up in the first session */
	b->lanes[0].has_origin = p->origin != NULL;
	b->lanes[1].has_origin = p->origin != NULL && target2 == NULL;
	if (pipe(b->done_pipe) != 0)
	{
		log_msg(LOG_ERROR, "could not create a pipe: %m");
		batch_free(b);
		return NULL;
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
		free(b->lanes[i].born_later);
		destroyPQExpBuffer(b->lanes[i].row);
		destroyPQExpBuffer(b->lanes[i].shaped);
		free(b->jobs[i].per_map);
		free(b->jobs[i].staged);
		free(b->jobs[i].source_moves);
		spool_free(b->jobs[i].raw);
	}
	for (i = 0; i < 2; i++)
	{
		spool_free(b->heads[i]);
		spool_free(b->spill[i]);
		compact_free(b->compact[i]);
	}
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
	if (!spool_reset(j->raw) || !spool_reset(b->heads[b->fill]) || !spool_reset(b->spill[b->fill]))
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

/* A number in decimal (printf showed in profiles: several per event). */
static void
append_number(PQExpBuffer out, int64_t v)
{
	char		digits[24];
	int			n = sizeof(digits);
	uint64_t	u = v < 0 ? -(uint64_t) v : (uint64_t) v;

	do
	{
		digits[--n] = '0' + u % 10;
		u /= 10;
	} while (u > 0);
	if (v < 0)
		digits[--n] = '-';
	appendBinaryPQExpBuffer(out, digits + n, sizeof(digits) - n);
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
	append_number(line, ++j->lines);
	appendPQExpBufferChar(line, '\x1f');
	appendPQExpBufferChar(line, ev->op);
	appendPQExpBufferChar(line, '\x1f');
	appendPQExpBufferStr(line, format_lsn(ev->commit_lsn, lsn));
	appendPQExpBufferChar(line, '\x1f');
	append_number(line, ev->seq);
	appendPQExpBufferChar(line, '\x1f');
	copy_field(line, ev->ts, ev->ts ? strlen(ev->ts) : 0);
	if (m->kind == MAP_APPEND)
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
		*raw_off = (off_t) spool_size(j->raw);
		if (!spool_write(j->raw, json, len))
		{
			log_msg(LOG_ERROR, "could not write the batch's event file in $TMPDIR (default /tmp): %m");
			return false;
		}
	}
	appendPQExpBufferChar(line, '\x1f');
	append_number(line, (int64_t) *raw_off);
	appendPQExpBufferChar(line, '\x1f');
	append_number(line, (int64_t) len);
	{
		JsonSpan	row = ev->op == 'T' ? (JsonSpan) {NULL, 0} :
		ev->op == 'D' ? (ev->old.ptr ? ev->old : ev->key) : ev->new_row;

		/* no row (a truncate; a delete without replica identity): every column empty */
		if (row.ptr == NULL)
			memset(m->values, 0, sizeof(JsonSpan) * m->ncols);
		else if (!row_values(m, row, ev->fields, ev->op != 'D' && ev->unchanged_toast.ptr == NULL))
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
	SpillHeader h = {(uint32_t) b->line->len, map, (int64_t) spool_size(b->spill[b->fill]), (int64_t) raw_off,
	(uint32_t) raw_len};

	if (!spool_write(b->heads[b->fill], &h, sizeof(h)) ||
		!spool_write(b->spill[b->fill], b->line->data, b->line->len))
	{
		log_msg(LOG_ERROR, "could not write the batch's spill file in $TMPDIR (default /tmp): %m");
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

	if (m->kind != MAP_MIRROR || m->nkeys == 0)
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
	compact_line(b->compact[b->fill], i, b->key->data, b->key->len, line, ev->op,
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
