/*
 * born.c
 *		Keys born in a batch go straight into their mirror.  A key whose
 *		first event in the batch is an insert was not in the source before
 *		it, so a mirror the consumer keeps lacks it too (compact.c): its last
 *		event is an insert for apply_mirror's MERGE, which looks the key up,
 *		finds nothing and inserts.  One COPY of those lines into the mirror
 *		itself, with the position and sync time the MERGE would write, does
 *		the same without the staging table, in about half the time.  A key
 *		the mirror has after all (a row written by hand) makes the target's
 *		unique index refuse the COPY: it is undone, and the lines are staged
 *		and merged with the others.
 */
#include "postgres_fe.h"

#include "batch_int.h"

/*
 * Fewer born keys than this are merged with the others: below it the
 * COPY's fixed cost (a call, a savepoint, a COPY: three round trips, about
 * 0.4 ms) is more than the MERGE's work it saves (about 2 microseconds a
 * row in bench/apply; a trickle of batches of 90 such keys cost more).
 */
#define BORN_MIN_LINES	256

/*
 * Whether map i of job k has lines to send so: a mirror without soft
 * delete (its deletes need the rows), without rules (every event is
 * checked), not being copied from the source (the copy holds later keys),
 * with enough born keys in the batch.
 */
bool
born_wanted(Batch *b, int k, int i)
{
	TableMap   *m = &b->p->maps[i];

	return m->kind == MAP_MIRROR && !m->soft_delete && !m->copy_now && !m->copy_pending &&
		m->ncols > 0 && !b->lane_of[k]->has_rules[i] && compact_born_in(b->compact[k], i) >= BORN_MIN_LINES;
}

/*
 * A change line as a row of the mirror: its position (fields 3 and 4),
 * its data columns (from field 10) and the sync time, in the order of the
 * columns of send_born's COPY.
 */
bool
born_row(PQExpBuffer row, const char *line, size_t len, const char *now)
{
	const char *end = line + len;
	const char *field[11];		/* where fields 2 .. 10 start */
	const char *p = line;

	for (int f = 2; f <= 10; f++)
	{
		if ((p = memchr(p, '\x1f', end - p)) == NULL)
			return false;
		field[f] = ++p;
	}
	if (end > field[10] && end[-1] == '\n')
		end--;
	resetPQExpBuffer(row);
	appendBinaryPQExpBuffer(row, field[3], field[5] - field[3]);
	appendBinaryPQExpBuffer(row, field[10], end - field[10]);
	appendPQExpBufferChar(row, '\x1f');
	appendPQExpBufferStr(row, now);
	appendPQExpBufferChar(row, '\n');
	return true;
}

/*
 * Map i's born keys' lines into the mirror, in a savepoint.  *sent: they
 * are there; if not, they are to be staged.  Only where the extension
 * says so (pgcdc._mirror_copy_ok: a table the MERGE may write, with a
 * unique index on key columns that checks at once: else a key it had
 * could be doubled).
 */
static bool
send_born(Batch *b, int k, int i, bool *sent)
{
	PGconn	   *conn = b->lane_of[k]->conn;
	TableMap   *m = &b->p->maps[i];
	const char *params[2] = {m->target, m->key_columns};
	LineSet		set = {i, LINES_BORN, NULL, 0};
	PGresult   *res;
	SqlError	e;
	char	   *sql;
	char		now[64];
	bool		ok;
	int			r;

	*sent = false;
	/* now(): the MERGE's sync time, this transaction's start */
	res = exec_ok(conn, "SELECT pgcdc._mirror_copy_ok($1::pg_catalog.regclass, $2::text[])", 2, params);
	if (res == NULL)
		return false;
	ok = PQntuples(res) == 1 && !PQgetisnull(res, 0, 0);
	if (ok)
		strlcpy(now, PQgetvalue(res, 0, 0), sizeof(now));
	PQclear(res);
	if (!ok)
		return true;

	sql = psprintf("COPY %s (_source_lsn, _source_seq, %s, _synced_at) FROM STDIN (FORMAT text, DELIMITER E'\\x1f')",
				   m->target, m->data_columns);
	r = copy_in_savepoint(b, k, "pgcdc_born", sql, &set, LINE_BORN, now, &e);
	free(sql);
	*sent = r == 1;
	if (r == 1)
		log_msg(LOG_DEBUG, "copied the rows of %ld keys new in the batch into %s",
				compact_born_in(b->compact[k], i), m->target);
	if (r != 0)
		return r == 1;
	log_msg(LOG_INFO, "%s refused the rows of keys new in the batch (SQLSTATE %s: %s); merging them with the others",
			m->target, e.code, e.message);
	return true;
}

/*
 * Send job k's born keys' lines (planned by send_spill) into their
 * mirrors, or else into the staging tables.  Only now that the batch
 * before has committed (its deletes free the keys) and this session has
 * the pipeline's replication origin: before, the COPY would wait on that
 * batch's locks (or, with foreign keys, deadlock with it), and its rows
 * would not carry the origin.
 */
bool
send_born_lines(Batch *b, int k)
{
	Lane	   *l = b->lane_of[k];
	bool		ok = true;

	for (int i = 0; i < b->p->nmaps && ok; i++)
	{
		LineSet		set = {i, LINES_BORN, NULL, 0};
		bool		sent;

		if (l->born_later[i])
			ok = send_born(b, k, i, &sent) && (sent || stage_lines(b, k, &set));
	}
	return ok;
}
