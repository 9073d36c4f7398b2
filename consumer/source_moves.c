/*
 * source_moves.c
 *		Mapped source tables renamed or dropped at the source while the
 *		consumer ran (stream.c sees them), until the stream has passed the
 *		rename or the drop: a renamed table's maps follow it and take its
 *		changes under both names; a dropped one's take its changes up to
 *		the drop, with what was read of the table before.  Kept for the
 *		process's life, and in the target (pgcdc.checkpoint.source_moves,
 *		written with every checkpoint), so that a new process, after a kill,
 *		goes on where the last one was: it would find the old name gone,
 *		and only these notes say where the table went.
 */
#include "postgres_fe.h"

#include "consumer.h"

typedef struct Rename
{
	char	   *from;
	char	   *schema;
	char	   *name;
	char	   *table;
	Lsn			until;
	unsigned int oid;			/* the table's (0 if read from the target: an OID can be reused) */
	bool		announce;		/* read from the target: say so when a map takes it */
} Rename;
static Rename *renames = NULL;
static int	nrenames = 0;

static SourceDrop *drops = NULL;
static int	ndrops = 0;

/* the notes as pgcdc.checkpoint.source_moves holds them (NULL: none) */
static char *moves_json = NULL;
/* ... and as the target had them when last read or written there */
static char *moves_saved = NULL;

static void moves_apply_one(TableMap *m, Rename *r);

static char *
strdup_or_null(const char *s)
{
	return s ? pg_strdup(s) : NULL;
}

static bool
same_text(const char *a, const char *b)
{
	return a == NULL ? b == NULL : b != NULL && strcmp(a, b) == 0;
}

/* "key": "value" (or null), after sep */
static void
append_member(PQExpBuffer buf, const char *sep, const char *key, const char *s)
{
	appendPQExpBuffer(buf, "%s\"%s\": ", sep, key);
	if (s == NULL)
	{
		appendPQExpBufferStr(buf, "null");
		return;
	}
	appendPQExpBufferChar(buf, '"');
	for (; *s; s++)
	{
		unsigned char c = (unsigned char) *s;

		if (c == '"' || c == '\\')
			appendPQExpBuffer(buf, "\\%c", c);
		else if (c < 0x20)
			appendPQExpBuffer(buf, "\\u%04x", c);
		else
			appendPQExpBufferChar(buf, c);
	}
	appendPQExpBufferChar(buf, '"');
}

/* The notes as JSON, again after each change of them. */
static void
serialize(void)
{
	PQExpBuffer buf;
	char		lb[32];

	free(moves_json);
	moves_json = NULL;
	if (nrenames == 0 && ndrops == 0)
		return;
	buf = createPQExpBuffer();
	appendPQExpBufferStr(buf, "{\"renamed\": [");
	for (int i = 0; i < nrenames; i++)
	{
		const Rename *r = &renames[i];

		appendPQExpBufferStr(buf, i > 0 ? ", {" : "{");
		append_member(buf, "", "from", r->from);
		append_member(buf, ", ", "schema", r->schema);
		append_member(buf, ", ", "name", r->name);
		append_member(buf, ", ", "table", r->table);
		append_member(buf, ", ", "until", format_lsn(r->until, lb));
		appendPQExpBufferChar(buf, '}');
	}
	appendPQExpBufferStr(buf, "], \"dropped\": [");
	for (int i = 0; i < ndrops; i++)
	{
		const SourceDrop *d = &drops[i];

		appendPQExpBufferStr(buf, i > 0 ? ", {" : "{");
		append_member(buf, "", "table", d->table);
		append_member(buf, ", ", "until", format_lsn(d->until, lb));
		append_member(buf, ", ", "key_columns", d->key_columns);
		append_member(buf, ", ", "names", d->names);
		append_member(buf, ", ", "types", d->types);
		append_member(buf, ", ", "srccols", d->srccols);
		appendPQExpBufferChar(buf, '}');
	}
	appendPQExpBufferStr(buf, "]}");
	moves_json = pg_strdup(buf->data);
	destroyPQExpBuffer(buf);
}

/* What a batch's checkpoint writes into source_moves: a copy, or NULL. */
char *
moves_text(void)
{
	return strdup_or_null(moves_json);
}

static void
add_rename(const char *from, const char *schema, const char *name, const char *table, Lsn until,
		   unsigned int oid)
{
	Rename	   *r;

	renames = pg_realloc(renames, sizeof(Rename) * (nrenames + 1));
	r = &renames[nrenames++];
	r->from = pg_strdup(from);
	r->schema = pg_strdup(schema);
	r->name = pg_strdup(name);
	r->table = pg_strdup(table);
	r->until = until;
	r->oid = oid;
	r->announce = false;
}

static void
remove_rename(int r)
{
	free(renames[r].from);
	free(renames[r].schema);
	free(renames[r].name);
	free(renames[r].table);
	memmove(&renames[r], &renames[r + 1], sizeof(Rename) * (--nrenames - r));
}

static void
add_drop(const char *table, Lsn until, const char *key_columns, const char *names, const char *types,
		 const char *srccols)
{
	SourceDrop *d;

	drops = pg_realloc(drops, sizeof(SourceDrop) * (ndrops + 1));
	d = &drops[ndrops++];
	d->table = pg_strdup(table);
	d->until = until;
	d->key_columns = strdup_or_null(key_columns);	/* (NULL: an append map's) */
	d->names = pg_strdup(names);
	d->types = pg_strdup(types);
	d->srccols = pg_strdup(srccols);
	d->announce = false;
}

static void
remove_drop(int i)
{
	free(drops[i].table);
	free(drops[i].key_columns);
	free(drops[i].names);
	free(drops[i].types);
	free(drops[i].srccols);
	memmove(&drops[i], &drops[i + 1], sizeof(SourceDrop) * (--ndrops - i));
}

void
target_note_rename(const char *from, const char *schema, const char *name, const char *table, Lsn until,
				   unsigned int oid)
{
	add_rename(from, schema, name, table, until, oid);
	serialize();
}

void
target_note_drop(const TableMap *m, Lsn until)
{
	if (moves_dropped(m) != NULL)
		return;
	if (m->src_names == NULL || m->src_types == NULL || m->srccols == NULL)
		return;					/* (read at every start before streaming) */
	add_drop(m->source_table, until, m->key_columns, m->src_names, m->src_types, m->srccols);
	serialize();
}

const SourceDrop *
moves_dropped(const TableMap *m)
{
	for (int i = 0; i < ndrops; i++)
		if (strcmp(drops[i].table, m->source_table) == 0)
			return &drops[i];
	return NULL;
}

/* A map takes rename r if it names r's old name: the new name, the old one kept for events. */
static void
moves_apply_one(TableMap *m, Rename *r)
{
	if (strcmp(m->source_table, r->from) != 0)
		return;
	/* every name before it: a change before an earlier rename carries the first */
	m->old_schemas = pg_realloc(m->old_schemas, sizeof(char *) * (m->nold + 1));
	m->old_names = pg_realloc(m->old_names, sizeof(char *) * (m->nold + 1));
	m->old_schemas[m->nold] = m->source_schema;
	m->old_names[m->nold++] = m->source_name;
	free(m->source_table);
	m->source_table = pg_strdup(r->table);
	m->source_schema = pg_strdup(r->schema);
	m->source_name = pg_strdup(r->name);
	m->renamed_until = r->until;
	if (r->oid != 0)
		m->source_oid = r->oid;
	if (r->announce)
		log_msg(LOG_INFO, "source table %s was renamed to %s before this start: following it", r->from, r->table);
	r->announce = false;
}

/*
 * A map just read from table_map: if its table was renamed (once or more),
 * it takes the newest name and keeps the others for events; if dropped, it
 * takes the table's changes up to the drop.
 */
void
moves_apply(TableMap *m)
{
	for (int r = 0; r < nrenames; r++)
		moves_apply_one(m, &renames[r]);
	for (int i = 0; i < ndrops; i++)
	{
		SourceDrop *d = &drops[i];

		if (strcmp(d->table, m->source_table) != 0)
			continue;
		m->dropped_until = d->until;
		if (m->key_columns == NULL)
			m->key_columns = strdup_or_null(d->key_columns);
		if (d->announce)
			log_msg(LOG_INFO, "source table %s was dropped before this start: applying its changes up to the drop",
					d->table);
		d->announce = false;
	}
}

/*
 * At a start over, before the maps' names are looked up: a table this
 * process follows may have been renamed again meanwhile (a migration's
 * rename to a temporary name, then to the final one), and its name found
 * gone.  By the OID noted with the rename, take the new name too: a marker
 * on the source, a rename noted and applied to the map, which then takes
 * changes under every name it had since the checkpoint.  Returns how many
 * tables it followed to a new name, -1 if a query failed.
 */
int
moves_chase(PGconn *source, Pipeline *p)
{
	int			moved = 0;

	for (int i = 0; i < p->nmaps; i++)
	{
		TableMap   *m = &p->maps[i];
		char		oid[16];
		const char *params[1] = {oid};
		PGresult   *res;
		Lsn			until;

		if (m->nold == 0 || m->source_oid == 0)
			continue;
		snprintf(oid, sizeof(oid), "%u", m->source_oid);
		res = exec_ok(source,
					  "SELECT n.nspname, c.relname, "
					  "       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) "
					  "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
					  "WHERE c.oid = $1::pg_catalog.oid", 1, params);
		if (res == NULL)
			return -1;
		if (PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 2), m->source_table) != 0)
		{
			if (!emit_marker(source, p->name, "renamed", &until))
			{
				PQclear(res);
				return -1;
			}
			log_msg(LOG_INFO, "source table %s of pipeline \"%s\" was renamed to %s: following it",
					m->source_table, p->name, PQgetvalue(res, 0, 2));
			target_note_rename(m->source_table, PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1),
							   PQgetvalue(res, 0, 2), until, m->source_oid);
			/* (the maps of the same table take it too) */
			for (int k = 0; k < p->nmaps; k++)
				if (p->maps[k].source_oid == m->source_oid)
					moves_apply_one(&p->maps[k], &renames[nrenames - 1]);
			moved++;
		}
		PQclear(res);
	}
	return moved;
}

/*
 * At a start: the notes a process before this one left in the target,
 * added to this process's (after a kill, it has none).  A note the source
 * contradicts is stale and left out: a rename to a name that no longer
 * exists (unless a later note renames it again), a drop of a name that
 * exists again.
 */
bool
moves_load(PGconn *target, PGconn *source, const char *pipeline)
{
	const char *params[1] = {pipeline};
	PGresult   *res;
	PGresult   *there;
	PQExpBuffer names;
	const char *sp[1];
	bool	   *holds;

	res = exec_ok(target,
				  "SELECT 'r', r->>'from', r->>'schema', r->>'name', r->>'table', r->>'until', "
				  "       NULL, NULL, NULL, NULL, c.source_moves::text, o "
				  "  FROM pgcdc.checkpoint c, "
				  "       pg_catalog.jsonb_array_elements(c.source_moves->'renamed') WITH ORDINALITY u(r, o) "
				  " WHERE c.pipeline = $1 "
				  "UNION ALL "
				  "SELECT 'd', d->>'table', NULL, NULL, NULL, d->>'until', "
				  "       d->>'key_columns', d->>'names', d->>'types', d->>'srccols', c.source_moves::text, o "
				  "  FROM pgcdc.checkpoint c, "
				  "       pg_catalog.jsonb_array_elements(c.source_moves->'dropped') WITH ORDINALITY u(d, o) "
				  " WHERE c.pipeline = $1 "
				  "ORDER BY 1 DESC, 12",
				  1, params);
	if (res == NULL)
		return false;
	free(moves_saved);
	moves_saved = PQntuples(res) > 0 ? pg_strdup(PQgetvalue(res, 0, 10)) : NULL;
	if (PQntuples(res) == 0)
	{
		PQclear(res);
		return true;
	}

	/* does each note's table exist at the source now? */
	names = createPQExpBuffer();
	appendPQExpBufferChar(names, '{');
	for (int i = 0; i < PQntuples(res); i++)
		append_array_element(names, PQgetvalue(res, i, *PQgetvalue(res, i, 0) == 'r' ? 4 : 1), i == 0);
	appendPQExpBufferChar(names, '}');
	sp[0] = names->data;
	there = exec_ok(source, "SELECT pg_catalog.to_regclass(t) IS NOT NULL "
					"FROM pg_catalog.unnest($1::text[]) WITH ORDINALITY u(t, o) ORDER BY o", 1, sp);
	destroyPQExpBuffer(names);
	if (there == NULL)
	{
		PQclear(res);
		return false;
	}

	/*
	 * A rename holds if its new name exists, or a later rename (of a chain:
	 * to a temporary name, then to the final one) renamed that name and holds.
	 */
	holds = pg_malloc0(sizeof(bool) * PQntuples(res));
	for (int i = PQntuples(res) - 1; i >= 0; i--)
	{
		holds[i] = strcmp(PQgetvalue(there, i, 0), "t") == 0;
		if (*PQgetvalue(res, i, 0) != 'r')
			continue;
		for (int j = i + 1; j < PQntuples(res) && !holds[i]; j++)
			holds[i] = *PQgetvalue(res, j, 0) == 'r' && holds[j] &&
				strcmp(PQgetvalue(res, j, 1), PQgetvalue(res, i, 4)) == 0;
	}
	for (int i = 0; i < PQntuples(res); i++)
	{
		bool		rename = *PQgetvalue(res, i, 0) == 'r';
		bool		exists = holds[i];
		const char *table = PQgetvalue(res, i, 1);
		Lsn			until;
		bool		known = false;

		if (!parse_lsn(PQgetvalue(res, i, 5), &until) || PQgetisnull(res, i, 1) ||
			(rename ? PQgetisnull(res, i, 2) || PQgetisnull(res, i, 3) || PQgetisnull(res, i, 4)
			 : PQgetisnull(res, i, 7) || PQgetisnull(res, i, 8) || PQgetisnull(res, i, 9)))
		{
			log_msg(LOG_WARNING, "ignoring a malformed entry of pgcdc.checkpoint.source_moves of pipeline \"%s\"",
					pipeline);
			continue;
		}
		if (rename ? !exists : exists)
			continue;
		if (rename)
		{
			for (int r = 0; r < nrenames && !known; r++)
				known = strcmp(renames[r].from, table) == 0 && strcmp(renames[r].table, PQgetvalue(res, i, 4)) == 0;
			if (!known)
			{
				add_rename(table, PQgetvalue(res, i, 2), PQgetvalue(res, i, 3), PQgetvalue(res, i, 4), until, 0);
				renames[nrenames - 1].announce = true;
			}
		}
		else
		{
			for (int d = 0; d < ndrops && !known; d++)
				known = strcmp(drops[d].table, table) == 0;
			if (!known)
			{
				add_drop(table, until, PQgetisnull(res, i, 6) ? NULL : PQgetvalue(res, i, 6),
						 PQgetvalue(res, i, 7), PQgetvalue(res, i, 8), PQgetvalue(res, i, 9));
				drops[ndrops - 1].announce = true;
			}
		}
	}
	free(holds);
	PQclear(there);
	PQclear(res);
	serialize();
	return true;
}

/*
 * After the maps are loaded: forget the notes no map needs any more (the
 * map was renamed, or removed), and write them to the checkpoint, if it
 * exists and holds something else.  (A batch's checkpoint writes them too.)
 */
bool
moves_save(PGconn *target, const Pipeline *p)
{
	const char *params[2] = {p->name, NULL};
	PGresult   *res;

	/* a rename is needed by a map still named as before it, or by the rename before it */
	for (int r = 0; r < nrenames;)
	{
		bool		used = false;

		for (int i = 0; i < p->nmaps && !used; i++)
			used = strcmp(p->maps[i].map_table, renames[r].from) == 0;
		for (int e = 0; e < r && !used; e++)
			used = strcmp(renames[e].table, renames[r].from) == 0;
		if (used)
			r++;
		else
			remove_rename(r);
	}
	for (int d = ndrops - 1; d >= 0; d--)
	{
		bool		used = false;

		for (int i = 0; i < p->nmaps && !used; i++)
			used = p->maps[i].dropped_until != InvalidLsn && strcmp(p->maps[i].source_table, drops[d].table) == 0;
		if (!used)
			remove_drop(d);
	}
	serialize();
	if (same_text(moves_json, moves_saved))
		return true;
	params[1] = moves_json;
	res = exec_ok(target, "UPDATE pgcdc.checkpoint SET source_moves = $2::jsonb WHERE pipeline = $1", 2, params);
	if (res == NULL)
		return false;
	PQclear(res);
	free(moves_saved);
	moves_saved = strdup_or_null(moves_json);
	return true;
}

/*
 * The stream has passed the rename m follows: every change made under the
 * old name is applied.  Rename the map (and its rules, quarantined events
 * and target comments) with pgcdc.rename_source_table; the caller starts
 * over.  Without the privileges that takes, say what to run.
 */
bool
target_follow_rename(PGconn *conn, const Pipeline *p, const TableMap *m)
{
	const char *params[3] = {p->name, m->map_table, m->source_table};
	const char *cp[2] = {p->name, NULL};
	PGresult   *res;

	/* the map names the table now: forget how it got there, in the same transaction */
	for (int r = nrenames - 1; r >= 0; r--)
		if (strcmp(renames[r].table, m->source_table) == 0 || strcmp(renames[r].from, m->map_table) == 0)
			remove_rename(r);
	serialize();
	cp[1] = moves_json;
	res = exec_cmd(conn, "BEGIN") ? exec_ok(conn, "SELECT pgcdc.rename_source_table($1, $2, $3)", 3, params) : NULL;
	if (res != NULL)
	{
		PQclear(res);
		res = exec_ok(conn, "UPDATE pgcdc.checkpoint SET source_moves = $2::jsonb WHERE pipeline = $1", 2, cp);
	}
	if (res != NULL)
	{
		PQclear(res);
		res = exec_ok(conn, "COMMIT", 0, NULL);
	}
	if (res == NULL)
	{
		char	   *lp = PQescapeLiteral(conn, p->name, strlen(p->name));
		char	   *lf = PQescapeLiteral(conn, m->map_table, strlen(m->map_table));
		char	   *lt = PQescapeLiteral(conn, m->source_table, strlen(m->source_table));

		if (PQtransactionStatus(conn) != PQTRANS_IDLE)
			PQclear(PQexec(conn, "ROLLBACK"));

		log_msg(LOG_ERROR, "could not rename the maps of source table %s of pipeline \"%s\" to %s",
				m->map_table, p->name, m->source_table);
		log_hint("Its changes are applied up to and past its rename. As the owner of pgcdc.table_map, run "
				 "SELECT pgcdc.rename_source_table(%s, %s, %s); and start pgcdc_consumer again.",
				 lp ? lp : "?", lf ? lf : "?", lt ? lt : "?");
		PQfreemem(lp);
		PQfreemem(lf);
		PQfreemem(lt);
		return false;
	}
	PQclear(res);
	free(moves_saved);
	moves_saved = strdup_or_null(moves_json);
	log_msg(LOG_INFO, "the stream has passed the rename of source table %s: pipeline \"%s\" now maps %s",
			m->map_table, p->name, m->source_table);
	return true;
}
