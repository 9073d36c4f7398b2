/*
 * target.c
 *		The target database: the pipeline and its table maps, the one-consumer
 *		lock, and target tables created or completed from the
 *		source tables' definitions.
 */
#include "postgres_fe.h"

#include <sys/select.h>
#include <time.h>

#include "consumer.h"

__thread SqlError last_sql_error;
__thread bool quiet_sql_errors = false;

static void
copy_field(char *dst, size_t len, const char *src)
{
	snprintf(dst, len, "%s", src ? src : "");
}

/* res if it is a success, else NULL (with the error logged and kept) */
static PGresult *
result_ok(PGconn *conn, PGresult *res)
{
	ExecStatusType st = PQresultStatus(res);

	if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
		return res;
	keep_sql_error(conn, res);
	PQclear(res);
	return NULL;
}

/* Run a statement; NULL (with the error logged and kept) unless it succeeded. */
PGresult *
exec_ok(PGconn *conn, const char *sql, int nparams, const char *const *params)
{
	/* without parameters, the simple protocol: several statements may be sent */
	return result_ok(conn, nparams == 0 ? PQexec(conn, sql) :
					 PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0));
}

/*
 * exec_ok for a statement that may run long (a snapshot's apply): while it
 * runs, "<what>: still running after N s" every 5 s.
 */
PGresult *
exec_ok_progress(PGconn *conn, const char *sql, int nparams, const char *const *params,
				 const char *what)
{
	int64_t		start = now_us();
	int64_t		last = start;
	PGresult   *res;
	PGresult   *final = NULL;

	if (!PQsendQueryParams(conn, sql, nparams, NULL, params, NULL, NULL, 0))
	{
		keep_sql_error(conn, NULL);
		return NULL;
	}
	while (PQisBusy(conn))
	{
		int			sock = PQsocket(conn);
		fd_set		in;
		struct timeval tv = {1, 0};

		if (sock < 0)
			break;
		FD_ZERO(&in);
		FD_SET(sock, &in);
		if (select(sock + 1, &in, NULL, NULL, &tv) < 0 && errno != EINTR)
			break;
		if (!PQconsumeInput(conn))
			break;
		if (now_us() - last >= 5000000)
		{
			last = now_us();
			log_msg(LOG_INFO, "%s: still running after %.0f s", what, (last - start) / 1e6);
		}
	}
	/* the last result is the statement's (or its error) */
	while ((res = PQgetResult(conn)) != NULL)
	{
		PQclear(final);
		final = res;
	}
	return result_ok(conn, final);
}

/* Keep a failed result's error in last_sql_error, and log it. */
void
keep_sql_error(PGconn *conn, const PGresult *res)
{
	copy_field(last_sql_error.code, sizeof(last_sql_error.code),
			   PQresultErrorField(res, PG_DIAG_SQLSTATE));
	if (last_sql_error.code[0] == '\0')
		strcpy(last_sql_error.code, "08006");	/* no server error: the connection broke */
	copy_field(last_sql_error.message, sizeof(last_sql_error.message),
			   PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
	if (last_sql_error.message[0] == '\0')
		copy_field(last_sql_error.message, sizeof(last_sql_error.message), conn_error(conn));
	copy_field(last_sql_error.detail, sizeof(last_sql_error.detail),
			   PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL));
	/* one line: the message and its SQLSTATE, not the statement's context */
	/* a statement we cancelled because we are stopping is no error */
	log_msg(quiet_sql_errors || (stop_requested && strcmp(last_sql_error.code, "57014") == 0) ?
			LOG_DEBUG : LOG_ERROR, "%s (SQLSTATE %s)",
			last_sql_error.message, last_sql_error.code);
}

/*
 * Errors that say nothing about the statement's data: a lost connection, a
 * deadlock or serialization failure, no resources, a cancel or shutdown, a
 * lock timeout, an object in use (a slot still held by a dying session).
 * Retrying later is right; quarantining events for them would be wrong.
 */
bool
sql_error_is_transient(const SqlError *e)
{
	static const char *const classes[] = {"08", "40", "53", "57", "58"};

	for (int i = 0; i < lengthof(classes); i++)
		if (strncmp(e->code, classes[i], 2) == 0)
			return true;
	return strcmp(e->code, "55P03") == 0 || strcmp(e->code, "55006") == 0;
}

/* SAVEPOINT, RELEASE SAVEPOINT or ROLLBACK TO SAVEPOINT (verb) name. */
bool
exec_savepoint(PGconn *conn, const char *verb, const char *name)
{
	char		sql[128];

	snprintf(sql, sizeof(sql), "%s %s", verb, name);
	return exec_cmd(conn, sql);
}

bool
exec_cmd(PGconn *conn, const char *sql)
{
	PGresult   *res = exec_ok(conn, sql, 0, NULL);

	PQclear(res);
	return res != NULL;
}

static char *
get_str(PGresult *res, int row, int col)
{
	return PQgetisnull(res, row, col) ? NULL : pg_strdup(PQgetvalue(res, row, col));
}

/*
 * Server notices (DROP ... IF EXISTS and the like) belong in the debug log;
 * a server WARNING is one of ours too.
 */
static void
notice_to_log(void *arg, const char *message)
{
	size_t		n = strlen(message);

	log_msg(strncmp(message, "WARNING:", 8) == 0 ? LOG_WARNING : LOG_DEBUG, "server: %.*s",
			(int) (n > 0 && message[n - 1] == '\n' ? n - 1 : n), message);
}

/* What a running consumer must notice: the pipeline's row and table maps. */
#define PIPELINE_DIGEST \
	"pg_catalog.md5(p::text || coalesce((SELECT pg_catalog.string_agg(m::text, ',' ORDER BY m.source_table, m.target) " \
	"FROM pgcdc.table_map m WHERE m.pipeline = p.name), ''))"

/*
 * Has the pipeline changed since it was loaded?  0 no, 1 it was paused,
 * 2 it changed otherwise (table maps added, removed or altered; options;
 * the pipeline dropped), -1 the query failed.
 */
int
target_pipeline_changed(PGconn *conn, const Pipeline *p)
{
	const char *params[1] = {p->name};
	PGresult   *res = exec_ok(conn, "SELECT p.paused, " PIPELINE_DIGEST
							  " FROM pgcdc.pipeline p WHERE p.name = $1", 1, params);
	int			changed;

	if (res == NULL)
		return -1;
	if (PQntuples(res) == 0)
		changed = 2;
	else if (strcmp(PQgetvalue(res, 0, 0), "t") == 0)
		changed = 1;
	else
		changed = p->digest && strcmp(PQgetvalue(res, 0, 1), p->digest) != 0 ? 2 : 0;
	PQclear(res);
	return changed;
}

PGconn *
target_connect(const char *conninfo)
{
	const char *keys[] = {"dbname", "fallback_application_name", NULL};
	const char *vals[] = {conninfo, "pgcdc_consumer", NULL};
	PGconn	   *conn = PQconnectdbParams(keys, vals, 1);

	if (PQstatus(conn) != CONNECTION_OK)
	{
		log_msg(LOG_ERROR, "could not connect: %s", conn_error(conn));
		PQfinish(conn);
		return NULL;
	}
	PQsetNoticeProcessor(conn, notice_to_log, NULL);
	/*
	 * Our SQL names its schemas; an empty search_path keeps it that way.
	 * Batches stage in temp tables: give them room in memory (settable
	 * only before the session's first temp table; the server default of 8MB
	 * made them spill to disk).  The extension's work tables may stay for
	 * the session, whatever our role: we never switch roles.  A batch
	 * staged in the second apply session waits, idle in its transaction,
	 * for the batch before to commit, however long that takes: no idle
	 * timeout may end it.  Events are UTF-8 JSON whatever the databases'
	 * encodings: the server converts from UTF-8.
	 */
	if (!exec_cmd(conn, "SELECT pg_catalog.set_config('search_path', '', false), "
				  "pg_catalog.set_config('temp_buffers', '128MB', false), "
				  "pg_catalog.set_config('pgcdc.keep_work_tables', 'on', false), "
				  "pg_catalog.set_config('idle_in_transaction_session_timeout', '0', false)") ||
		PQsetClientEncoding(conn, "UTF8") != 0)
	{
		PQfinish(conn);
		return NULL;
	}

	/*
	 * If this process dies (kill -9), the server ends our session within a
	 * second even mid-statement, releasing the pipeline lock for a restart.
	 * A session may wait long for a batch (the second one, when batches do
	 * not overlap): no idle timeout either.
	 */
	if (PQserverVersion(conn) >= 140000 &&
		!exec_cmd(conn, "SELECT pg_catalog.set_config('client_connection_check_interval', '1s', false), "
				  "pg_catalog.set_config('idle_session_timeout', '0', false)"))
	{
		PQfinish(conn);
		return NULL;
	}
	return conn;
}

/*
 * One consumer per pipeline: a session advisory lock in the target, held
 * while the consumer's target session lives (a killed consumer's session
 * ends with it, and the lock with the session).  The server notices a
 * killed client only after a moment, so a restart waits a little for the
 * lock before it concludes that another consumer runs.  The second apply
 * session (target_sessions.c) holds a lock of its own (session 2): a restart also
 * waits for a killed consumer's second session, whose last COMMIT may
 * still be under way, before it reads the checkpoint.
 */
#define LOCK_WAIT_SECONDS 5

bool
target_lock_pipeline(PGconn *conn, const char *pipeline, int session)
{
	const char *params[2] = {pipeline, session > 1 ? "pgcdc_consumer_apply2" : "pgcdc_consumer"};
	PGresult   *res = NULL;
	bool		ok = false;

	for (int i = 0; i <= LOCK_WAIT_SECONDS * 5 && !ok && !stop_requested; i++)
	{
		struct timespec ts = {0, 200 * 1000 * 1000};

		if (i > 0)
			nanosleep(&ts, NULL);
		PQclear(res);
		res = exec_ok(conn,
					  "SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtext($2), "
					  "pg_catalog.hashtext($1)), "
					  "(SELECT string_agg(l.pid::text, ', ') FROM pg_catalog.pg_locks l "
					  " WHERE l.locktype = 'advisory' AND l.granted "
					  "   AND l.classid = pg_catalog.hashtext($2)::oid "
					  "   AND l.objid = pg_catalog.hashtext($1)::oid)",
					  2, params);
		if (res == NULL)
			return false;
		ok = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	}
	if (!ok && !stop_requested && session > 1)
		log_msg(LOG_ERROR, "the second target session of an earlier pgcdc_consumer of pipeline \"%s\" "
				"is still there (target backend pid %s)", pipeline, PQgetvalue(res, 0, 1));
	else if (!ok && !stop_requested)
	{
		log_msg(LOG_ERROR, "pipeline \"%s\" is already being run by another pgcdc_consumer "
				"(target backend pid %s)", pipeline, PQgetvalue(res, 0, 1));
		log_hint("Only one consumer may run a pipeline at a time; stop the other one first.");
	}
	PQclear(res);
	return ok;
}

/*
 * Mark what this session writes with the replication origin "pgcdc_NAME",
 * so that a pipeline reading the target with origin=none (the target being
 * a source too, e.g. one database for both) does not capture it again.
 * The origin functions are superuser-only unless granted: without them the
 * consumer works the same, its changes just carry no origin.  *origin is
 * the origin's name, or NULL without one.  (One session at a time may use
 * an origin: the second apply session takes it over for its batches,
 * target_sessions.c.)
 */
bool
target_setup_origin(PGconn *conn, const char *pipeline, char **origin)
{
	char	   *name = psprintf("pgcdc_%s", pipeline);	/* as pgcdc.drop_pipeline names it */
	const char *params[1] = {name};
	PGresult   *res;
	bool		ok = true;

	*origin = NULL;
	quiet_sql_errors = true;
	res = exec_ok(conn,
				  "SELECT pg_catalog.pg_replication_origin_session_setup($1) "
				  "FROM (SELECT coalesce(pg_catalog.pg_replication_origin_oid($1), "
				  "                      pg_catalog.pg_replication_origin_create($1))) o",
				  1, params);
	quiet_sql_errors = false;
	if (res != NULL)
	{
		PQclear(res);
		log_msg(LOG_DEBUG, "changes applied in the target carry replication origin \"%s\"", name);
		*origin = name;
		return true;
	}
	if (strcmp(last_sql_error.code, "42501") == 0)
		log_msg(LOG_DEBUG, "no replication origin (%s): changes applied in the target carry none",
				last_sql_error.message);
	else
	{
		log_msg(LOG_ERROR, "could not set up replication origin \"%s\": %s (SQLSTATE %s)",
				name, last_sql_error.message, last_sql_error.code);
		ok = false;
	}
	free(name);
	return ok;
}

/*
 * The snapshot is taken again: what its first attempt quarantined (the
 * pipeline has no checkpoint, so nothing else can be open) would be
 * quarantined twice.  Those events are closed as discarded; without UPDATE
 * on the quarantine they stay open, and the log says so.
 */
bool
target_forget_snapshot_quarantine(PGconn *conn, Pipeline *p)
{
	const char *params[1] = {p->name};
	PGresult   *res;

	quiet_sql_errors = true;
	res = exec_ok(conn,
				  "UPDATE pgcdc.quarantine SET status = 'discarded', resolved_at = pg_catalog.now(), "
				  "  note = 'the initial snapshot was taken again' "
				  "WHERE pipeline = $1 AND status = 'open'",
				  1, params);
	quiet_sql_errors = false;
	if (res != NULL)
	{
		if (atol(PQcmdTuples(res)) > 0)
			log_msg(LOG_INFO, "closed %s quarantined events of the interrupted snapshot", PQcmdTuples(res));
		PQclear(res);
		return true;
	}
	if (strcmp(last_sql_error.code, "42501") == 0)
	{
		log_msg(LOG_INFO, "quarantined events of the interrupted snapshot stay open: %s", last_sql_error.message);
		return true;
	}
	log_msg(LOG_ERROR, "could not close the interrupted snapshot's quarantined events: %s (SQLSTATE %s)",
			last_sql_error.message, last_sql_error.code);
	return false;
}

/*
 * The source's key for a table without key_columns: its replica identity.
 * NULL if it has none, or if the query failed (*failed then, when given).
 */
char *
source_identity(PGconn *source, const char *table, bool *failed)
{
	const char *params[1] = {table};
	PGresult   *res = exec_ok(source,
							  "SELECT pg_catalog.array_agg(a.attname ORDER BY k.ord)::text "
							  "FROM pg_catalog.pg_index i "
							  "JOIN pg_catalog.pg_class c ON c.oid = i.indrelid "
							  "CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY k(attnum, ord) "
							  "JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
							  "WHERE i.indrelid = $1::pg_catalog.regclass "
							  "  AND ((c.relreplident = 'i' AND i.indisreplident) "
							  "       OR (c.relreplident IN ('d', 'f') AND i.indisprimary)) "
							  "  AND k.ord <= i.indnkeyatts",
							  1, params);
	char	   *result = NULL;

	if (failed)
		*failed = res == NULL;
	if (res != NULL && !PQgetisnull(res, 0, 0))
		result = pg_strdup(PQgetvalue(res, 0, 0));
	PQclear(res);
	return result;
}

/* s as the next element of a text[] literal being built in buf ("{" so far, when first) */
void
append_array_element(PQExpBuffer buf, const char *s, bool first)
{
	appendPQExpBufferStr(buf, first ? "\"" : ",\"");
	for (const char *c = s; *c; c++)
	{
		if (*c == '"' || *c == '\\')
			appendPQExpBufferChar(buf, '\\');
		appendPQExpBufferChar(buf, *c);
	}
	appendPQExpBufferChar(buf, '"');
}

/* The maps' source tables, in map order, as a text[] literal (one query for all maps). */
static PQExpBuffer
source_tables_literal(const Pipeline *p)
{
	PQExpBuffer names = createPQExpBuffer();

	appendPQExpBufferChar(names, '{');
	for (int i = 0; i < p->nmaps; i++)
		append_array_element(names, p->maps[i].source_table, i == 0);
	appendPQExpBufferChar(names, '}');
	return names;
}

/*
 * The first map whose source table no longer exists under its name
 * (dropped or renamed: its changes would no longer be decoded for the
 * map): its index, or -1 if there is none, -2 if a query failed.  The
 * others' OIDs are kept, to notice a rename (source_tables_look).
 */
int
source_table_gone(PGconn *source, Pipeline *p)
{
	PQExpBuffer names = source_tables_literal(p);
	const char *sp[1];
	PGresult   *res;
	int			gone = -1;

	sp[0] = names->data;
	res = exec_ok(source, "SELECT pg_catalog.to_regclass(t)::pg_catalog.oid FROM pg_catalog.unnest($1::text[]) "
				  "WITH ORDINALITY u(t, o) ORDER BY o", 1, sp);
	destroyPQExpBuffer(names);
	if (res == NULL)
		return -2;
	for (int i = 0; i < p->nmaps && i < PQntuples(res); i++)
	{
		/* (dropped while we ran: its maps take its changes up to the drop) */
		if (p->maps[i].dropped_until != InvalidLsn)
			continue;
		if (PQgetisnull(res, i, 0))
		{
			if (gone < 0)
				gone = i;
		}
		else
			p->maps[i].source_oid = (unsigned int) strtoul(PQgetvalue(res, i, 0), NULL, 10);
	}
	PQclear(res);
	return gone;
}

bool
target_load_pipeline(PGconn *conn, PGconn *source, Pipeline *p)
{
	const char *params[1] = {p->name};
	PGresult   *res;
	int			i;

	res = exec_ok(conn,
				  "SELECT slot_name, paused, "
				  "       (SELECT pg_catalog.string_agg(pg_catalog.format('%I %L', key, value), ', ') "
				  "          FROM pg_catalog.jsonb_each_text(options) "
				  "         WHERE key = ANY ('{include-types,numeric-as-string,origin,exclude-tables,actions}')), "
				  "       " PIPELINE_DIGEST " "
				  "FROM pgcdc.pipeline p WHERE name = $1", 1, params);
	if (res == NULL)
	{
		log_hint("Is the pgcdc extension installed in the target database (CREATE EXTENSION pgcdc)?");
		return false;
	}
	if (PQntuples(res) == 0)
	{
		log_msg(LOG_ERROR, "pipeline \"%s\" does not exist in the target", p->name);
		log_hint("Create it with SELECT pgcdc.create_pipeline('%s') and add tables with pgcdc.add_table.", p->name);
		PQclear(res);
		return false;
	}
	p->slot_name = get_str(res, 0, 0);
	p->paused = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
	p->decoder_options = get_str(res, 0, 2);
	p->digest = get_str(res, 0, 3);
	PQclear(res);

	/* renames and drops a process before this one was following */
	if (!moves_load(conn, source, p->name))
		return false;
	res = exec_ok(conn,
				  "SELECT source_table, source_schema, source_name, target, mode, "
				  "       key_columns::text, track_columns::text, ignore_columns::text, soft_delete "
				  "FROM pgcdc.table_map WHERE pipeline = $1 ORDER BY source_table, target",
				  1, params);
	if (res == NULL)
		return false;
	if (PQntuples(res) == 0)
	{
		log_msg(LOG_ERROR, "pipeline \"%s\" has no tables", p->name);
		log_hint("Add one with SELECT pgcdc.add_table('%s', 'schema.table').", p->name);
		PQclear(res);
		return false;
	}
	p->nmaps = PQntuples(res);
	p->maps = pg_malloc0(sizeof(TableMap) * p->nmaps);
	for (i = 0; i < p->nmaps; i++)
	{
		TableMap   *m = &p->maps[i];

		m->source_table = get_str(res, i, 0);
		m->source_schema = get_str(res, i, 1);
		m->source_name = get_str(res, i, 2);
		m->target = get_str(res, i, 3);
		m->mode = get_str(res, i, 4);
		m->kind = strcmp(m->mode, "mirror") == 0 ? MAP_MIRROR :
			strcmp(m->mode, "append") == 0 ? MAP_APPEND : MAP_SCD2;
		m->key_columns = get_str(res, i, 5);
		m->track_columns = get_str(res, i, 6);
		m->ignore_columns = get_str(res, i, 7);
		m->soft_delete = strcmp(PQgetvalue(res, i, 8), "t") == 0;
		m->map_table = pg_strdup(m->source_table);
		moves_apply(m);
	}
	PQclear(res);

	{
		int			gone;

		/*
		 * A table followed by its OID may have a newer name than the notes
		 * give; renamed again between that look and the next, it is chased
		 * again rather than taken for gone.
		 */
		for (int tries = 0;; tries++)
		{
			int			moved = moves_chase(source, p);

			if (moved < 0)
				return false;
			gone = source_table_gone(source, p);
			if (gone < 0 || p->maps[gone].nold == 0 || p->maps[gone].source_oid == 0 ||
				(tries > 0 && moved == 0) || tries == 5)
				break;
		}
		if (gone >= 0)
		{
			/* the hint's call is SQL a user may paste: its arguments as literals */
			char	   *lp = PQescapeLiteral(conn, p->name, strlen(p->name));
			char	   *ls = PQescapeLiteral(conn, p->maps[gone].source_table, strlen(p->maps[gone].source_table));
			char	   *lt = PQescapeLiteral(conn, p->maps[gone].target, strlen(p->maps[gone].target));
			char	   *rename_sql = psprintf("SELECT pgcdc.rename_source_table(%s, %s, 'schema.new_name')",
											  lp ? lp : "?", ls ? ls : "?");
			char	   *remove_sql = psprintf("SELECT pgcdc.remove_table(%s, %s, %s)",
											  lp ? lp : "?", ls ? ls : "?", lt ? lt : "?");

			log_msg(LOG_ERROR, "source table %s of pipeline \"%s\" does not exist",
					p->maps[gone].source_table, p->name);
			/* what mapping the new name would lose: the slot knows */
			switch (stream_pending_changes(source, p->slot_name, p->maps[gone].source_schema,
										   p->maps[gone].source_name))
			{
				case 0:
					log_hint("No change made under that name since the checkpoint is waiting in the slot. If it was "
							 "renamed at the source, map the new name, losing nothing: %s; if it was dropped: %s;",
							 rename_sql, remove_sql);
					break;
				case 1:
					log_hint("Changes made under that name since the checkpoint are waiting in the slot. If it was "
							 "renamed at the source, rename it back and start pgcdc_consumer: it applies them, and "
							 "follows the table when it is renamed again while it runs. Mapping the new name now "
							 "(%s) or removing the map (%s) leaves them unapplied.", rename_sql, remove_sql);
					break;
				default:
					log_hint("If it was renamed at the source while pgcdc_consumer was not running, map the new "
							 "name: %s; changes made under the old name since the checkpoint are then not applied "
							 "(to keep them, rename the table back, start pgcdc_consumer and rename it again while "
							 "it runs: it follows). If it was dropped: %s;", rename_sql, remove_sql);
					break;
			}
			free(rename_sql);
			free(remove_sql);
			PQfreemem(lp);
			PQfreemem(ls);
			PQfreemem(lt);
			return false;
		}
		if (gone == -2)
			return false;
	}
	for (i = 0; i < p->nmaps; i++)
	{
		TableMap   *m = &p->maps[i];

		if (m->key_columns == NULL && m->kind != MAP_APPEND)
		{
			bool		failed;

			m->key_columns = source_identity(source, m->source_table, &failed);
			if (failed)
				return false;	/* (42P01: renamed or dropped since it was looked up) */
			if (m->key_columns == NULL)
			{
				log_msg(LOG_ERROR, "source table %s has no primary key or replica identity index",
						m->source_table);
				log_hint("Give the table map key_columns, e.g. pgcdc.add_table('%s', '%s', key_columns => '{id}').",
						 p->name, m->source_table);
				return false;
			}
		}
	}

	return moves_save(conn, p) && checkpoint_load(conn, p);
}

/*
 * A target the consumer created carries this comment, after its source
 * table's name: its columns follow the source's (a column added while the
 * consumer was stopped is added at the next start); a target made by hand
 * keeps the columns it was given.
 */
/* the columns the apply functions keep themselves */
#define TARGET_SYSTEM_COLUMNS "'_source_lsn', '_source_seq', '_synced_at', '_is_deleted', " \
	"'_valid_from', '_valid_to', '_is_current', '_version', '_row_hash', " \
	"'_sequence', '_last_sequence', '_last_at'"
/* (pgcdc.rename_source_table rewrites the source name before it) */
#define CREATED_MARK ": created by pgcdc_consumer, which adds the columns added there to it"
/*
 * ... and, until its copy commits, a target made after the pipeline's
 * snapshot (copy_now): a consumer killed during the copy leaves it behind,
 * and the next start copies again instead of streaming into a target that
 * lacks the rows from before.
 */
#define COPY_PENDING_MARK "; its copy is not done yet"
/*
 * Once it commits, the position P the copy was taken at: events of that
 * table committed at or before P are in the copy and skipped for this
 * target (an scd2 or append target cannot take them twice), until the
 * stream has passed P.
 */
#define COPIED_AT_MARK "; copied at "

/* Comment m's target with CREATED_MARK, then COPY_PENDING_MARK or where it was copied. */
static bool
mark_target(PGconn *conn, const TableMap *m, bool pending, Lsn copied_at)
{
	char		lb[32];
	char	   *mark = pending ? pg_strdup(COPY_PENDING_MARK) :
		copied_at != InvalidLsn ? psprintf("%s%s", COPIED_AT_MARK, format_lsn(copied_at, lb)) : pg_strdup("");
	const char *cp[4] = {m->target, m->map_table, CREATED_MARK, mark};
	PGresult   *res;
	bool		ok;

	res = exec_ok(conn, "SELECT pg_catalog.format('COMMENT ON TABLE %s IS %L', $1::pg_catalog.regclass, "
				  "$2::text || $3::text || $4::text)", 4, cp);
	ok = res != NULL && exec_cmd(conn, PQgetvalue(res, 0, 0));
	PQclear(res);
	free(mark);
	return ok;
}

/* The copy into m's target commits with this: it is done, taken at copied_at. */
bool
target_copy_done(PGconn *conn, const TableMap *m, Lsn copied_at)
{
	return mark_target(conn, m, false, copied_at);
}

/* The copy into m's target is given up: clear COPY_PENDING_MARK, if still there. */
bool
target_copy_given_up(PGconn *conn, const TableMap *m)
{
	const char *mp[4] = {m->target, m->map_table, CREATED_MARK, COPY_PENDING_MARK};
	PGresult   *res = exec_ok(conn, "SELECT pg_catalog.obj_description($1::pg_catalog.regclass, 'pg_class') "
							  "= $2::text || $3::text || $4::text", 4, mp);
	bool		ok = res != NULL;

	if (ok && strcmp(PQgetvalue(res, 0, 0), "t") == 0)
		ok = mark_target(conn, m, false, InvalidLsn);
	PQclear(res);
	return ok;
}

/*
 * Read m's target's comment: made by us (m->created), its copy not done
 * (m->copy_pending), or copied at a position (m->copied_at).
 */
bool
target_read_marks(PGconn *conn, TableMap *m)
{
	const char *mp[5] = {m->target, m->map_table, CREATED_MARK, COPY_PENDING_MARK, COPIED_AT_MARK};
	PGresult   *res;

	res = exec_ok(conn, "SELECT d = p OR d = p || $4::text OR rest ~ '^; copied at [0-9A-F]+/[0-9A-F]+$', "
				  "       d = p || $4::text, "
				  "       CASE WHEN rest ~ '^; copied at [0-9A-F]+/[0-9A-F]+$' "
				  "            THEN pg_catalog.substr(rest, pg_catalog.length($5::text) + 1) END "
				  "FROM (SELECT d, p, CASE WHEN pg_catalog.starts_with(d, p) "
				  "                   THEN pg_catalog.substr(d, pg_catalog.length(p) + 1) END AS rest "
				  "        FROM (SELECT pg_catalog.obj_description($1::pg_catalog.regclass, 'pg_class') AS d, "
				  "                     $2::text || $3::text AS p) x) y", 5, mp);
	if (res == NULL)
		return false;
	m->created = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	m->copy_pending = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
	m->copied_at = InvalidLsn;
	if (!PQgetisnull(res, 0, 2))
		parse_lsn(PQgetvalue(res, 0, 2), &m->copied_at);
	PQclear(res);
	return true;
}

/* CREATE TABLE for a target that does not exist, shaped like its source. */
static bool
create_target(PGconn *conn, PGconn *source, Pipeline *p, TableMap *m)
{
	const char *params[2] = {m->source_table, m->ignore_columns};
	PGresult   *res;
	PQExpBuffer cols = createPQExpBuffer();
	PQExpBuffer sql = createPQExpBuffer();
	bool		ok;

	res = exec_ok(source,
				  "SELECT pg_catalog.string_agg(pg_catalog.format('%I %s%s', a.attname, "
				  "         pg_catalog.format_type(a.atttypid, a.atttypmod), "
				  "         CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END), ', ' ORDER BY a.attnum) "
				  "FROM pg_catalog.pg_attribute a "
				  "WHERE a.attrelid = $1::pg_catalog.regclass AND a.attnum > 0 AND NOT a.attisdropped "
				  "  AND a.attname <> ALL (coalesce($2::text[], '{}'))",
				  2, params);
	if (res == NULL)
		return false;
	appendPQExpBufferStr(cols, PQgetvalue(res, 0, 0));
	PQclear(res);

	if (m->kind == MAP_MIRROR)
	{
		const char *kp[1] = {m->key_columns};

		res = exec_ok(conn, "SELECT pg_catalog.string_agg(pg_catalog.quote_ident(k), ', ') "
					  "FROM pg_catalog.unnest($1::text[]) k", 1, kp);
		if (res == NULL)
			return false;
		appendPQExpBuffer(sql, "CREATE TABLE %s (%s, _source_lsn pg_catalog.pg_lsn, _source_seq integer, "
						  "_synced_at timestamptz%s, PRIMARY KEY (%s))",
						  m->target, cols->data,
						  m->soft_delete ? ", _is_deleted boolean NOT NULL DEFAULT false" : "",
						  PQgetvalue(res, 0, 0));
		PQclear(res);
		ok = exec_cmd(conn, sql->data);
	}
	else if (m->kind == MAP_SCD2)
	{
		/* the extension builds history tables: give it the source's shape */
		const char *hp[2] = {m->target, m->key_columns};

		appendPQExpBuffer(sql, "CREATE TEMP TABLE pgcdc_shape (%s)", cols->data);
		ok = exec_cmd(conn, "DROP TABLE IF EXISTS pg_temp.pgcdc_shape") &&
			exec_cmd(conn, sql->data);
		if (ok)
		{
			res = exec_ok(conn, "SELECT pgcdc.create_history_table('pg_temp.pgcdc_shape', $1, $2::text[])",
						  2, hp);
			ok = res != NULL;
			PQclear(res);
		}
		ok = ok && exec_cmd(conn, "DROP TABLE pg_temp.pgcdc_shape");
	}
	else
	{
		appendPQExpBuffer(sql, "CREATE TABLE %s (_op text NOT NULL, _source_lsn pg_catalog.pg_lsn NOT NULL, "
						  "_source_seq integer NOT NULL, _xid bigint, _commit_ts timestamptz, "
						  "_key jsonb, _new jsonb, _old jsonb, "
						  "_received_at timestamptz NOT NULL DEFAULT pg_catalog.now(), "
						  "PRIMARY KEY (_source_lsn, _source_seq))", m->target);
		ok = exec_cmd(conn, sql->data);
	}
	/* the mark that lets later starts add the source's new columns (remember_source_columns) */
	ok = ok && mark_target(conn, m, m->copy_now, InvalidLsn);
	if (ok)
		log_msg(LOG_INFO, "created %s target %s from source table %s", m->mode, m->target, m->source_table);
	else
		log_hint("The consumer creates missing targets from the source's definition; "
				 "it needs CREATE on the target schema and the column types must exist in the target.");
	destroyPQExpBuffer(cols);
	destroyPQExpBuffer(sql);
	return ok;
}

/* The system columns of each mode, with what existing rows get. */
typedef struct SystemColumn
{
	const char *name;
	const char *definition;
} SystemColumn;

static const SystemColumn mirror_columns[] = {
	{"_source_lsn", "pg_catalog.pg_lsn"},
	{"_source_seq", "integer"},
	{"_synced_at", "timestamptz"},
	{NULL, NULL}
};
static const SystemColumn soft_delete_columns[] = {
	{"_is_deleted", "boolean NOT NULL DEFAULT false"},
	{NULL, NULL}
};
static const SystemColumn append_columns[] = {
	{"_op", "text"},
	{"_source_lsn", "pg_catalog.pg_lsn"},
	{"_source_seq", "integer"},
	{"_xid", "bigint"},
	{"_commit_ts", "timestamptz"},
	{"_key", "jsonb"},
	{"_new", "jsonb"},
	{"_old", "jsonb"},
	{"_received_at", "timestamptz DEFAULT pg_catalog.now()"},
	{NULL, NULL}
};

/* existing rows of a plain table become current versions valid since ever */
static const SystemColumn scd2_columns[] = {
	{"_valid_from", "timestamptz NOT NULL DEFAULT '-infinity'"},
	{"_valid_to", "timestamptz NOT NULL DEFAULT 'infinity'"},
	{"_is_current", "boolean NOT NULL DEFAULT true"},
	{"_is_deleted", "boolean NOT NULL DEFAULT false"},
	{"_version", "integer NOT NULL DEFAULT 1"},
	{"_row_hash", "bytea"},
	{"_source_lsn", "pg_catalog.pg_lsn"},
	{"_source_seq", "integer"},
	{"_sequence", "numeric[]"},
	{"_last_sequence", "numeric[]"},
	{"_last_at", "timestamptz"},
	{NULL, NULL}
};

/* Add the columns of cols that the target lacks; *added tells whether any. */
static bool
add_missing_columns(PGconn *conn, TableMap *m, const SystemColumn *cols, bool *added)
{
	const char *params[1] = {m->target};
	PQExpBuffer sql = createPQExpBuffer();
	PGresult   *res = exec_ok(conn,
							  "SELECT attname FROM pg_catalog.pg_attribute "
							  "WHERE attrelid = $1::pg_catalog.regclass AND attnum > 0 AND NOT attisdropped",
							  1, params);
	bool		ok = res != NULL;

	for (const SystemColumn *c = cols; ok && c->name; c++)
	{
		bool		have = false;

		for (int i = 0; i < PQntuples(res) && !have; i++)
			have = strcmp(PQgetvalue(res, i, 0), c->name) == 0;
		if (!have)
			appendPQExpBuffer(sql, "%s ADD COLUMN %s %s", sql->len ? "," : "", c->name, c->definition);
	}
	PQclear(res);
	*added = sql->len > 0;
	if (ok && *added)
	{
		PQExpBuffer alter = createPQExpBuffer();

		/* one ALTER TABLE: adding a column takes a lock even when nothing is added */
		appendPQExpBuffer(alter, "ALTER TABLE %s %s", m->target, sql->data);
		ok = exec_cmd(conn, alter->data);
		destroyPQExpBuffer(alter);
	}
	destroyPQExpBuffer(sql);
	return ok;
}

/*
 * An existing target gets the system columns it lacks.  A plain table made
 * an scd2 target becomes a history table as create_history_table makes
 * them: its unique constraints and indexes go (a history holds many rows
 * per key: its primary key would refuse every second version), the unique
 * index on current keys (two current versions of a key never exist) and
 * the one on (key, _valid_from) come, and the defaults that were only there
 * for its existing rows go.
 */
static bool
complete_target(PGconn *conn, TableMap *m)
{
	bool		added = false;
	bool		ok;

	if (m->kind == MAP_MIRROR)
		ok = add_missing_columns(conn, m, mirror_columns, &added) &&
			(!m->soft_delete || add_missing_columns(conn, m, soft_delete_columns, &added));
	else if (m->kind == MAP_APPEND)
		ok = add_missing_columns(conn, m, append_columns, &added);
	else
	{
		/* all or nothing: a restart must not find the columns without the indexes */
		ok = exec_cmd(conn, "BEGIN") && add_missing_columns(conn, m, scd2_columns, &added);
		if (ok && added)
		{
			const char *params[2] = {m->target, m->key_columns};
			PGresult   *res = exec_ok(conn,
									  "SELECT (SELECT pg_catalog.string_agg(CASE WHEN c.conname IS NOT NULL "
									  "          THEN pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I; ', "
									  "                                 $1::pg_catalog.regclass, c.conname) "
									  "          ELSE pg_catalog.format('DROP INDEX %s; ', i.indexrelid::pg_catalog.regclass) END, '') "
									  "          FROM pg_catalog.pg_index i "
									  "          LEFT JOIN pg_catalog.pg_constraint c ON c.conindid = i.indexrelid "
									  "           AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u') "
									  "         WHERE i.indrelid = $1::pg_catalog.regclass AND i.indisunique "
									  "           AND i.indpred IS NULL), "
									  "  pg_catalog.format('CREATE UNIQUE INDEX ON %s (%s) WHERE _is_current; "
									  "CREATE UNIQUE INDEX ON %s (%s, _valid_from); "
									  "ALTER TABLE %s ALTER _valid_from DROP DEFAULT, ALTER _valid_to DROP DEFAULT, "
									  "ALTER _is_current DROP DEFAULT, ALTER _version DROP DEFAULT', "
									  "$1::pg_catalog.regclass, k.list, $1::pg_catalog.regclass, k.list, "
									  "$1::pg_catalog.regclass) "
									  "FROM (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(k), ', ') AS list "
									  "        FROM pg_catalog.unnest($2::text[]) k) k",
									  2, params);

			if (res != NULL && !PQgetisnull(res, 0, 0))
			{
				log_msg(LOG_INFO, "target %s: dropping its unique constraints and indexes: a history holds many rows per key",
						m->target);
				ok = exec_cmd(conn, PQgetvalue(res, 0, 0));
			}
			ok = ok && res != NULL && exec_cmd(conn, PQgetvalue(res, 0, 1));
			PQclear(res);
		}
		ok = exec_cmd(conn, ok ? "COMMIT" : "ROLLBACK") && ok;
	}
	if (ok && added)
		log_msg(LOG_INFO, "added the %s system columns to target %s", m->mode, m->target);
	return ok;
}

/*
 * The data columns of a map (rows of name, quoted name, type, is json), in
 * the forms the staging SQL and row_values need.
 */
static void
set_data_columns(TableMap *m, PGresult *res)
{
	PQExpBuffer cols = createPQExpBuffer();
	PQExpBuffer types = createPQExpBuffer();
	int			n = PQntuples(res);

	m->ncols = n;
	m->colnames = pg_malloc0(sizeof(char *) * Max(n, 1));
	m->coljson = pg_malloc0(sizeof(bool) * Max(n, 1));
	m->values = pg_malloc0(sizeof(JsonSpan) * Max(n, 1));
	m->keyidx = pg_malloc0(sizeof(int) * Max(n, 1));
	m->colwatch = pg_malloc0(sizeof(bool) * Max(n, 1));
	m->watch_any = false;
	m->nkeys = 0;
	for (int j = 0; j < n; j++)
	{
		const char *sep = j > 0 ? ", " : "";

		m->colnames[j] = pg_strdup(PQgetvalue(res, j, 0));
		m->coljson[j] = strcmp(PQgetvalue(res, j, 3), "t") == 0;
		if (strcmp(PQgetvalue(res, j, 4), "t") == 0)
			m->keyidx[m->nkeys++] = j;
		else if (m->created && m->kind != MAP_APPEND && strcmp(PQgetvalue(res, j, 6), "t") == 0)
			m->watch_any = m->colwatch[j] = true;
		appendPQExpBuffer(cols, "%s%s", sep, PQgetvalue(res, j, 1));
		appendPQExpBuffer(types, "%s%s %s", sep, PQgetvalue(res, j, 1), PQgetvalue(res, j, 2));
	}
	/* compaction by key needs every key column among the data columns */
	if (n == 0 || PQgetisnull(res, 0, 5) || m->nkeys != atoi(PQgetvalue(res, 0, 5)))
		m->nkeys = 0;
	m->data_columns = n > 0 ? pg_strdup(cols->data) : NULL;
	m->data_types = n > 0 ? pg_strdup(types->data) : NULL;
	destroyPQExpBuffer(cols);
	destroyPQExpBuffer(types);
}

/* Source tables a running consumer saw a new column of (stream.c), until handled. */
static char **evolved = NULL;
static int	nevolved = 0;

/* Every "table"."column" that made us start over, for the process's life. */
static char **noted = NULL;
static int	nnoted = 0;

void
target_note_new_column(const char *source_table, const char *column)
{
	evolved = pg_realloc(evolved, sizeof(char *) * (nevolved + 1));
	evolved[nevolved++] = pg_strdup(source_table);
	noted = pg_realloc(noted, sizeof(char *) * (nnoted + 1));
	noted[nnoted++] = psprintf("%s.%s", source_table, column);
}

/* Did this column make us start over already?  (Rare: only asked about columns out of place.) */
bool
target_column_noted(const char *source_table, const char *column)
{
	size_t		len = strlen(source_table);

	for (int i = 0; i < nnoted; i++)
		if (strncmp(noted[i], source_table, len) == 0 && noted[i][len] == '.' &&
			strcmp(noted[i] + len + 1, column) == 0)
			return true;
	return false;
}

/* A source table's column names and types, as text[] literals, and both together. */
#define COLUMNS_OF(rel) \
	"SELECT n, t, n || ' ' || t AS sig FROM (" \
	"  SELECT pg_catalog.array_agg(attname::text ORDER BY attnum)::text AS n, " \
	"         pg_catalog.array_agg(pg_catalog.format_type(atttypid, atttypmod) ORDER BY attnum)::text AS t " \
	"  FROM pg_catalog.pg_attribute " \
	"  WHERE attrelid = " rel " AND attnum > 0 AND NOT attisdropped) a"
#define SOURCE_COLUMNS_SQL COLUMNS_OF("$1::pg_catalog.regclass")

static bool align_types(PGconn *conn, TableMap *m, const char *names, const char *types);
static bool column_ddl(PGconn *conn, PGresult *res);

/*
 * Keep the source's column names: an event with another column means the
 * source changed while we ran (stream.c notes it and starts over).  Then,
 * or at any start for a target the consumer created (CREATED_MARK; one
 * made by hand with fewer columns keeps them), the source columns a mirror
 * or scd2 target lacks (not ignored) are added, typed as at the source; one
 * that cannot be (its type is missing in the target) is left out with a
 * warning.
 */
static bool
remember_source_columns(PGconn *conn, TableMap *m, const char *names, const char *types)
{
	const char *params[6] = {names, types, m->target, m->ignore_columns, m->mode, m->source_table};
	PGresult   *res;
	bool		evolve = false;

	for (int e = 0; e < nevolved; e++)
		evolve |= strcmp(evolved[e], m->source_table) == 0;

	res = exec_ok(conn, "SELECT pg_catalog.unnest($1::text[])", 1, params);
	if (res == NULL)
		return false;
	m->nsrc = PQntuples(res);
	m->srcnames = pg_malloc0(sizeof(char *) * Max(m->nsrc, 1));
	for (int c = 0; c < m->nsrc; c++)
		m->srcnames[c] = pg_strdup(PQgetvalue(res, c, 0));
	PQclear(res);
	if (!target_read_marks(conn, m))
		return false;
	evolve |= m->created;
	if (!evolve)
		return true;

	/*
	 * A column dropped at the source stays in a target we made, with its
	 * values; rows written from now on have it NULL, so it cannot stay NOT
	 * NULL (every one of them would go to the quarantine).
	 */
	if (m->created && m->kind != MAP_APPEND)
	{
		const char *dp[2] = {names, m->target};

		res = exec_ok(conn,
					  "SELECT pg_catalog.format('ALTER TABLE %s ALTER COLUMN %I DROP NOT NULL', $2::pg_catalog.regclass, "
					  "       a.attname), a.attname "
					  "FROM pg_catalog.pg_attribute a "
					  "WHERE a.attrelid = $2::pg_catalog.regclass AND a.attnum > 0 AND NOT a.attisdropped "
					  "  AND a.attnotnull AND a.attname <> ALL ($1::text[]) "
					  "  AND a.attname NOT IN (" TARGET_SYSTEM_COLUMNS ") "
					  "  AND NOT EXISTS (SELECT FROM pg_catalog.pg_index i WHERE i.indrelid = a.attrelid "
					  "                   AND i.indisprimary AND a.attnum = ANY (i.indkey))",
					  2, dp);
		if (res == NULL)
			return false;
		for (int r = 0; r < PQntuples(res); r++)
		{
			if (!exec_cmd(conn, PQgetvalue(res, r, 0)))
			{
				PQclear(res);
				return false;
			}
			log_msg(LOG_INFO, "column \"%s\" of target %s is no longer in source table %s: it keeps its "
					"values, is NULL in rows written from now on, and no longer NOT NULL",
					PQgetvalue(res, r, 1), m->target, m->source_table);
		}
		PQclear(res);
	}

	if (!column_ddl(conn, exec_ok(conn,
								  "SELECT pg_catalog.format('ALTER TABLE %s ADD COLUMN %I %s', $3::pg_catalog.regclass, n, t), "
								  "       pg_catalog.format('added column \"%s\" of source table %s to target %s', n, $6::text, $3), "
								  "       pg_catalog.format('could not add column \"%s\" of source table %s to target %s', n, $6::text, $3) "
								  "FROM unnest($1::text[], $2::text[]) u(n, t) "
								  "WHERE $5 IN ('mirror', 'scd2') AND n <> ALL (coalesce($4::text[], '{}')) "
								  "  AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a "
								  "                   WHERE a.attrelid = $3::pg_catalog.regclass AND a.attname = u.n "
								  "                     AND a.attnum > 0 AND NOT a.attisdropped)",
								  6, params)))
		return false;
	return m->created ? align_types(conn, m, names, types) : true;
}

/*
 * Run each row's ALTER (column 1) of res, a query for column changes; log
 * column 2 when it worked, else column 3 and the error, as a warning: a
 * column that cannot be changed is left as it is.
 */
static bool
column_ddl(PGconn *conn, PGresult *res)
{
	if (res == NULL)
		return false;
	for (int r = 0; r < PQntuples(res); r++)
	{
		quiet_sql_errors = true;
		if (exec_cmd(conn, PQgetvalue(res, r, 0)))
			log_msg(LOG_INFO, "%s", PQgetvalue(res, r, 1));
		else
			log_msg(LOG_WARNING, "%s: %s", PQgetvalue(res, r, 2), last_sql_error.message);
		quiet_sql_errors = false;
	}
	PQclear(res);
	return true;
}

/*
 * A target the consumer created follows the source's column types: a
 * column whose type changed there (a longer varchar, a wider numeric, int
 * to bigint) is altered to it, so new values fit and are not rounded; one
 * that cannot be (no such type in the target, values that do not convert)
 * keeps its type, with a warning.  (The stream looks for such changes
 * before each batch, so no change after one reaches the old type.)
 */
static bool
align_types(PGconn *conn, TableMap *m, const char *names, const char *types)
{
	const char *params[6] = {names, types, m->target, m->ignore_columns, m->mode, m->source_table};

	return column_ddl(conn, exec_ok(conn,
									"SELECT pg_catalog.format('ALTER TABLE %s ALTER COLUMN %I TYPE %s USING %I::%s', "
									"       $3::pg_catalog.regclass, n, t, n, t), "
									"       pg_catalog.format('column \"%s\" of target %s is now %s, as in source table %s (it was %s)', "
									"                         n, $3, t, $6::text, pg_catalog.format_type(a.atttypid, a.atttypmod)), "
									"       pg_catalog.format('could not change column \"%s\" of target %s to %s, as in source table %s', "
									"                         n, $3, t, $6::text) "
									"FROM unnest($1::text[], $2::text[]) u(n, t) "
									"JOIN pg_catalog.pg_attribute a ON a.attrelid = $3::pg_catalog.regclass AND a.attname = u.n "
									"  AND a.attnum > 0 AND NOT a.attisdropped "
									"WHERE $5 IN ('mirror', 'scd2') AND n <> ALL (coalesce($4::text[], '{}')) "
									"  AND pg_catalog.format_type(a.atttypid, a.atttypmod) <> u.t "
									"ORDER BY a.attnum",
									6, params));
}

/* A map into a target the consumer made (mirror or scd2), which follows its source's columns. */
static bool
follows_columns(const TableMap *m)
{
	return m->created && m->srccols != NULL && m->kind != MAP_APPEND &&
		m->dropped_until == InvalidLsn;
}

/*
 * One look at the maps' source tables, by their OIDs, in one query:
 * look->moved is the first map whose table has another name now (ALTER
 * TABLE ... RENAME or SET SCHEMA, ALTER SCHEMA ... RENAME) or is gone, with
 * the new name (NULLs if gone), -1 if none; maps without an OID (0: known
 * dropped) are not looked at.  With columns, look->columns is the first map
 * that follows its source's columns (follows_columns) whose columns, names
 * or types, are not what they were at the start, else -1: a type change
 * shows in no event (stream.c looks before each batch).
 * look->checked_at is the source's WAL position as it looked: a rename
 * that committed before it is seen (unless its commit was not visible yet:
 * README names that window).  False if the query failed.
 */
bool
source_tables_look(PGconn *source, const Pipeline *p, bool columns, SourceLook *look)
{
	PQExpBuffer names = source_tables_literal(p);
	PQExpBuffer oids = createPQExpBuffer();
	const char *sp[3];
	PGresult   *res;
	bool		want_columns = false;

	appendPQExpBufferChar(oids, '{');
	for (int i = 0; i < p->nmaps; i++)
	{
		appendPQExpBuffer(oids, "%s%u", i > 0 ? "," : "", p->maps[i].source_oid);
		want_columns |= columns && follows_columns(&p->maps[i]);
	}
	appendPQExpBufferChar(oids, '}');
	sp[0] = oids->data;
	sp[1] = names->data;
	sp[2] = want_columns ? "t" : "f";
	res = exec_ok(source,
				  "SELECT pg_catalog.pg_current_wal_lsn(), n.nspname, c.relname, "
				  "       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname), "
				  "       CASE WHEN $3::boolean THEN (SELECT s.sig FROM (" COLUMNS_OF("u.r") ") s) END "
				  "FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.oid[]), pg_catalog.unnest($2::text[])) "
				  "     WITH ORDINALITY u(r, t, o) "
				  "LEFT JOIN pg_catalog.pg_class c ON c.oid = u.r "
				  "LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
				  "ORDER BY u.o", 3, sp);
	destroyPQExpBuffer(names);
	destroyPQExpBuffer(oids);
	if (res == NULL)
		return false;
	parse_lsn(PQgetvalue(res, 0, 0), &look->checked_at);
	look->moved = look->columns = -1;
	look->schema = look->name = look->table = NULL;
	for (int i = 0; i < p->nmaps && i < PQntuples(res); i++)
	{
		const TableMap *m = &p->maps[i];

		if (m->source_oid == 0)
			continue;
		if (look->moved < 0 &&
			(PQgetisnull(res, i, 3) || strcmp(PQgetvalue(res, i, 3), m->source_table) != 0))
		{
			look->moved = i;
			if (!PQgetisnull(res, i, 3))
			{
				look->schema = get_str(res, i, 1);
				look->name = get_str(res, i, 2);
				look->table = get_str(res, i, 3);
			}
		}
		if (want_columns && look->columns < 0 && follows_columns(m) &&
			(PQgetisnull(res, i, 4) || strcmp(PQgetvalue(res, i, 4), m->srccols) != 0))
			look->columns = i;
	}
	PQclear(res);
	return true;
}

/*
 * Make every target usable: create missing ones, complete existing ones,
 * and work out the data columns the events fill (the target's columns that
 * the source has too, less ignore_columns and system columns).
 */
bool
target_prepare_tables(PGconn *conn, PGconn *source, Pipeline *p)
{
	int			i;

	for (i = 0; i < p->nmaps; i++)
	{
		TableMap   *m = &p->maps[i];
		const char *tp[1] = {m->target};
		PGresult   *res;
		PQExpBuffer srccols = createPQExpBuffer();
		const char *cp[4];

		res = exec_ok(conn, "SELECT pg_catalog.to_regclass($1) IS NOT NULL", 1, tp);
		if (res == NULL)
			return false;
		if (strcmp(PQgetvalue(res, 0, 0), "t") != 0)
		{
			PQclear(res);
			/*
			 * The snapshot happened once, for the maps there were then: a
			 * target made now gets a copy of its own (snapshot.c).
			 */
			m->copy_now = p->has_checkpoint && opts.snapshot == SNAPSHOT_INITIAL;
			if (!create_target(conn, source, p, m))
				return false;
			if (p->has_checkpoint && !m->copy_now)
			{
				log_msg(LOG_WARNING, "target %s was created now, after pipeline \"%s\" took its snapshot: "
						"with --snapshot never the rows %s held before are not copied, only changes from now on",
						m->target, p->name, m->source_table);
				log_hint("Start with --snapshot initial to copy them: a target made after the snapshot gets a "
						 "copy of its own when it is made.");
			}
		}
		else
		{
			PQclear(res);
			if (!complete_target(conn, m))
				return false;
		}

		/*
		 * The source's column names, as a text[] literal; and those the
		 * target lacks, added.  (A table dropped while we ran: as they were.)
		 */
		{
			const char *sp[1] = {m->source_table};
			const SourceDrop *d = moves_dropped(m);

			res = d ? NULL : exec_ok(source, SOURCE_COLUMNS_SQL, 1, sp);
			if (d == NULL && res == NULL)
				return false;
			free(m->src_names);
			free(m->src_types);
			free(m->srccols);
			m->src_names = pg_strdup(d ? d->names : PQgetvalue(res, 0, 0));
			m->src_types = pg_strdup(d ? d->types : PQgetvalue(res, 0, 1));
			m->srccols = pg_strdup(d ? d->srccols : PQgetvalue(res, 0, 2));
			PQclear(res);
			appendPQExpBufferStr(srccols, m->src_names);
			if (!remember_source_columns(conn, m, m->src_names, m->src_types))
				return false;
		}
		if (m->copy_pending && !m->copy_now && p->has_checkpoint && opts.snapshot == SNAPSHOT_INITIAL)
		{
			/* (the copy starts with TRUNCATE) */
			log_msg(LOG_INFO, "the copy into target %s did not finish last time: it is taken again", m->target);
			m->copy_now = true;
		}
		cp[0] = m->target;
		cp[1] = srccols->data;
		cp[2] = m->ignore_columns;
		cp[3] = m->key_columns;
		res = exec_ok(conn,
					  "SELECT attname, pg_catalog.quote_ident(attname), "
					  "       pg_catalog.format_type(atttypid, atttypmod), "
					  "       atttypid IN ('pg_catalog.json'::pg_catalog.regtype, 'pg_catalog.jsonb'::pg_catalog.regtype), "
					  "       attname = ANY ($4::text[]), pg_catalog.cardinality($4::text[]), attnotnull "
					  "FROM pg_catalog.pg_attribute "
					  "WHERE attrelid = $1::pg_catalog.regclass AND attnum > 0 AND NOT attisdropped "
					  "  AND attname = ANY ($2::text[]) AND attname <> ALL (coalesce($3::text[], '{}')) "
					  "  AND attname NOT IN (" TARGET_SYSTEM_COLUMNS ") "
					  "ORDER BY attnum",
					  4, cp);
		destroyPQExpBuffer(srccols);
		if (res == NULL)
			return false;
		if (PQntuples(res) == 0 && m->kind != MAP_APPEND)
		{
			log_msg(LOG_ERROR, "target %s has no column in common with source table %s",
					m->target, m->source_table);
			PQclear(res);
			return false;
		}
		set_data_columns(m, res);
		PQclear(res);
	}
	/* the new columns noted by the last run are handled */
	for (i = 0; i < nevolved; i++)
		free(evolved[i]);
	nevolved = 0;
	return true;
}

void
pipeline_free(Pipeline *p)
{
	int			i;

	for (i = 0; i < p->nmaps; i++)
	{
		TableMap   *m = &p->maps[i];

		free(m->source_table);
		free(m->source_schema);
		free(m->source_name);
		free(m->map_table);
		for (int o = 0; o < m->nold; o++)
		{
			free(m->old_schemas[o]);
			free(m->old_names[o]);
		}
		free(m->old_schemas);
		free(m->old_names);
		free(m->target);
		free(m->mode);
		free(m->key_columns);
		free(m->track_columns);
		free(m->ignore_columns);
		free(m->data_columns);
		free(m->data_types);
		free(m->srccols);
		free(m->src_names);
		free(m->src_types);
		for (int j = 0; j < m->ncols; j++)
			free(m->colnames[j]);
		free(m->colnames);
		free(m->coljson);
		free(m->values);
		free(m->keyidx);
		free(m->colwatch);
		for (int c = 0; c < m->nsrc; c++)
			free(m->srcnames[c]);
		free(m->srcnames);
	}
	free(p->maps);
	free(p->origin);
	p->origin = NULL;
	free(p->slot_name);
	free(p->decoder_options);
	free(p->digest);
	p->maps = NULL;
	p->nmaps = 0;
	p->slot_name = NULL;
	p->decoder_options = NULL;
}
