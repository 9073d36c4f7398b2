/*
 * stream.c
 *		The replication side, as pg_recvlogical does it: the slot, the
 *		server settings it needs, START_REPLICATION with the decoder options
 *		built from the table maps, the CopyBoth loop with keepalives and
 *		standby status updates, heartbeats and batching by size and time.
 *
 *		The source is told a position is flushed only after the target
 *		committed the batch that contains it.
 */
#include "postgres_fe.h"

#include <sys/select.h>

#include "consumer.h"

struct Stream
{
	PGconn	   *conn;
	Lsn			received;		/* end of the last complete transaction received */
	Lsn			flushed;		/* applied and committed in the target */
	Lsn			checked;		/* the source's position when no table was found renamed */
	int64_t		last_status_us;
	int64_t		last_event_us;
	bool		in_xact;
	RowFields	fields;			/* of the event being taken */
};

/* Microseconds between the Unix and the PostgreSQL epoch (2000-01-01). */
#define PG_EPOCH_OFFSET_US INT64CONST(946684800000000)
/* the decoder's pack-bytes: events of a transaction share messages this big */
#define PACK_BYTES	65536
/* how often a running consumer looks whether its pipeline changed */
#define PIPELINE_CHECK_US INT64CONST(5000000)

static void
put_u64(char *buf, uint64_t v)
{
	for (int i = 7; i >= 0; i--)
	{
		buf[i] = (char) (v & 0xFF);
		v >>= 8;
	}
}

static uint64_t
get_u64(const char *buf)
{
	uint64_t	v = 0;

	for (int i = 0; i < 8; i++)
		v = (v << 8) | (unsigned char) buf[i];
	return v;
}

/*
 * Check the server settings and the slot before anything else, so a wrong
 * setup is one clear line instead of a retry loop.
 */
bool
source_check(PGconn *source, Pipeline *p, bool *slot_exists)
{
	const char *params[1] = {p->slot_name};
	PGresult   *res;
	bool		ok = true;

	/*
	 * output_plugin_libraries is readable by superusers and members of
	 * pg_read_all_settings only; for other roles pg_settings shows NULL or
	 * no row, and a missing pgcdc shows up when the slot is created.
	 */
	res = exec_ok(source, "SELECT pg_catalog.current_setting('wal_level'), "
				  "(SELECT setting FROM pg_catalog.pg_settings WHERE name = 'output_plugin_libraries'), "
				  "pg_catalog.current_database()", 0, NULL);
	if (res == NULL)
		return false;
	if (strcmp(PQgetvalue(res, 0, 0), "logical") != 0)
	{
		log_msg(LOG_ERROR, "source server has wal_level = %s, logical decoding needs logical",
				PQgetvalue(res, 0, 0));
		log_hint("Set wal_level = logical in the source's postgresql.conf and restart it.");
		ok = false;
	}
	else if (!PQgetisnull(res, 0, 1) && !strstr(PQgetvalue(res, 0, 1), "pgcdc"))
	{
		log_msg(LOG_ERROR, "source server does not allow pgcdc as an output plugin "
				"(output_plugin_libraries = '%s')", PQgetvalue(res, 0, 1));
		log_hint("Add pgcdc: output_plugin_libraries = 'pgoutput, test_decoding, pgcdc', then reload.");
		ok = false;
	}
	PQclear(res);
	if (!ok)
		return false;

	res = exec_ok(source, "SELECT plugin, database = pg_catalog.current_database(), "
				  "coalesce(wal_status, ''), active, active_pid "
				  "FROM pg_catalog.pg_replication_slots WHERE slot_name = $1", 1, params);
	if (res == NULL)
		return false;
	*slot_exists = PQntuples(res) == 1;
	if (*slot_exists)
	{
		if (strcmp(PQgetvalue(res, 0, 0), "pgcdc") != 0 || strcmp(PQgetvalue(res, 0, 1), "t") != 0)
		{
			log_msg(LOG_ERROR, "replication slot \"%s\" exists but is not a pgcdc slot of this database",
					p->slot_name);
			log_hint("Give the pipeline another slot_name, or drop that slot.");
			ok = false;
		}
		else if (strcmp(PQgetvalue(res, 0, 2), "lost") == 0)
		{
			log_msg(LOG_ERROR, "replication slot \"%s\" was invalidated: the source removed WAL it still needed",
					p->slot_name);
			log_hint("Changes were lost. Drop the slot and the pipeline's checkpoint and take a new snapshot "
					 "(pgcdc_consumer --snapshot initial), and raise max_slot_wal_keep_size.");
			ok = false;
		}
	}
	else if (p->has_checkpoint)
	{
		char		b[32];

		log_msg(LOG_ERROR, "replication slot \"%s\" of pipeline \"%s\" does not exist, "
				"but the target has applied changes up to %s",
				p->slot_name, p->name, format_lsn(p->ckpt_end_lsn, b));
		log_hint("Changes after the checkpoint cannot be recovered from a new slot. Delete the pipeline's "
				 "row in pgcdc.checkpoint to start over with a new snapshot.");
		ok = false;
	}
	PQclear(res);

	/*
	 * The decoder names a change of a partition after the partition: a map
	 * of a partitioned table would copy its rows and then see no change.
	 */
	for (int i = 0; i < p->nmaps && ok; i++)
	{
		const char *tp[1] = {p->maps[i].source_table};

		res = exec_ok(source, "SELECT relkind = 'p' FROM pg_catalog.pg_class "
					  "WHERE oid = pg_catalog.to_regclass($1)", 1, tp);
		if (res == NULL)
			return false;
		if (PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0)
		{
			log_msg(LOG_ERROR, "source table %s is partitioned: its changes are decoded under its partitions' names",
					p->maps[i].source_table);
			log_hint("Map each partition instead: pgcdc.add_table for each, each into its own target.");
			ok = false;
		}
		PQclear(res);
	}
	return ok;
}

Stream *
stream_open(const char *conninfo)
{
	/* the decoder options (table names) are UTF-8, as on every session of ours */
	const char *keys[] = {"dbname", "replication", "fallback_application_name", "client_encoding", NULL};
	const char *vals[] = {conninfo, "database", "pgcdc_consumer", "UTF8", NULL};
	Stream	   *s = pg_malloc0(sizeof(Stream));

	s->conn = PQconnectdbParams(keys, vals, 1);
	if (PQstatus(s->conn) != CONNECTION_OK)
	{
		log_msg(LOG_ERROR, "could not open a replication connection to the source: %s",
				conn_error(s->conn));
		stream_close(s);
		return NULL;
	}
	return s;
}

PGconn *
stream_conn(Stream *s)
{
	return s->conn;
}

void
stream_close(Stream *s)
{
	if (s == NULL)
		return;
	PQfinish(s->conn);
	free(s);
}

bool
stream_create_slot(Stream *s, const char *slot, bool temporary, bool export_snapshot,
				   Lsn *consistent_point, char **snapshot_name)
{
	PQExpBuffer sql = createPQExpBuffer();
	char	   *ident = PQescapeIdentifier(s->conn, slot, strlen(slot));
	PGresult   *res;
	bool		ok;

	appendPQExpBuffer(sql, "CREATE_REPLICATION_SLOT %s%s LOGICAL pgcdc (SNAPSHOT '%s')",
					  ident, temporary ? " TEMPORARY" : "", export_snapshot ? "export" : "nothing");
	res = PQexec(s->conn, sql->data);
	ok = PQresultStatus(res) == PGRES_TUPLES_OK;
	if (!ok)
	{
		log_msg(LOG_ERROR, "could not create replication slot \"%s\": %s", slot, conn_error(s->conn));
		if (strstr(conn_error(s->conn), "output plugin"))
			log_hint("Add pgcdc to the source's output_plugin_libraries, e.g. "
					 "'pgoutput, test_decoding, pgcdc', then reload.");
	}
	else
	{
		parse_lsn(PQgetvalue(res, 0, 1), consistent_point);
		*snapshot_name = PQgetisnull(res, 0, 2) ? NULL : pg_strdup(PQgetvalue(res, 0, 2));
		log_msg(temporary ? LOG_DEBUG : LOG_INFO, "created %sreplication slot \"%s\" at %s",
				temporary ? "temporary " : "", slot, PQgetvalue(res, 0, 1));
	}
	PQclear(res);
	PQfreemem(ident);
	destroyPQExpBuffer(sql);
	return ok;
}

bool
stream_drop_slot(PGconn *source, const char *slot)
{
	const char *params[1] = {slot};
	PGresult   *res = exec_ok(source, "SELECT pg_catalog.pg_drop_replication_slot($1)", 1, params);

	PQclear(res);
	return res != NULL;
}

/* Escape for a decoder table pattern: \ . , * are literal with a backslash. */
static void
append_pattern_part(PQExpBuffer buf, const char *s)
{
	for (; *s; s++)
	{
		if (*s == '\\' || *s == '.' || *s == ',' || *s == '*')
			appendPQExpBufferChar(buf, '\\');
		appendPQExpBufferChar(buf, *s);
	}
}

static void
append_literal(PQExpBuffer buf, const char *s)
{
	appendPQExpBufferChar(buf, '\'');
	for (; *s; s++)
	{
		if (*s == '\'')
			appendPQExpBufferChar(buf, '\'');
		appendPQExpBufferChar(buf, *s);
	}
	appendPQExpBufferChar(buf, '\'');
}

/*
 * Are changes of source table schema.name waiting in the slot, after its
 * confirmed position?  1 yes, 0 no, -1 unknown (the slot is in use or
 * missing, or the look failed).  The slot's backlog is decoded up to the
 * first such change; nothing is consumed.
 */
int
stream_pending_changes(PGconn *source, const char *slot, const char *schema, const char *name)
{
	PQExpBuffer pattern = createPQExpBuffer();
	const char *params[2];
	PGresult   *res;
	int			pending = -1;

	append_pattern_part(pattern, schema);
	appendPQExpBufferChar(pattern, '.');
	append_pattern_part(pattern, name);
	params[0] = slot;
	params[1] = pattern->data;
	quiet_sql_errors = true;
	res = exec_ok(source, "SELECT pg_catalog.count(*) > 0 FROM pg_catalog.pg_logical_slot_peek_changes("
				  "$1, NULL, 1, 'tables', $2, 'include-transaction', 'false', 'messages', 'false')",
				  2, params);
	quiet_sql_errors = false;
	if (res != NULL)
		pending = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	destroyPQExpBuffer(pattern);
	return pending;
}

bool
stream_start(Stream *s, Pipeline *p, Lsn start)
{
	PQExpBuffer tables = createPQExpBuffer();
	PQExpBuffer sql = createPQExpBuffer();
	char	   *ident = PQescapeIdentifier(s->conn, p->slot_name, strlen(p->slot_name));
	char		b[32];
	PGresult   *res;
	bool		ok;
	int			i;
	int			ntables = 0;

	for (i = 0; i < p->nmaps; i++)
	{
		bool		seen = false;

		/* a source table that feeds several targets is decoded once */
		for (int k = 0; k < i && !seen; k++)
			seen = strcmp(p->maps[k].source_schema, p->maps[i].source_schema) == 0 &&
				strcmp(p->maps[k].source_name, p->maps[i].source_name) == 0;
		if (seen)
			continue;
		if (ntables++ > 0)
			appendPQExpBufferChar(tables, ',');
		append_pattern_part(tables, p->maps[i].source_schema);
		appendPQExpBufferChar(tables, '.');
		append_pattern_part(tables, p->maps[i].source_name);
		/* renames being followed: changes before one carry a name before it */
		for (int o = 0; o < p->maps[i].nold; o++)
		{
			appendPQExpBufferChar(tables, ',');
			append_pattern_part(tables, p->maps[i].old_schemas[o]);
			appendPQExpBufferChar(tables, '.');
			append_pattern_part(tables, p->maps[i].old_names[o]);
		}
	}
	appendPQExpBuffer(sql, "START_REPLICATION SLOT %s LOGICAL %s (\"tables\" ", ident, format_lsn(start, b));
	append_literal(sql, tables->data);
	/* heartbeats and the caught-up marker are messages with our prefix */
	appendPQExpBufferStr(sql, ", \"message-prefixes\" 'pgcdc'");
	/* many events per message: a send() per event is most of a walsender's time */
	appendPQExpBuffer(sql, ", \"pack-bytes\" '%d'", PACK_BYTES);
	if (p->decoder_options && *p->decoder_options)
		appendPQExpBuffer(sql, ", %s", p->decoder_options);
	appendPQExpBufferChar(sql, ')');
	log_msg(LOG_DEBUG, "%s", sql->data);

	res = PQexec(s->conn, sql->data);
	ok = PQresultStatus(res) == PGRES_COPY_BOTH;
	if (!ok)
	{
		const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		const char *message = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
		const char *hint = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);

		/* kept for the retry decision: a slot still in use is "later" */
		snprintf(last_sql_error.code, sizeof(last_sql_error.code), "%s", code ? code : "08006");
		log_msg(LOG_ERROR, "could not start replication from slot \"%s\": %s (SQLSTATE %s)", p->slot_name,
				message ? message : conn_error(s->conn), last_sql_error.code);
		if (code && strcmp(code, "22023") == 0 && message && strstr(message, "\"pack-bytes\""))
			log_hint("The source's pgcdc decoder is older than this pgcdc_consumer; install the same pgcdc build on the source.");
		else if (code && strcmp(code, "22023") == 0)
			log_hint("The decoder rejected an option; check pgcdc.pipeline.options of pipeline \"%s\".%s%s",
					 p->name, hint ? " " : "", hint ? hint : "");
	}
	else
		log_msg(LOG_INFO, "streaming from slot \"%s\" at %s (source tables: %d, targets: %d)", p->slot_name,
				start == InvalidLsn ? "its confirmed position" : format_lsn(start, b), ntables, p->nmaps);
	PQclear(res);
	PQfreemem(ident);
	destroyPQExpBuffer(tables);
	destroyPQExpBuffer(sql);
	s->received = s->flushed = start;
	s->checked = InvalidLsn;
	s->last_event_us = now_us();
	return ok;
}

/* Standby status update: written = received, flushed = applied in the target. */
static bool
send_feedback(Stream *s, bool reply_requested)
{
	char		msg[34];
	int64_t		now = now_us();

	msg[0] = 'r';
	put_u64(msg + 1, s->received > s->flushed ? s->received : s->flushed);
	put_u64(msg + 9, s->flushed);
	put_u64(msg + 17, s->flushed);
	put_u64(msg + 25, (uint64_t) (now - PG_EPOCH_OFFSET_US));
	msg[33] = reply_requested ? 1 : 0;
	s->last_status_us = now;
	if (PQputCopyData(s->conn, msg, sizeof(msg)) <= 0 || PQflush(s->conn) != 0)
	{
		log_msg(LOG_ERROR, "could not send feedback to the source: %s", conn_error(s->conn));
		return false;
	}
	return true;
}

/* A batch committed in the target up to applied: tell the source. */
static bool
advance(Stream *s, Lsn applied)
{
	if (applied == InvalidLsn)
		return true;
	if (applied > s->flushed)
		s->flushed = applied;
	stats.applied_lsn = s->flushed;
	return send_feedback(s, false);
}

/* Hand the open batch to the apply thread (once the previous one committed). */
static bool
flush_batch(Stream *s, Batch *b)
{
	Lsn			applied;

	if (!batch_open(b))
		return true;
	return batch_flush(b, &applied) && advance(s, applied);
}

/* Take the result of the batch being applied: if it is done, or waiting for it. */
static bool
finish_batch(Stream *s, Batch *b, bool wait)
{
	Lsn			applied;

	return (wait ? batch_wait(b, &applied) : batch_poll(b, &applied)) && advance(s, applied);
}

/* pg_logical_emit_message on the source; returns the message's LSN. */
bool
emit_marker(PGconn *source, const char *pipeline, const char *kind, Lsn *lsn)
{
	const char *params[2] = {kind, pipeline};
	PGresult   *res = exec_ok(source,
							  "SELECT pg_catalog.pg_logical_emit_message(true, 'pgcdc', "
							  "pg_catalog.json_build_object('kind', $1::text, 'pipeline', $2::text)::text), "
							  "pg_catalog.pg_current_wal_lsn()", 2, params);

	if (res == NULL)
		return false;
	parse_lsn(PQgetvalue(res, 0, 0), lsn);
	parse_lsn(PQgetvalue(res, 0, 1), &stats.source_lsn);
	PQclear(res);
	return true;
}

static void
refresh_source_lsn(PGconn *source)
{
	PGresult   *res = exec_ok(source, "SELECT pg_catalog.pg_current_wal_lsn()", 0, NULL);

	if (res != NULL)
		parse_lsn(PQgetvalue(res, 0, 0), &stats.source_lsn);
	PQclear(res);
}

static void
log_progress(Stream *s)
{
	char		b1[32],
				b2[32];
	Lsn			lag = stats.source_lsn > s->flushed ? stats.source_lsn - s->flushed : 0;

	log_msg(LOG_INFO, "applied %llu events in %llu transactions (%llu batches, %llu quarantined, "
			"%llu transactions skipped as already applied) up to %s; source at %s, lag %llu bytes, %.1f s",
			(unsigned long long) stats.events, (unsigned long long) stats.transactions,
			(unsigned long long) stats.batches, (unsigned long long) stats.quarantined,
			(unsigned long long) stats.skipped,
			format_lsn(s->flushed, b1), format_lsn(stats.source_lsn, b2),
			(unsigned long long) lag, stats.lag_seconds);
}

/*
 * When the open batch goes if the source has nothing more to send for the
 * moment.  Without --idle-flush, or while a batch is being applied (the
 * next one grows meanwhile: batches are as large as the target needs to
 * keep up), at batch-ms.  Else, so that the lag under a steady load is
 * about a tenth of batch-ms plus one apply, after that tenth; but a batch
 * filling at a rate that reaches batch-size within batch-ms waits until
 * that rate is no more (at events / batch-size of batch-ms), or until the
 * source has sent nothing for a tenth of batch-ms (the load is over): the
 * source only paused between the messages of a heavy load, and larger
 * batches cost the target less per event (fewer commits; for mirror maps,
 * fewer keys written in two batches that one batch writes once).  (Without
 * the tenth, a backlog read faster than the walsender sends it went out in
 * slivers that cost the target more CPU per event.)
 */
static int64_t
batch_due_us(Stream *s, Batch *b)
{
	int64_t		full = (int64_t) opts.batch_ms * 1000;
	int64_t		early;

	if (!opts.idle_flush || batch_applying(b))
		return batch_started_us(b) + full;
	early = Max(full / 10, (int64_t) ((double) batch_events(b) / opts.batch_size * full));
	return Min(batch_started_us(b) + Min(early, full),
			   Max(batch_started_us(b), s->last_event_us) + full / 10);
}

/*
 * One event of the stream: transactions open and close on the source's B
 * and C, everything in between goes to the batch.
 */
static bool
take_event(Stream *s, Batch *b, const char *json, size_t len, int64_t now,
		   char *scratch, size_t scratchlen)
{
	EventInfo	ev;

	if (!event_parse(json, len, &ev, &s->fields, scratch, scratchlen))
	{
		log_msg(LOG_ERROR, "could not parse an event from the source: %.*s",
				(int) Min(len, 200), json);
		return false;
	}
	switch (ev.op)
	{
		case 'B':
			s->in_xact = true;
			return batch_begin_xact(b, &ev);
		case 'C':
			s->in_xact = false;
			if (!batch_end_xact(b, &ev))
				return false;
			if (ev.end_lsn > s->received)
				s->received = ev.end_lsn;
			stats.received_lsn = s->received;
			return true;
		case 'M':
			if (ev.commit_lsn == InvalidLsn)
				return true;	/* non-transactional: nothing to apply */
			/* fall through */
		default:
			s->last_event_us = now;
			return batch_add_event(b, &ev, json, len);
	}
}

/*
 * Is every source table still under the name its maps decode, and (with
 * columns) with the columns the targets the consumer made were given?
 *
 * A table renamed at the source (or moved to another schema) has its
 * changes after the rename decoded under a name the stream did not ask
 * for: nothing past the rename may be confirmed until they are asked for.
 * So a rename is looked for before each batch goes to the target, before a
 * keepalive position is confirmed, and every 5 s; when one is found, the
 * consumer starts over from the checkpoint asking for both names
 * (target.c), and a marker transaction emitted now tells when the stream
 * has passed the rename.  A dropped table's maps take its changes until
 * such a marker (source_drained).
 *
 * A column type change shows in no event, but it committed before any
 * change that follows it, so looking before each batch catches it before
 * such a change is applied (with a narrower type, a numeric would be
 * rounded): start over, and the batch comes again into targets altered to
 * the new types (target.c).
 *
 * Returns true if nothing moved or changed (s->checked is then the position
 * looked at), else false with *result = RUN_AGAIN (RUN_RETRY if the look
 * failed).  One query on the source.
 */
static bool
sources_unchanged(Stream *s, PGconn *source, Pipeline *p, bool columns, int *result)
{
	SourceLook	look;
	Lsn			until;

	if (!source_tables_look(source, p, columns, &look))
	{
		/* (at a fast shutdown of the source, the keepalive's look meets it first) */
		if (PQstatus(source) == CONNECTION_BAD)
			log_msg(LOG_INFO, "lost the source connection: starting over");
		*result = RUN_RETRY;
		return false;
	}
	if (look.moved < 0 && look.checked_at > s->checked)
		s->checked = look.checked_at;
	if (look.moved < 0 && look.columns < 0)
		return true;
	/* (nothing failed: the caller starts over at once, unless a marker cannot be sent) */
	*result = RUN_AGAIN;
	if (look.moved < 0)
	{
		log_msg(LOG_INFO, "the columns of source table %s changed: starting over",
				p->maps[look.columns].source_table);
		return false;
	}
	if (look.table == NULL)
	{
		const char *gone = p->maps[look.moved].source_table;
		unsigned int oid = p->maps[look.moved].source_oid;

		/*
		 * Dropped: its changes before the drop still come, under its name.
		 * Its maps take them until the marker, then the consumer stops.
		 */
		if (!emit_marker(source, p->name, "dropped", &until))
		{
			*result = RUN_RETRY;
			return false;
		}
		log_msg(LOG_INFO, "source table %s of pipeline \"%s\" was dropped: applying its changes up to the drop",
				gone, p->name);
		for (int i = 0; i < p->nmaps; i++)
			if (p->maps[i].source_oid == oid)
			{
				p->maps[i].dropped_until = until;
				p->maps[i].source_oid = 0;
				/* (kept through a start over: target.c) */
				target_note_drop(&p->maps[i], until);
			}
		/* the other tables are looked at again */
		*result = RUN_RETRY;
		return sources_unchanged(s, source, p, columns, result);
	}
	if (emit_marker(source, p->name, "renamed", &until))
	{
		log_msg(LOG_INFO, "source table %s of pipeline \"%s\" was renamed to %s: following it",
				p->maps[look.moved].source_table, p->name, look.table);
		target_note_rename(p->maps[look.moved].source_table, look.schema, look.name, look.table, until,
						   p->maps[look.moved].source_oid);
	}
	else
		*result = RUN_RETRY;
	free(look.schema);
	free(look.name);
	free(look.table);
	return false;
}

/*
 * A map's table was dropped at the source (sources_unchanged), and the
 * checkpoint has passed the drop: its changes are all applied.  Say so,
 * and what to do (the caller stops).
 */
static bool
source_drained(PGconn *conn, const Pipeline *p, const TableMap *m)
{
	char	   *lp;
	char	   *ls;

	if (m->dropped_until == InvalidLsn || !p->has_checkpoint || p->ckpt_commit_lsn < m->dropped_until)
		return false;
	lp = PQescapeLiteral(conn, p->name, strlen(p->name));
	ls = PQescapeLiteral(conn, m->map_table, strlen(m->map_table));
	log_msg(LOG_ERROR, "source table %s of pipeline \"%s\" was dropped at the source; its changes up to the drop "
			"are applied", m->source_table, p->name);
	log_hint("Remove its maps: SELECT pgcdc.remove_table(%s, %s);", lp ? lp : "?", ls ? ls : "?");
	PQfreemem(lp);
	PQfreemem(ls);
	return true;
}

/*
 * The loop.  Returns EXIT_DONE when asked to stop (or caught up with
 * --exit-when-caught-up), or -1 when something failed that a reconnect may
 * fix.
 */
int
stream_run(Stream *s, PGconn *target, PGconn *target2, PGconn *source, Pipeline *p)
{
	Batch	   *b = batch_new(target, target2, p);
	char		scratch[1024];
	Lsn			caught_up_at = InvalidLsn;
	int64_t		last_progress_us = now_us();
	int64_t		last_lsn_poll_us = 0;
	int64_t		last_def_check_us = now_us();
	int			result = -1;

	if (b == NULL)
		return -1;
	if (opts.exit_when_caught_up &&
		!emit_marker(source, p->name, "caught-up", &caught_up_at))
		goto done;
	if (!sources_unchanged(s, source, p, false, &result))
		goto done;

	for (;;)
	{
		char	   *buf = NULL;
		int			r;
		int64_t		now = now_us();

		if (stop_requested)
		{
			/* a transaction still arriving is dropped: it comes again next time */
			if (s->in_xact)
			{
				if (!finish_batch(s, b, true))
					goto done;
				batch_abort(b);
			}
			else if (!sources_unchanged(s, source, p, true, &result))
			{
				/* the batch comes again at the next start, into altered targets */
				if (!finish_batch(s, b, true))
					goto done;
				batch_abort(b);
			}
			else if (!flush_batch(s, b) || !finish_batch(s, b, true))
				goto done;
			send_feedback(s, false);
			result = EXIT_DONE;
			goto done;
		}

		if (!finish_batch(s, b, false))
			goto done;

		/*
		 * A rename followed (sources_unchanged): once the checkpoint has
		 * passed it, every change under the old name is applied, and the
		 * map takes the new name (target.c).
		 */
		if (!s->in_xact && !batch_pending(b))
			for (int i = 0; i < p->nmaps; i++)
			{
				if (p->maps[i].nold > 0 && p->has_checkpoint &&
					p->ckpt_commit_lsn >= p->maps[i].renamed_until)
				{
					result = target_follow_rename(target, p, &p->maps[i]) ? RUN_AGAIN : EXIT_ERROR;
					goto done;
				}
				/* ... and a dropped table's changes up to the drop: then stop */
				if (source_drained(target, p, &p->maps[i]))
				{
					result = EXIT_ERROR;
					goto done;
				}
			}

		/*
		 * A pipeline paused, or its table maps changed, while we run: stop
		 * between transactions, dropping the batch being filled (its
		 * transactions come again), and start over (run_once).  Looked at
		 * while the apply thread leaves the target connection free.
		 */
		/*
		 * An event had a column its source table did not have when the maps
		 * were loaded: start over between transactions, dropping the batch
		 * being filled, so that targets get the column (target.c).
		 */
		if (!s->in_xact)
			for (int i = 0; i < p->nmaps; i++)
				if (p->maps[i].new_column)
				{
					log_msg(LOG_INFO, "source table %s has a new or dropped column \"%s\": starting over",
							p->maps[i].source_table, p->maps[i].changed_column);
					target_note_new_column(p->maps[i].source_table, p->maps[i].changed_column);
					result = RUN_AGAIN;
					goto done;
				}

		if (!s->in_xact && !batch_pending(b) && now - last_def_check_us >= PIPELINE_CHECK_US)
		{
			int			changed = target_pipeline_changed(target, p);

			last_def_check_us = now;
			if (changed != 0)
			{
				if (changed == 1)
					log_msg(LOG_INFO, "pipeline \"%s\" was paused: stopping", p->name);
				else if (changed == 2)
					log_msg(LOG_INFO, "pipeline \"%s\" or its table maps changed: starting over", p->name);
				result = changed == 1 ? RUN_PAUSED : RUN_AGAIN;
				goto done;
			}
			/*
			 * A source table renamed or dropped (its map would get nothing
			 * more), or one whose created target follows its columns changed
			 */
			if (changed == 0 && !sources_unchanged(s, source, p, true, &result))
				goto done;
		}

		/*
		 * Whole source transactions, up to batch-size events or batch-ms;
		 * with --exit-when-caught-up, at once when the batch holds the
		 * marker: nothing more is waited for.
		 */
		if (batch_open(b) && !s->in_xact &&
			(batch_events(b) >= opts.batch_size ||
			 now - batch_started_us(b) >= (int64_t) opts.batch_ms * 1000 ||
			 (caught_up_at != InvalidLsn && s->received >= caught_up_at)))
		{
			if (!sources_unchanged(s, source, p, true, &result) || !flush_batch(s, b))
				goto done;
		}

		if (caught_up_at != InvalidLsn && p->ckpt_commit_lsn >= caught_up_at && !batch_pending(b))
		{
			char		lb[32];

			log_msg(LOG_INFO, "caught up with the source at %s", format_lsn(s->flushed, lb));
			send_feedback(s, false);
			log_progress(s);
			result = EXIT_DONE;
			goto done;
		}

		if (now - s->last_status_us >= (int64_t) opts.status_interval * 1000000 &&
			!send_feedback(s, false))
			goto done;

		if (now - last_lsn_poll_us >= 1000000)
		{
			refresh_source_lsn(source);
			if (stats.source_lsn <= s->flushed)
				stats.lag_seconds = 0;
			last_lsn_poll_us = now;
		}

		if (opts.heartbeat > 0 && !s->in_xact &&
			now - s->last_event_us >= (int64_t) opts.heartbeat * 1000000)
		{
			Lsn			hb;

			if (!emit_marker(source, p->name, "heartbeat", &hb))
				goto done;
			log_msg(LOG_DEBUG, "heartbeat emitted on the source");
			s->last_event_us = now;
		}

		if (now - last_progress_us >= 10 * 1000000)
		{
			log_progress(s);
			last_progress_us = now;
		}

		r = PQgetCopyData(s->conn, &buf, 1);
		/* the source has sent all it has for now: the batch may go early */
		if (r == 0 && opts.idle_flush && batch_open(b) && !s->in_xact && !batch_applying(b) &&
			now >= batch_due_us(s, b))
		{
			if (!sources_unchanged(s, source, p, true, &result) || !flush_batch(s, b))
				goto done;
			continue;
		}
		if (r == 0)
		{
			fd_set		fds;
			struct timeval tv;
			int64_t		wait_us = 1000000;
			int			sock = PQsocket(s->conn);
			int			mfd = metrics_fd();
			int			bfd = batch_wait_fd(b);
			int			maxfd = sock;

			if (batch_open(b) && !s->in_xact)
			{
				int64_t		left = batch_due_us(s, b) - now;

				if (left < wait_us)
					wait_us = left > 0 ? left : 0;
			}
			FD_ZERO(&fds);
			FD_SET(sock, &fds);
			if (mfd >= 0)
			{
				FD_SET(mfd, &fds);
				if (mfd > maxfd)
					maxfd = mfd;
			}
			if (bfd >= 0)
			{
				/* wake up when the batch being applied is done */
				FD_SET(bfd, &fds);
				if (bfd > maxfd)
					maxfd = bfd;
			}
			tv.tv_sec = wait_us / 1000000;
			tv.tv_usec = wait_us % 1000000;
			if (select(maxfd + 1, &fds, NULL, NULL, &tv) < 0 && errno != EINTR)
			{
				log_msg(LOG_ERROR, "select() failed: %m");
				goto done;
			}
			if (mfd >= 0 && FD_ISSET(mfd, &fds))
				metrics_poll();
			if (FD_ISSET(sock, &fds) && PQconsumeInput(s->conn) == 0)
			{
				log_msg(LOG_ERROR, "lost the replication connection: %s", conn_error(s->conn));
				goto done;
			}
			continue;
		}
		if (r == -1)
		{
			PGresult   *res = PQgetResult(s->conn);

			log_msg(LOG_ERROR, "the source ended replication: %s",
					PQresultStatus(res) == PGRES_COMMAND_OK ? "end of stream" : conn_error(s->conn));
			PQclear(res);
			goto done;
		}
		if (r < 0)
		{
			log_msg(LOG_ERROR, "could not read from the replication stream: %s", conn_error(s->conn));
			goto done;
		}

		if (buf[0] == 'k' && r >= 18)
		{
			Lsn			wal_end = get_u64(buf + 1);

			/*
			 * Everything the walsender decoded up to wal_end has been sent
			 * before this keepalive; with no transaction pending here it is
			 * all applied or not captured, so it may be confirmed.  Else the
			 * slot would hold WAL of uncaptured tables, and a fast shutdown
			 * of the source, which waits for the client to confirm all it
			 * was sent, would hang.
			 */
			if (!s->in_xact && !batch_pending(b))
			{
				Lsn			upto;

				/* not past a rename not looked for (sources_unchanged) */
				if (buf[17] && wal_end > s->checked && !sources_unchanged(s, source, p, false, &result))
				{
					PQfreemem(buf);
					goto done;
				}
				upto = wal_end < s->checked ? wal_end : s->checked;
				if (wal_end > s->received)
					s->received = wal_end;
				if (upto > s->flushed)
					s->flushed = stats.applied_lsn = upto;
				if (wal_end > stats.received_lsn)
					stats.received_lsn = wal_end;
			}
			if (buf[17] && !send_feedback(s, false))
			{
				PQfreemem(buf);
				goto done;
			}
		}
		else if (buf[0] == 'w' && r > 25)
		{
			/* one event per line */
			const char *json = buf + 25;
			const char *end = buf + r;

			while (json < end)
			{
				const char *nl = memchr(json, '\n', end - json);
				size_t		len = (nl ? nl : end) - json;

				if (!take_event(s, b, json, len, now, scratch, sizeof(scratch)))
				{
					PQfreemem(buf);
					goto done;
				}
				json += len + 1;
			}
		}
		PQfreemem(buf);
	}

done:
	if (result != EXIT_DONE)
		batch_abort(b);
	batch_free(b);
	return result;
}
