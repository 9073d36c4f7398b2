/*
 * scd2_writer.c
 *		The history writer of scd2_apply_changes for plain batches.
 *
 * _scd2_fast_sql decides what a plain batch does to a history in one SQL
 * statement; its windows and the tuplestores between them cost more than the
 * writes.  This decides the same key by key in C and writes the versions
 * through the executor's simple-relation routines, as the logical
 * replication apply worker does (constraints, index entries, unique checks,
 * replica identity).  A prepared query (_scd2_read_sql) gives each change,
 * cast to the target's types and hashed, with its key's number and that
 * key's latest version; this puts them in (key, sequence) order.
 *
 * The rules are _scd2_fast_sql's, restated per key (its comment explains
 * them): the changes' times, collapse, kinds, runs, the current version's
 * update or delete, then the new versions.  Where this and the statement
 * could differ it stays out: on a table with triggers, rules, row security,
 * generated columns or columns that are neither data nor SCD2 columns, or
 * without SELECT, INSERT, UPDATE and DELETE for the caller, it returns an
 * empty array and the statement runs.  NULL, as from _scd2_fast: a change is
 * late or a replay, a key's clock went backwards or two of its changes share
 * a position; nothing was written, and the staged path takes the batch (and
 * raises the error of the last case).
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(pgcdc_scd2_write);

/* What a change does, as _scd2_fast_sql's kind: declared so that MARKS holds. */
typedef enum Kind
{
	K_NOOP,
	K_OVERWRITE,
	K_NEW,
	K_CHANGE,
	K_CLOSE,
	K_DROP
} Kind;

#define OPENS(k)	((k) == K_NEW || (k) == K_CHANGE)	/* opens a version */
#define MARKS(k)	((k) >= K_NEW)	/* starts a run */

/* The read query's own columns, after the data columns. */
enum
{
	R_OP, R_SEQ, R_VF, R_LSN, R_LSEQ, R_H, R_KNO, R_TID, R_VERSION, R_FROM, R_TO,
	R_CUR, R_DEL, R_HASH, R_LATE, NREAD
};
static const char *const col_names[NREAD] = {
	"pgcdc_op", "pgcdc_seq", "pgcdc_vf", "pgcdc_lsn", "pgcdc_lseq", "pgcdc_h", "pgcdc_kno",
	"pgcdc_l_tid", "pgcdc_l_version", "pgcdc_l_from", "pgcdc_l_to", "pgcdc_l_cur",
	"pgcdc_l_del", "pgcdc_l_hash", "pgcdc_late"
};

/* The history's SCD2 columns this writes. */
enum
{
	S_VALID_FROM, S_VALID_TO, S_IS_CURRENT, S_IS_DELETED, S_VERSION, S_ROW_HASH,
	S_SOURCE_LSN, S_SOURCE_SEQ, S_SEQUENCE, S_LAST_SEQUENCE, S_LAST_AT, NSYS
};
static const char *const sys_names[NSYS] = {
	"_valid_from", "_valid_to", "_is_current", "_is_deleted", "_version", "_row_hash",
	"_source_lsn", "_source_seq", "_sequence", "_last_sequence", "_last_at"
};

/* A row of the read query, deformed once. */
typedef struct Row
{
	Datum	   *v;
	bool	   *n;
} Row;

/* One change of the batch, as the read query gives it, once classified. */
typedef struct Change
{
	Row		   *row;
	char		op;				/* I, U or D */
	TimestampTz t;				/* its time in the history */
	Datum		seq;
	Kind		kind;
	int			run;			/* runs so far, this one's included */
	int			open_no;		/* versions opened so far, this one's included */
	int			o;				/* the run's opening change (index), or -1 */
} Change;

/* The key's latest version in the history before the batch. */
typedef struct Latest
{
	bool		exists;
	ItemPointerData tid;
	int32		version;
	TimestampTz from;
	TimestampTz to;
	bool		cur;
	bool		del;
	Datum		hash;
	bool		hash_null;
} Latest;

typedef struct Writer
{
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	EPQState	epq;
	TupleTableSlot *old;		/* a version as stored */
	TupleTableSlot *new;		/* what is written */
	TupleDesc	in;				/* the read query's rows */
	int			ndata;			/* its data columns come first */
	AttrNumber *data_att;		/* their attribute numbers in the history */
	bool	   *data_key;		/* which of them are key columns */
	int			col[NREAD];		/* the read query's columns, 1-based */
	AttrNumber	sys[NSYS];		/* the SCD2 columns' attribute numbers */
	FmgrInfo	seq_cmp;
	int64		counts[4];		/* inserted, updated, deleted, change rows */
} Writer;

static Datum
get(Writer *w, Row *r, int c, bool *isnull)
{
	*isnull = r->n[w->col[c] - 1];
	return r->v[w->col[c] - 1];
}

static bool
get_bool(Writer *w, Row *r, int c)
{
	bool		isnull;
	Datum		d = get(w, r, c, &isnull);

	return !isnull && DatumGetBool(d);
}

static bool
bytea_same(Datum a, bool a_null, Datum b, bool b_null)
{
	bytea	   *x,
			   *y;

	if (a_null || b_null)
		return a_null && b_null;
	x = DatumGetByteaPP(a);
	y = DatumGetByteaPP(b);
	return VARSIZE_ANY_EXHDR(x) == VARSIZE_ANY_EXHDR(y) &&
		memcmp(VARDATA_ANY(x), VARDATA_ANY(y), VARSIZE_ANY_EXHDR(x)) == 0;
}

/*
 * May this write the history as the statement would?  Anything that makes a
 * plain INSERT or UPDATE do more than store the row (triggers, rules, row
 * security, generated or defaulted columns) or refuse it (privileges) is
 * left to the statement.
 */
static bool
writable(Relation rel, TupleDesc in, int ndata)
{
	Oid			relid = RelationGetRelid(rel);
	TupleDesc	desc = RelationGetDescr(rel);
	int			known = 0;
	int			i;

	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rel->relispartition ||
		rel->trigdesc != NULL || rel->rd_rules != NULL ||
		(desc->constr != NULL && desc->constr->has_generated_stored) ||
		check_enable_rls(relid, InvalidOid, true) == RLS_ENABLED)
		return false;
	if (pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) != ACLCHECK_OK ||
		pg_class_aclcheck(relid, GetUserId(), ACL_INSERT) != ACLCHECK_OK ||
		pg_class_aclcheck(relid, GetUserId(), ACL_UPDATE) != ACLCHECK_OK ||
		pg_class_aclcheck(relid, GetUserId(), ACL_DELETE) != ACLCHECK_OK)
		return false;
	/* every column is a data column or an SCD2 column: none gets a default */
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(desc, i);
		const char *name = NameStr(a->attname);
		int			j;
		bool		found = false;

		if (a->attisdropped)
			continue;
		for (j = 0; j < ndata && !found; j++)
			found = strcmp(NameStr(TupleDescAttr(in, j)->attname), name) == 0;
		for (j = 0; j < NSYS && !found; j++)
			found = strcmp(sys_names[j], name) == 0;
		if (!found)
			return false;
		known++;
	}
	return known == ndata + NSYS;
}

static void
writer_begin(Writer *w, Relation rel, List *key_columns)
{
	RangeTblEntry *rte = makeNode(RangeTblEntry);
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;

	w->rel = rel;
	w->estate = CreateExecutorState();
	rte->rtekind = RTE_RELATION;
	rte->relid = RelationGetRelid(rel);
	rte->relkind = rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	ExecInitRangeTable(w->estate, list_make1(rte));
	w->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(w->rri, rel, 1, NULL, 0);
	w->estate->es_opened_result_relations = list_make1(w->rri);
	w->estate->es_output_cid = GetCurrentCommandId(true);
	w->estate->es_snapshot = GetActiveSnapshot();
	ExecOpenIndices(w->rri, false);
	EvalPlanQualInit(&w->epq, w->estate, NULL, NIL, -1);
	w->old = table_slot_create(rel, &w->estate->es_tupleTable);
	w->new = ExecInitExtraTupleSlot(w->estate, desc, &TTSOpsVirtual);

	w->data_att = palloc(sizeof(AttrNumber) * w->ndata);
	w->data_key = palloc0(sizeof(bool) * w->ndata);
	for (i = 0; i < w->ndata; i++)
	{
		const char *name = NameStr(TupleDescAttr(w->in, i)->attname);
		ListCell   *lc;

		w->data_att[i] = get_attnum(RelationGetRelid(rel), name);
		foreach(lc, key_columns)
			if (strcmp(lfirst(lc), name) == 0)
				w->data_key[i] = true;
	}
	for (i = 0; i < NSYS; i++)
		w->sys[i] = get_attnum(RelationGetRelid(rel), sys_names[i]);
}

static void
writer_end(Writer *w)
{
	EvalPlanQualEnd(&w->epq);
	ExecCloseIndices(w->rri);
	ExecResetTupleTable(w->estate->es_tupleTable, false);
	FreeExecutorState(w->estate);
}

static void
set(Writer *w, int s, Datum value, bool isnull)
{
	w->new->tts_values[w->sys[s] - 1] = value;
	w->new->tts_isnull[w->sys[s] - 1] = isnull;
}

/* Column c of read row r into SCD2 column s of the new row. */
static void
set_from(Writer *w, int s, Row *r, int c)
{
	w->new->tts_values[w->sys[s] - 1] = r->v[w->col[c] - 1];
	w->new->tts_isnull[w->sys[s] - 1] = r->n[w->col[c] - 1];
}

/* Change c's data columns (all, or those outside the key) into the new row. */
static void
set_data(Writer *w, Change *c, bool keys_too)
{
	int			i;

	for (i = 0; i < w->ndata; i++)
		if (keys_too || !w->data_key[i])
		{
			AttrNumber	a = w->data_att[i];

			w->new->tts_values[a - 1] = c->row->v[i];
			w->new->tts_isnull[a - 1] = c->row->n[i];
		}
}

/* "_last_sequence, _last_at": up to a closing delete that follows, if one does. */
static void
set_last(Writer *w, Change *c, Change *next)
{
	if (next != NULL && next->op == 'D')
	{
		set(w, S_LAST_SEQUENCE, next->seq, false);
		set(w, S_LAST_AT, TimestampTzGetDatum(next->t), false);
	}
	else
	{
		set(w, S_LAST_SEQUENCE, c->seq, false);
		set(w, S_LAST_AT, TimestampTzGetDatum(c->t), false);
	}
}

static void
fetch_latest(Writer *w, Latest *l)
{
	if (!table_tuple_fetch_row_version(w->rel, &l->tid, SnapshotAny, w->old))
		elog(ERROR, "could not fetch the latest version of a key in \"%s\"",
			 RelationGetRelationName(w->rel));
}

/*
 * The key's current version, updated by change c (cur: 'v' its values and
 * what follows them, 'c' closed by it), as _scd2_fast_sql's pgcdc_upd.
 */
static void
update_latest(Writer *w, Latest *l, Change *c, Change *next, char cur)
{
	TupleTableSlot *n = w->new;

	fetch_latest(w, l);
	ExecClearTuple(n);
	slot_getallattrs(w->old);
	memcpy(n->tts_values, w->old->tts_values, sizeof(Datum) * n->tts_tupleDescriptor->natts);
	memcpy(n->tts_isnull, w->old->tts_isnull, sizeof(bool) * n->tts_tupleDescriptor->natts);
	if (cur == 'v')
	{
		set_data(w, c, false);
		set_from(w, S_ROW_HASH, c->row, R_H);
		set(w, S_IS_DELETED, BoolGetDatum(false), false);
		if (next != NULL && next->kind != K_DROP)
			set(w, S_VALID_TO, TimestampTzGetDatum(next->t), false);
		set(w, S_IS_CURRENT, BoolGetDatum(next == NULL), false);
		set_last(w, c, next);
	}
	else
	{
		set(w, S_VALID_TO, TimestampTzGetDatum(c->t), false);
		set(w, S_IS_CURRENT, BoolGetDatum(false), false);
		if (c->op == 'D')
		{
			set(w, S_LAST_SEQUENCE, c->seq, false);
			set(w, S_LAST_AT, TimestampTzGetDatum(c->t), false);
		}
	}
	ExecStoreVirtualTuple(n);
	ExecSimpleRelationUpdate(w->rri, w->estate, &w->epq, w->old, n);
}

/* A version from the run that ends at change c (opened by o), as pgcdc_ins. */
static void
insert_version(Writer *w, Latest *l, Change *c, Change *o, Change *next)
{
	TupleTableSlot *n = w->new;

	ExecClearTuple(n);
	memset(n->tts_isnull, true, sizeof(bool) * n->tts_tupleDescriptor->natts);
	set_data(w, c, true);
	set(w, S_VALID_FROM, TimestampTzGetDatum(o->t), false);
	set(w, S_VALID_TO, TimestampTzGetDatum(next ? next->t : DT_NOEND), false);
	set(w, S_IS_CURRENT, BoolGetDatum(next == NULL), false);
	set(w, S_IS_DELETED, BoolGetDatum(false), false);
	set(w, S_VERSION, Int32GetDatum((l->exists ? l->version : 0) + c->open_no), false);
	set_from(w, S_ROW_HASH, c->row, R_H);
	set_from(w, S_SOURCE_LSN, o->row, R_LSN);
	set_from(w, S_SOURCE_SEQ, o->row, R_LSEQ);
	set(w, S_SEQUENCE, o->seq, false);
	set_last(w, c, next);
	ExecStoreVirtualTuple(n);
	ExecSimpleRelationInsert(w->rri, w->estate, n);
}

/*
 * Read rows[0..n) (one key, in sequence order): false if the batch must be
 * staged (a late change or replay, two changes at one position, a clock gone
 * backwards).  Sets each change's time.
 */
static bool
read_key(Writer *w, Row **rows, int n, Change *ch, Latest *l)
{
	bool		isnull;
	TimestampTz t0 = 0;
	bool		have_t0;
	TimestampTz max = 0;
	bool		have_max;
	int			i;

	if (get_bool(w, rows[0], R_LATE))
		return false;
	(void) get(w, rows[0], R_TID, &isnull);
	l->exists = !isnull;
	if (l->exists)
	{
		l->tid = *(ItemPointer) DatumGetPointer(get(w, rows[0], R_TID, &isnull));
		l->version = DatumGetInt32(get(w, rows[0], R_VERSION, &isnull));
		l->from = DatumGetTimestampTz(get(w, rows[0], R_FROM, &isnull));
		l->to = DatumGetTimestampTz(get(w, rows[0], R_TO, &isnull));
		l->cur = get_bool(w, rows[0], R_CUR);
		l->del = get_bool(w, rows[0], R_DEL);
		l->hash = get(w, rows[0], R_HASH, &l->hash_null);
	}
	/* where the key's history ends: its current version's start, else its last end */
	have_t0 = l->exists;
	if (have_t0)
		t0 = l->cur ? l->from : l->to;
	have_max = have_t0;
	max = t0;
	for (i = 0; i < n; i++)
	{
		Change	   *c = &ch[i];
		TimestampTz vf;
		Datum		d;
		text	   *op;

		c->row = rows[i];
		op = DatumGetTextPP(get(w, rows[i], R_OP, &isnull));
		c->op = VARSIZE_ANY_EXHDR(op) == 1 ? *VARDATA_ANY(op) : '?';
		c->seq = get(w, rows[i], R_SEQ, &isnull);
		if (isnull)
			return false;
		d = get(w, rows[i], R_VF, &isnull);
		if (isnull)
			return false;
		vf = DatumGetTimestampTz(d);
		if (i > 0 && DatumGetInt32(FunctionCall2(&w->seq_cmp, ch[i - 1].seq, c->seq)) == 0)
			return false;
		if (n == 1)
		{
			/* one change: after the history's end, by a microsecond if need be */
			if (!have_t0 || vf >= t0)
				c->t = vf;
			else
				c->t = TIMESTAMP_NOT_FINITE(t0) ? t0 : t0 + 1;
		}
		else
		{
			/* several: each at its own time, which must not go backwards */
			if (have_max && max > vf)
				return false;
			max = vf;
			have_max = true;
			c->t = vf;
		}
	}
	return true;
}

/*
 * Classify and write one key's changes, all read by read_key: ch[0..n) are
 * collapsed in place (a change is dropped when the next one has its time).
 */
static void
write_key(Writer *w, Change *ch, int n, Latest *l)
{
	int			m = 0;
	int			run = 0;
	int			open_no = 0;
	int			o = -1;
	int			i;

	w->counts[3] += n;
	for (i = 0; i < n; i++)
		if (i == n - 1 || ch[i + 1].t > ch[i].t)
			ch[m++] = ch[i];

	for (i = 0; i < m; i++)
	{
		Change	   *c = &ch[i];
		Change	   *prev = i > 0 ? &ch[i - 1] : NULL;
		bool		first = prev == NULL;
		bool		prior_open = first ? (l->exists && l->cur && !l->del) : prev->op != 'D';
		bool		isnull;
		Datum		h = get(w, c->row, R_H, &isnull);

		if (c->op == 'D')
			c->kind = !prior_open ? K_NOOP
				: (first && l->exists && c->t == l->from) ? K_DROP : K_CLOSE;
		else if (first && l->exists && l->cur && c->t == l->from)
			c->kind = (l->del || !bytea_same(h, isnull, l->hash, l->hash_null))
				? K_OVERWRITE : K_NOOP;
		else if (!prior_open)
			c->kind = K_NEW;
		else
		{
			Datum		ph;
			bool		ph_null;

			if (first)
			{
				ph = l->hash;
				ph_null = l->hash_null;
			}
			else
				ph = get(w, prev->row, R_H, &ph_null);
			c->kind = bytea_same(h, isnull, ph, ph_null) ? K_NOOP : K_CHANGE;
		}
		if (MARKS(c->kind))
		{
			run++;
			o = i;
		}
		if (OPENS(c->kind))
			open_no++;
		c->run = run;
		c->open_no = open_no;
		c->o = o;

		if (c->kind == K_NEW || (c->kind == K_OVERWRITE && l->del))
			w->counts[0]++;
		else if (c->kind == K_CHANGE || c->kind == K_OVERWRITE)
			w->counts[1]++;
		else if (c->kind == K_CLOSE || c->kind == K_DROP)
			w->counts[2]++;
	}

	/* the current version: deleted, or updated once (its values, or its close) */
	for (i = 0; i < m; i++)
	{
		Change	   *c = &ch[i];
		Change	   *next = i + 1 < m ? &ch[i + 1] : NULL;

		if (c->kind == K_DROP)
		{
			fetch_latest(w, l);
			ExecSimpleRelationDelete(w->rri, w->estate, &w->epq, w->old);
		}
		if (!l->exists || !l->cur)
			continue;
		if (c->run == 0 && c->op != 'D' && (next == NULL || MARKS(next->kind)))
			update_latest(w, l, c, next, 'v');
		else if (c->run == 1 && (c->kind == K_NEW || c->kind == K_CHANGE || c->kind == K_CLOSE) &&
				 (i == 0 || ch[i - 1].op == 'D'))
			update_latest(w, l, c, next, 'c');
	}

	/* then the new versions: the last change of each run that opened one */
	for (i = 0; i < m; i++)
	{
		Change	   *c = &ch[i];
		Change	   *next = i + 1 < m ? &ch[i + 1] : NULL;

		if ((next == NULL || MARKS(next->kind)) && c->run > 0 && OPENS(ch[c->o].kind))
			insert_version(w, l, c, &ch[c->o], next);
	}
}

/*
 * pgcdc._scd2_write(target regclass, stmt text, key_columns text[]) -> bigint[]
 *
 * Run the prepared read query stmt and write target: {inserted, updated,
 * deleted, change rows}; '{}' when this may not write target; NULL when the
 * batch must be staged (nothing written).
 */
Datum
pgcdc_scd2_write(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *stmt = text_to_cstring(PG_GETARG_TEXT_PP(1));
	ArrayType  *keys_arr = PG_GETARG_ARRAYTYPE_P(2);
	List	   *keys = NIL;
	Datum	   *key_datums;
	bool	   *key_nulls;
	int			nkeys;
	Relation	rel;
	Writer		w = {0};
	SPITupleTable *tt;
	uint64		nrows;
	uint64		i;
	bool		stage = false;
	bool		isnull;
	Row		   *rows;
	Row		  **ord;
	uint64	   *first;			/* the rows of key k are ord[first[k] .. first[k + 1]) */
	uint64	   *fill;
	Change	   *ch;
	Datum		out[4];
	int64		k;

	deconstruct_array(keys_arr, TEXTOID, -1, false, TYPALIGN_INT, &key_datums, &key_nulls, &nkeys);
	for (k = 0; k < nkeys; k++)
		if (!key_nulls[k])
			keys = lappend(keys, TextDatumGetCString(key_datums[k]));

	/* scd2_apply_changes holds SHARE ROW EXCLUSIVE: no other writer */
	rel = table_open(relid, RowExclusiveLock);

	SPI_connect();
	if (SPI_execute(psprintf("EXECUTE %s", quote_identifier(stmt)), false, 0) < 0 ||
		SPI_tuptable == NULL)
		elog(ERROR, "could not run the read query of scd2_apply_changes");
	tt = SPI_tuptable;
	nrows = SPI_processed;
	w.in = tt->tupdesc;
	for (k = 0; k < NREAD; k++)
	{
		w.col[k] = SPI_fnumber(w.in, col_names[k]);
		if (w.col[k] <= 0)
			elog(ERROR, "read query of scd2_apply_changes has no column \"%s\"", col_names[k]);
	}
	w.ndata = w.col[R_OP] - 1;

	if (!writable(rel, w.in, w.ndata))
	{
		SPI_finish();
		table_close(rel, NoLock);
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(INT8OID));
	}

	/*
	 * Each row deformed once; in (key, sequence) order: by key number (a
	 * counting sort), then by sequence within a key (a few rows, most often
	 * one: insertion sort).
	 */
	fmgr_info(F_BTARRAYCMP, &w.seq_cmp);
	rows = palloc(sizeof(Row) * Max(nrows, 1));
	first = palloc0(sizeof(uint64) * (nrows + 2));
	for (i = 0; i < nrows; i++)
	{
		int64		kno;

		rows[i].v = palloc(sizeof(Datum) * w.in->natts);
		rows[i].n = palloc(sizeof(bool) * w.in->natts);
		heap_deform_tuple(tt->vals[i], w.in, rows[i].v, rows[i].n);
		kno = DatumGetInt64(get(&w, &rows[i], R_KNO, &isnull));
		if (isnull || kno < 1 || (uint64) kno > nrows)
			elog(ERROR, "read query of scd2_apply_changes gave key number " INT64_FORMAT, kno);
		first[kno + 1]++;
	}
	for (i = 1; i <= nrows + 1; i++)
		first[i] += first[i - 1];
	ord = palloc(sizeof(Row *) * Max(nrows, 1));
	fill = palloc0(sizeof(uint64) * (nrows + 1));
	for (i = 0; i < nrows; i++)
	{
		int64		kno = DatumGetInt64(get(&w, &rows[i], R_KNO, &isnull));
		uint64		at = first[kno] + fill[kno]++;

		/* rows of a key come in scan order: insert by sequence */
		while (at > first[kno] &&
			   DatumGetInt32(FunctionCall2(&w.seq_cmp,
										   get(&w, ord[at - 1], R_SEQ, &isnull),
										   get(&w, &rows[i], R_SEQ, &isnull))) > 0)
		{
			ord[at] = ord[at - 1];
			at--;
		}
		ord[at] = &rows[i];
	}

	/* first every key is read and checked, then written: staging writes nothing */
	ch = palloc(sizeof(Change) * Max(nrows, 1));
	for (k = 1; (uint64) k <= nrows && !stage; k++)
	{
		Latest		l;

		if (first[k + 1] > first[k])
			stage = !read_key(&w, &ord[first[k]], (int) (first[k + 1] - first[k]),
							  &ch[first[k]], &l);
	}
	if (!stage)
	{
		writer_begin(&w, rel, keys);
		for (k = 1; (uint64) k <= nrows; k++)
		{
			Latest		l;
			int			n = (int) (first[k + 1] - first[k]);

			if (n == 0)
				continue;
			CHECK_FOR_INTERRUPTS();
			(void) read_key(&w, &ord[first[k]], n, &ch[first[k]], &l);
			write_key(&w, &ch[first[k]], n, &l);
			ResetPerTupleExprContext(w.estate);
		}
		writer_end(&w);
	}
	SPI_finish();
	table_close(rel, NoLock);
	if (stage)
		PG_RETURN_NULL();
	for (k = 0; k < 4; k++)
		out[k] = Int64GetDatum(w.counts[k]);
	PG_RETURN_ARRAYTYPE_P(construct_array(out, 4, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
										  TYPALIGN_DOUBLE));
}
