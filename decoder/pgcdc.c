/*
 * pgcdc.c
 *		The pgcdc logical decoding output plugin: one JSON change event per
 *		message, in commit order, totally ordered by (commit_lsn, seq).
 *
 * Every event is written straight into the walsender's output buffer and
 * sent before the next change is looked at; nothing is kept per
 * transaction but a few counters, so memory stays flat however large the
 * transaction is.  Per-change allocations go into a private context that
 * is reset after every callback.
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/htup_details.h"
#include "access/xact.h"
#include "common/base64.h"
#include "mb/pg_wchar.h"
#include "replication/logical.h"
#include "replication/origin.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pgcdc_compat.h"
#include "json_writer.h"
#include "options.h"
#include "relcache.h"

PG_MODULE_MAGIC;

extern void _PG_output_plugin_init(OutputPluginCallbacks *cb);

typedef struct PgcdcData
{
	MemoryContext context;		/* reset after every callback */
	PgcdcOptions opts;
	int			guc_nestlevel;	/* > 0: pinned settings to restore */

	/* the transaction being decoded */
	bool		begin_sent;
	bool		packed;			/* ctx->out holds events not yet written */
	uint64		seq;			/* events emitted so far */
	StringInfoData xact_ids;	/* "xid":N,"commit_lsn":"X/X" */
	StringInfoData xact_ts;		/* "ts":"..." */
} PgcdcData;

/*
 * Output functions must not depend on the session: pin the settings they
 * read.  Values round-trip through jsonb_populate_record in any session.
 */
static const char *const pinned_settings[][2] = {
	{"DateStyle", "ISO, YMD"},
	{"IntervalStyle", "postgres"},
	{"TimeZone", "UTC"},
	{"extra_float_digits", "1"},
	{"bytea_output", "hex"},
	{"lc_monetary", "C"},
	/* type names (include-types, regtype values) and regclass values */
	{"search_path", "pg_catalog"},
};

/*
 * In a walsender the settings just become the session's.  Through the SQL
 * functions (pg_logical_slot_get_changes) decoding runs inside the caller's
 * transaction: save them in a GUC nest level and restore at shutdown (an
 * error restores them through transaction abort).
 */
static void
pin_output_settings(PgcdcData *data)
{
	GucAction	action = GUC_ACTION_SET;
	int			i;

	if (IsTransactionState())
	{
		data->guc_nestlevel = NewGUCNestLevel();
		action = GUC_ACTION_SAVE;
	}
	for (i = 0; i < lengthof(pinned_settings); i++)
		(void) set_config_option(pinned_settings[i][0], pinned_settings[i][1],
								 PGC_USERSET, PGC_S_SESSION, action,
								 true, ERROR, false);
}

static void
pgcdc_startup(LogicalDecodingContext *ctx, OutputPluginOptions *opt, bool is_init)
{
	PgcdcData  *data = palloc0(sizeof(PgcdcData));

	data->context = AllocSetContextCreate(ctx->context, "pgcdc change context",
										  ALLOCSET_DEFAULT_SIZES);
	initStringInfo(&data->xact_ids);
	initStringInfo(&data->xact_ts);
	ctx->output_plugin_private = data;
	opt->output_type = OUTPUT_PLUGIN_TEXTUAL_OUTPUT;
	opt->receive_rewrites = false;

	pgcdc_parse_options(&data->opts, ctx->output_plugin_options);
	if (is_init)
		return;					/* creating the slot: nothing is decoded */

	json_writer_init();
	pgcdc_relcache_init(&data->opts);
	pin_output_settings(data);
}

static void
pgcdc_shutdown(LogicalDecodingContext *ctx)
{
	PgcdcData  *data = ctx->output_plugin_private;

	pgcdc_relcache_shutdown();
	if (data->guc_nestlevel > 0)
		AtEOXact_GUC(true, data->guc_nestlevel);
	MemoryContextDelete(data->context);
}

static bool
pgcdc_filter_by_origin(LogicalDecodingContext *ctx, RepOriginId origin_id)
{
	PgcdcData  *data = ctx->output_plugin_private;

	return data->opts.origin_none && origin_id != InvalidRepOriginId;
}

/*
 * Every event starts a write, or with pack-bytes joins the events already
 * in ctx->out on a new line: one write per event costs the walsender a
 * send() per change, most of its time on small rows.
 */
static void
prepare_event(LogicalDecodingContext *ctx, PgcdcData *data)
{
	if (data->packed)
		appendStringInfoCharMacro(ctx->out, '\n');
	else
		OutputPluginPrepareWrite(ctx, true);
}

/*
 * Write out the events in ctx->out, unless packing and there is room for
 * more; a transaction's last event always goes out, so nothing waits for
 * the next transaction and the buffer never outgrows pack-bytes plus one
 * event.
 */
static void
end_event(LogicalDecodingContext *ctx, PgcdcData *data, bool last)
{
	data->packed = !last && ctx->out->len < data->opts.pack_bytes;
	if (!data->packed)
		OutputPluginWrite(ctx, true);
}

/* {"op":"X", then the transaction's ids */
static void
start_event(LogicalDecodingContext *ctx, PgcdcData *data, char op)
{
	char		head[9] = "{\"op\":\"X\"";

	head[7] = op;
	prepare_event(ctx, data);
	json_append_bytes(ctx->out, head, 9);
	appendStringInfoCharMacro(ctx->out, ',');
	json_append_bytes(ctx->out, data->xact_ids.data, data->xact_ids.len);
}

static void
write_begin(LogicalDecodingContext *ctx, PgcdcData *data)
{
	start_event(ctx, data, 'B');
	appendStringInfoCharMacro(ctx->out, ',');
	json_append_bytes(ctx->out, data->xact_ts.data, data->xact_ts.len);
	appendStringInfoCharMacro(ctx->out, '}');
	end_event(ctx, data, false);
	data->begin_sent = true;
}

static void
pgcdc_begin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
	PgcdcData  *data = ctx->output_plugin_private;

	/* The reorder buffer knows the commit before it replays a transaction. */
	resetStringInfo(&data->xact_ids);
	appendStringInfo(&data->xact_ids, "\"xid\":%u,\"commit_lsn\":", PGCDC_TOPLEVEL_XID(txn));
	json_append_lsn(&data->xact_ids, txn->final_lsn);
	resetStringInfo(&data->xact_ts);
	appendStringInfoString(&data->xact_ts, "\"ts\":");
	json_append_commit_time(&data->xact_ts, PGCDC_TXN_COMMIT_TIME(txn));
	data->seq = 0;
	data->begin_sent = false;

	if (data->opts.include_transaction && !data->opts.skip_empty_xacts)
		write_begin(ctx, data);
}

static void
pgcdc_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr commit_lsn)
{
	PgcdcData  *data = ctx->output_plugin_private;

	/* without include-transaction the packed changes end here, else with C */
	if (data->packed && !data->begin_sent)
		end_event(ctx, data, true);

	/* Lets the walsender confirm positions of skipped transactions too. */
	OutputPluginUpdateProgress(ctx, !data->begin_sent);

	if (!data->begin_sent)
		return;
	start_event(ctx, data, 'C');
	appendStringInfoCharMacro(ctx->out, ',');
	json_append_bytes(ctx->out, data->xact_ts.data, data->xact_ts.len);
	json_append_literal(ctx->out, ",\"end_lsn\":");
	json_append_lsn(ctx->out, txn->end_lsn);
	json_append_literal(ctx->out, ",\"changes\":");
	json_append_uint64(ctx->out, data->seq);
	appendStringInfoCharMacro(ctx->out, '}');
	end_event(ctx, data, true);
}

/* The part every in-transaction change event shares, up to "ts". */
static void
start_change_event(LogicalDecodingContext *ctx, PgcdcData *data, char op, XLogRecPtr lsn)
{
	if (data->opts.include_transaction && !data->begin_sent)
		write_begin(ctx, data);
	start_event(ctx, data, op);
	json_append_literal(ctx->out, ",\"seq\":");
	json_append_uint64(ctx->out, ++data->seq);
	json_append_literal(ctx->out, ",\"lsn\":");
	json_append_lsn(ctx->out, lsn);
	appendStringInfoCharMacro(ctx->out, ',');
	json_append_bytes(ctx->out, data->xact_ts.data, data->xact_ts.len);
}

static inline bool
is_unchanged_toast(PgcdcColumn *col, Datum value, bool isnull)
{
	return col->varlena && !isnull &&
		VARATT_IS_EXTERNAL_ONDISK(DatumGetPointer(value));
}

static inline void
write_column(StringInfo out, PgcdcColumn *col, Datum value, bool isnull, bool nas)
{
	json_append_bytes(out, col->json_name, col->json_name_len);
	if (isnull)
		json_append_bytes(out, "null", 4);
	else
		json_append_value(out, value, col->kind, &col->output, nas);
}

/*
 * Append ,"name":{...} with every column of a deformed tuple.  Unchanged
 * TOAST values are never written (they are listed in unchanged_toast).
 */
static void
write_row(StringInfo out, const char *name, PgcdcRelEntry *entry,
		  Datum *values, bool *nulls, bool nas)
{
	bool		first = true;
	int			i;

	appendStringInfoString(out, name);
	appendStringInfoCharMacro(out, '{');
	for (i = 0; i < entry->natts; i++)
	{
		PgcdcColumn *col = &entry->cols[i];

		if (col->json_name == NULL || is_unchanged_toast(col, values[i], nulls[i]))
			continue;
		if (!first)
			appendStringInfoCharMacro(out, ',');
		first = false;
		write_column(out, col, values[i], nulls[i], nas);
	}
	appendStringInfoCharMacro(out, '}');
}

/* Append ,"name":{...} with the key columns, in index order. */
static void
write_key(StringInfo out, const char *name, PgcdcRelEntry *entry,
		  Datum *values, bool *nulls, bool nas)
{
	int			i;

	appendStringInfoString(out, name);
	appendStringInfoCharMacro(out, '{');
	for (i = 0; i < entry->nkeys; i++)
	{
		int			k = entry->keys[i];

		if (i > 0)
			appendStringInfoCharMacro(out, ',');
		write_column(out, &entry->cols[k], values[k], nulls[k], nas);
	}
	appendStringInfoCharMacro(out, '}');
}

/*
 * Whether an update changed its key.  PostgreSQL logs the old key of an
 * update also when the key did not change but is stored out of line: then
 * the new row has it as unchanged TOAST, or equal.
 */
static bool
key_changed(PgcdcRelEntry *entry, TupleDesc desc)
{
	int			i;

	for (i = 0; i < entry->nkeys; i++)
	{
		int			k = entry->keys[i];
		Form_pg_attribute att = TupleDescAttr(desc, k);
		Datum		o = entry->old_values[k];
		Datum		n = entry->new_values[k];

		if (entry->old_nulls[k] != entry->new_nulls[k])
			return true;
		if (entry->new_nulls[k] || is_unchanged_toast(&entry->cols[k], n, false))
			continue;
		if (att->attlen == -1)
		{
			struct varlena *ov = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(o));
			struct varlena *nv = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(n));

			if (VARSIZE_ANY_EXHDR(ov) != VARSIZE_ANY_EXHDR(nv) ||
				memcmp(VARDATA_ANY(ov), VARDATA_ANY(nv), VARSIZE_ANY_EXHDR(ov)) != 0)
				return true;
		}
		else if (!datumIsEqual(o, n, att->attbyval, att->attlen))
			return true;
	}
	return false;
}

static void
write_unchanged_toast(StringInfo out, PgcdcRelEntry *entry, Datum *values, bool *nulls)
{
	bool		first = true;
	int			i;

	for (i = 0; i < entry->natts; i++)
	{
		PgcdcColumn *col = &entry->cols[i];

		if (col->json_name == NULL || !is_unchanged_toast(col, values[i], nulls[i]))
			continue;
		appendStringInfoString(out, first ? ",\"unchanged_toast\":[" : ",");
		first = false;
		/* json_name is "name": without the colon it is the JSON string */
		json_append_bytes(out, col->json_name, col->json_name_len - 1);
	}
	if (!first)
		appendStringInfoCharMacro(out, ']');
}

static void
pgcdc_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			 Relation relation, ReorderBufferChange *change)
{
	PgcdcData  *data = ctx->output_plugin_private;
	bool		nas = data->opts.numeric_as_string;
	PgcdcRelEntry *entry;
	TupleDesc	desc = RelationGetDescr(relation);
	HeapTuple	newtuple = PGCDC_CHANGE_NEWTUPLE(change);
	HeapTuple	oldtuple = PGCDC_CHANGE_OLDTUPLE(change);
	uint8		action;
	char		op;
	MemoryContext oldcxt;
	StringInfo	out;

	switch (change->action)
	{
		case REORDER_BUFFER_CHANGE_INSERT:
			action = PGCDC_ACTION_INSERT;
			op = 'I';
			break;
		case REORDER_BUFFER_CHANGE_UPDATE:
			action = PGCDC_ACTION_UPDATE;
			op = 'U';
			break;
		case REORDER_BUFFER_CHANGE_DELETE:
			action = PGCDC_ACTION_DELETE;
			op = 'D';
			break;
		default:
			return;
	}

	oldcxt = MemoryContextSwitchTo(data->context);
	entry = pgcdc_relcache_get(relation);
	if ((entry->actions & action) == 0)
	{
		MemoryContextSwitchTo(oldcxt);
		MemoryContextReset(data->context);
		return;
	}

	start_change_event(ctx, data, op, change->lsn);
	out = ctx->out;
	appendStringInfoCharMacro(out, ',');
	json_append_bytes(out, entry->header, entry->header_len);

	if (newtuple != NULL)
		heap_deform_tuple(newtuple, desc, entry->new_values, entry->new_nulls);
	if (oldtuple != NULL)
		heap_deform_tuple(oldtuple, desc, entry->old_values, entry->old_nulls);

	/* key: the old key when the change logged one, else from the new row */
	if (entry->nkeys == 0 || (oldtuple == NULL && newtuple == NULL))
		json_append_literal(out, ",\"key\":null");
	else if (oldtuple != NULL)
		write_key(out, ",\"key\":", entry, entry->old_values, entry->old_nulls, nas);
	else
		write_key(out, ",\"key\":", entry, entry->new_values, entry->new_nulls, nas);

	if (newtuple != NULL)
		write_row(out, ",\"new\":", entry, entry->new_values, entry->new_nulls, nas);

	/* old: the full row with FULL, else the old key of a key change */
	if (oldtuple != NULL)
	{
		if (entry->replident == REPLICA_IDENTITY_FULL)
			write_row(out, ",\"old\":", entry, entry->old_values, entry->old_nulls, nas);
		else if (change->action == REORDER_BUFFER_CHANGE_UPDATE &&
				 (newtuple == NULL || key_changed(entry, desc)))
			write_key(out, ",\"old\":", entry, entry->old_values, entry->old_nulls, nas);
	}

	if (change->action == REORDER_BUFFER_CHANGE_UPDATE && newtuple != NULL)
		write_unchanged_toast(out, entry, entry->new_values, entry->new_nulls);

	if (entry->types != NULL)
		json_append_bytes(out, entry->types, entry->types_len);
	appendStringInfoCharMacro(out, '}');
	end_event(ctx, data, false);

	MemoryContextSwitchTo(oldcxt);
	MemoryContextReset(data->context);
}

static void
pgcdc_truncate(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			   int nrelations, Relation relations[], ReorderBufferChange *change)
{
	PgcdcData  *data = ctx->output_plugin_private;
	MemoryContext oldcxt = MemoryContextSwitchTo(data->context);
	int			i;

	for (i = 0; i < nrelations; i++)
	{
		PgcdcRelEntry *entry = pgcdc_relcache_get(relations[i]);

		if ((entry->actions & PGCDC_ACTION_TRUNCATE) == 0)
			continue;
		start_change_event(ctx, data, 'T', change->lsn);
		appendStringInfoCharMacro(ctx->out, ',');
		json_append_bytes(ctx->out, entry->header, entry->header_len);
		appendStringInfoString(ctx->out, change->data.truncate.cascade ?
							   ",\"cascade\":true" : ",\"cascade\":false");
		appendStringInfoString(ctx->out, change->data.truncate.restart_seqs ?
							   ",\"restart_identity\":true}" : ",\"restart_identity\":false}");
		end_event(ctx, data, false);
	}

	MemoryContextSwitchTo(oldcxt);
	MemoryContextReset(data->context);
}

static bool
prefix_wanted(PgcdcData *data, const char *prefix)
{
	ListCell   *lc;

	if (!data->opts.have_message_prefixes)
		return true;
	foreach(lc, data->opts.message_prefixes)
	{
		if (strcmp(prefix, lfirst(lc)) == 0)
			return true;
	}
	return false;
}

static void
pgcdc_message(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			  XLogRecPtr lsn, bool transactional, const char *prefix,
			  Size sz, const char *message)
{
	PgcdcData  *data = ctx->output_plugin_private;
	MemoryContext oldcxt;
	StringInfo	out;

	if (!data->opts.messages || !prefix_wanted(data, prefix))
		return;

	oldcxt = MemoryContextSwitchTo(data->context);
	if (transactional)
		start_change_event(ctx, data, 'M', lsn);
	else
	{
		/* Not part of a transaction: no xid, commit, seq or commit time. */
		prepare_event(ctx, data);
		json_append_literal(ctx->out, "{\"op\":\"M\",\"xid\":null,\"lsn\":");
		json_append_lsn(ctx->out, lsn);
		json_append_literal(ctx->out, ",\"ts\":null");
	}
	out = ctx->out;
	appendStringInfoString(out, transactional ? ",\"transactional\":true" :
						   ",\"transactional\":false");
	json_append_literal(out, ",\"prefix\":");
	json_append_cstring(out, prefix);

	/* Text in the database encoding goes out as a string, else base64. */
	if (memchr(message, '\0', sz) == NULL && pg_verifymbstr(message, sz, true))
	{
		json_append_literal(out, ",\"content\":");
		json_append_string(out, message, sz);
	}
	else
	{
		int			enclen = pg_b64_enc_len(sz);
		char	   *enc = palloc(enclen + 1);
		int			n = pg_b64_encode(message, sz, enc, enclen);

		json_append_literal(out, ",\"content_base64\":\"");
		json_append_bytes(out, enc, n);
		appendStringInfoCharMacro(out, '"');
	}
	appendStringInfoCharMacro(out, '}');
	end_event(ctx, data, !transactional);

	MemoryContextSwitchTo(oldcxt);
	MemoryContextReset(data->context);
}

void
_PG_output_plugin_init(OutputPluginCallbacks *cb)
{
	AssertVariableIsOfType(&_PG_output_plugin_init, LogicalOutputPluginInit);

	cb->startup_cb = pgcdc_startup;
	cb->begin_cb = pgcdc_begin;
	cb->change_cb = pgcdc_change;
	cb->truncate_cb = pgcdc_truncate;
	cb->commit_cb = pgcdc_commit;
	cb->message_cb = pgcdc_message;
	cb->filter_by_origin_cb = pgcdc_filter_by_origin;
	cb->shutdown_cb = pgcdc_shutdown;
}
