/*
 * scd2_writer.c
 *		The history writer of scd2_apply_changes for plain batches.
 *
 * _scd2_fast_sql decides what a plain batch does to a history in one SQL
 * statement; its windows and the tuplestores between them cost more than the
 * writes.  This decides the same key by key in C and writes the versions
 * through the executor's simple-relation routines, as the logical
 * replication apply worker does (constraints, index entries, unique checks,
 * replica identity).  A prepared query (_scd2_changes_sql) gives the
 * changes, cast to the target's types; this hashes them, groups them by key
 * (a hash table on the key types' hash and equality functions), puts each
 * key's in sequence order and finds its latest version through the
 * (key, _valid_from) index, hashing a current one as pgcdc._hash_expr does.
 *
 * The rules are _scd2_fast_sql's, restated per key (its comment explains
 * them): the changes' times, collapse, kinds, runs, the current version's
 * update or delete, then the new versions.  Where this and the statement
 * could differ it stays out: on a table with triggers, rules, row security,
 * generated columns or columns that are neither data nor SCD2 columns,
 * without the (key, _valid_from) index, with a key type that cannot be
 * hashed, or without SELECT, INSERT, UPDATE and DELETE for the caller, it
 * returns an empty array and the statement runs.  NULL, as from _scd2_fast:
 * a change is late or a replay, a key's clock went backwards or two of its
 * changes share a position; nothing was written, and the staged path takes
 * the batch (and raises the error of the last case).
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/nbtree.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_am.h"
#include "catalog/pg_type.h"
#include "commands/prepare.h"
#include "common/hashfn.h"
#include "commands/trigger.h"
#include "common/cryptohash.h"
#include "common/sha2.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "libpq/pqformat.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

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

/* The read query's own columns, after the data columns, and their types. */
enum
{
	R_OP, R_SEQ, R_VF, R_LSN, R_LSEQ, R_H, NREAD
};
static const char *const col_names[NREAD] = {
	"pgcdc_op", "pgcdc_seq", "pgcdc_vf", "pgcdc_lsn", "pgcdc_lseq", "pgcdc_h"
};
static const Oid col_types[NREAD] = {
	TEXTOID, NUMERICARRAYOID, TIMESTAMPTZOID, PG_LSNOID, INT4OID, BYTEAOID
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
static const Oid sys_types[NSYS] = {
	TIMESTAMPTZOID, TIMESTAMPTZOID, BOOLOID, BOOLOID, INT4OID, BYTEAOID,
	PG_LSNOID, INT4OID, NUMERICARRAYOID, NUMERICARRAYOID, TIMESTAMPTZOID
};

/* A row of the read query, deformed once. */
typedef struct Row
{
	Datum	   *v;
	bool	   *n;
	int64		kno;			/* its key's number, from 1 */
	char		op;				/* I, U or D; '?' for anything else */
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
	Datum		hash;			/* of the tracked columns: current versions only */
	bool		hash_null;
	Datum		last;			/* _last_sequence */
	bool		last_null;
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

	/* the key: columns, their hashing and equality, the (key, _valid_from) index */
	int			nkeys;
	int		   *key_in;			/* key column i is data column key_in[i] */
	AttrNumber *key_att;
	FmgrInfo   *key_hash;
	FmgrInfo   *key_eq;
	Oid		   *key_coll;
	ScanKeyData *sk;
	IndexScanDesc scan;

	/* the tracked columns, hashed as pgcdc._hash_expr does */
	int			ntrk;
	AttrNumber *trk_att;
	TupleDesc	trk_desc;
	int		   *trk_in;			/* tracked column t is data column trk_in[t] */
	int		   *trk_slot;		/* ... and the history's column trk_slot[t] (0-based) */
	FmgrInfo   *trk_send;		/* their send functions */
	pg_cryptohash_ctx *sha;
	StringInfoData image;		/* the record_send image being hashed */
	MemoryContext hash_cxt;

	int64		counts[4];		/* inserted, updated, deleted, change rows */
} Writer;

static Datum
get(Writer *w, Row *r, int c, bool *isnull)
{
	*isnull = r->n[w->col[c] - 1];
	return r->v[w->col[c] - 1];
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
 * The read query's rows, received straight into Rows: a tuple table would
 * form each row as a tuple only for this to deform it again (with the page
 * faults of growing it, about a twentieth of a batch's time).  Values are
 * copied, as the executor reuses its slot's memory, into blocks carved up
 * here rather than by one palloc each.
 */
typedef struct RowReceiver
{
	DestReceiver pub;
	TupleDesc	expect;			/* the columns the writer was set up for */
	bool		started;
	bool		same;			/* the query gave those columns */
	MemoryContext cxt;
	Row		   *rows;
	uint64		nrows;
	uint64		cap;
	char	   *free;			/* the current block's unused part */
	Size		left;
} RowReceiver;

#define ROW_BLOCK	(64 * 1024)

static void *
rows_alloc(RowReceiver *r, Size size)
{
	void	   *p;

	size = MAXALIGN(size);
	if (size > r->left)
	{
		Size		block = Max(size, ROW_BLOCK);

		r->free = MemoryContextAlloc(r->cxt, block);
		r->left = block;
	}
	p = r->free;
	r->free += size;
	r->left -= size;
	return p;
}

static void
rows_startup(DestReceiver *self, int operation, TupleDesc desc)
{
	RowReceiver *r = (RowReceiver *) self;

	r->started = true;
	r->same = equalTupleDescs(r->expect, desc);
}

static bool
rows_receive(TupleTableSlot *slot, DestReceiver *self)
{
	RowReceiver *r = (RowReceiver *) self;
	TupleDesc	desc = slot->tts_tupleDescriptor;
	Row		   *row;
	int			i;

	if (!r->same)
		return true;			/* the caller falls back to the statement */
	slot_getallattrs(slot);
	if (r->nrows == r->cap)
	{
		r->cap *= 2;
		r->rows = repalloc_huge(r->rows, sizeof(Row) * r->cap);
	}
	row = &r->rows[r->nrows++];
	row->v = rows_alloc(r, sizeof(Datum) * desc->natts);
	row->n = rows_alloc(r, sizeof(bool) * desc->natts);
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(desc, i);
		Datum		d = slot->tts_values[i];

		row->n[i] = slot->tts_isnull[i];
		if (row->n[i] || a->attbyval)
			row->v[i] = d;
		else if (a->attlen == -1 && VARATT_IS_EXTERNAL(DatumGetPointer(d)))
		{
			/* a TOAST pointer or an expanded object: as datumCopy keeps them */
			MemoryContext old = MemoryContextSwitchTo(r->cxt);

			row->v[i] = datumCopy(d, false, -1);
			MemoryContextSwitchTo(old);
		}
		else
		{
			Size		len = datumGetSize(d, false, a->attlen);
			void	   *p = rows_alloc(r, len);

			memcpy(p, DatumGetPointer(d), len);
			row->v[i] = PointerGetDatum(p);
		}
	}
	return true;
}

static void
rows_shutdown(DestReceiver *self)
{
}

static void
rows_destroy(DestReceiver *self)
{
}

/*
 * May this write the history as the statement would?  Anything that makes a
 * plain INSERT or UPDATE do more than store the row (triggers, rules, row
 * security, generated or defaulted columns) or refuse it (privileges) is
 * left to the statement.  The read query's columns must have the types the
 * history's have (anyone may call _scd2_write with a statement of their
 * own: a value of another type must never be stored).
 */
static bool
writable(Relation rel, TupleDesc in, int ndata, const int *col)
{
	Oid			relid = RelationGetRelid(rel);
	TupleDesc	desc = RelationGetDescr(rel);
	int			known = 0;
	int			i;

	for (i = 0; i < NREAD; i++)
		if (TupleDescAttr(in, col[i] - 1)->atttypid != col_types[i])
			return false;

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
			if (strcmp(NameStr(TupleDescAttr(in, j)->attname), name) == 0)
			{
				if (TupleDescAttr(in, j)->atttypid != a->atttypid)
					return false;
				found = true;
			}
		for (j = 0; j < NSYS && !found; j++)
			if (strcmp(sys_names[j], name) == 0)
			{
				if (a->atttypid != sys_types[j])
					return false;
				found = true;
			}
		if (!found)
			return false;
		known++;
	}
	return known == ndata + NSYS;
}

static void
writer_begin(Writer *w, Relation rel)
{
	RangeTblEntry *rte = makeNode(RangeTblEntry);
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
	w->estate->es_snapshot = GetActiveSnapshot();
	ExecOpenIndices(w->rri, false);
	EvalPlanQualInit(&w->epq, w->estate, NULL, NIL, -1);
	w->old = table_slot_create(rel, &w->estate->es_tupleTable);
	w->new = ExecInitExtraTupleSlot(w->estate, RelationGetDescr(rel), &TTSOpsVirtual);

	w->data_att = palloc(sizeof(AttrNumber) * w->ndata);
	for (i = 0; i < w->ndata; i++)
		w->data_att[i] = get_attnum(RelationGetRelid(rel),
									NameStr(TupleDescAttr(w->in, i)->attname));
	for (i = 0; i < NSYS; i++)
		w->sys[i] = get_attnum(RelationGetRelid(rel), sys_names[i]);
}

static void
writer_end(Writer *w)
{
	if (w->scan != NULL)
		index_endscan(w->scan);
	if (w->hash_cxt != NULL)
		MemoryContextDelete(w->hash_cxt);
	if (w->sha != NULL)
		pg_cryptohash_free(w->sha);
	EvalPlanQualEnd(&w->epq);
	ExecCloseIndices(w->rri);
	ExecResetTupleTable(w->estate->es_tupleTable, false);
	FreeExecutorState(w->estate);
}

/* Data column by name, or -1. */
static int
data_column(Writer *w, const char *name)
{
	int			i;

	for (i = 0; i < w->ndata; i++)
		if (strcmp(NameStr(TupleDescAttr(w->in, i)->attname), name) == 0)
			return i;
	return -1;
}

/*
 * Set up the key (hashing, equality, the index that finds a key's latest
 * version) and the tracked columns (track, or every data column but the
 * key's).  False if the target has no plain btree index on (key columns,
 * _valid_from) or a key type cannot be hashed: the statement does without.
 */
static bool
prepare_keys(Writer *w, List *keys, List *track)
{
	Relation	idx = NULL;
	ListCell   *lc;
	int			i;
	int			j;

	w->nkeys = list_length(keys);
	w->key_in = palloc(sizeof(int) * w->nkeys);
	w->key_att = palloc(sizeof(AttrNumber) * w->nkeys);
	w->key_hash = palloc(sizeof(FmgrInfo) * w->nkeys);
	w->key_eq = palloc(sizeof(FmgrInfo) * w->nkeys);
	w->key_coll = palloc(sizeof(Oid) * w->nkeys);
	w->sk = palloc(sizeof(ScanKeyData) * w->nkeys);
	w->data_key = palloc0(sizeof(bool) * w->ndata);
	i = 0;
	foreach(lc, keys)
	{
		w->key_in[i] = data_column(w, lfirst(lc));
		if (w->key_in[i] < 0)
			return false;
		w->key_att[i] = w->data_att[w->key_in[i]];
		w->data_key[w->key_in[i]] = true;
		i++;
	}

	for (j = 0; j < w->rri->ri_NumIndices && idx == NULL; j++)
	{
		Relation	r = w->rri->ri_IndexRelationDescs[j];
		IndexInfo  *info = w->rri->ri_IndexRelationInfo[j];
		bool		ok = r->rd_rel->relam == BTREE_AM_OID && r->rd_index->indisvalid &&
			info->ii_NumIndexKeyAttrs == w->nkeys + 1 && info->ii_Predicate == NIL &&
			info->ii_Expressions == NIL &&
			info->ii_IndexAttrNumbers[w->nkeys] == w->sys[S_VALID_FROM] &&
			(r->rd_indoption[w->nkeys] & INDOPTION_DESC) == 0;

		for (i = 0; i < w->nkeys && ok; i++)
			ok = info->ii_IndexAttrNumbers[i] == w->key_att[i];
		if (ok)
			idx = r;
	}
	if (idx == NULL)
		return false;

	for (i = 0; i < w->nkeys; i++)
	{
		Oid			type = TupleDescAttr(w->in, w->key_in[i])->atttypid;
		TypeCacheEntry *tc = lookup_type_cache(type, TYPECACHE_HASH_PROC_FINFO |
											   TYPECACHE_EQ_OPR_FINFO);
		Oid			eq = get_opfamily_member(idx->rd_opfamily[i], idx->rd_opcintype[i],
											 idx->rd_opcintype[i], BTEqualStrategyNumber);

		if (!OidIsValid(tc->hash_proc) || !OidIsValid(tc->eq_opr) || !OidIsValid(eq))
			return false;
		fmgr_info_copy(&w->key_hash[i], &tc->hash_proc_finfo, CurrentMemoryContext);
		fmgr_info_copy(&w->key_eq[i], &tc->eq_opr_finfo, CurrentMemoryContext);
		w->key_coll[i] = idx->rd_indcollation[i];
		ScanKeyEntryInitialize(&w->sk[i], 0, i + 1, BTEqualStrategyNumber,
							   idx->rd_opcintype[i], idx->rd_indcollation[i],
							   get_opcode(eq), (Datum) 0);
	}
	w->scan = index_beginscan(w->rel, idx, GetActiveSnapshot(), w->nkeys, 0);

	/* pgcdc._tracked: track_columns as given, else the data columns but the key */
	w->ntrk = 0;
	w->trk_att = palloc(sizeof(AttrNumber) * Max(w->ndata + list_length(track), 1));
	if (track != NIL)
	{
		foreach(lc, track)
		{
			AttrNumber	a = get_attnum(RelationGetRelid(w->rel), lfirst(lc));

			if (a == InvalidAttrNumber)
				return false;
			w->trk_att[w->ntrk++] = a;
		}
	}
	else
		for (i = 0; i < w->ndata; i++)
			if (!w->data_key[i])
				w->trk_att[w->ntrk++] = w->data_att[i];
	/* as ROW(...)::record, or ROW(NULL::integer) for no column */
	w->trk_desc = CreateTemplateTupleDesc(Max(w->ntrk, 1));
	if (w->ntrk == 0)
		TupleDescInitEntry(w->trk_desc, 1, NULL, INT4OID, -1, 0);
	for (i = 0; i < w->ntrk; i++)
	{
		Form_pg_attribute a = TupleDescAttr(RelationGetDescr(w->rel), w->trk_att[i] - 1);

		TupleDescInitEntry(w->trk_desc, i + 1, NULL, a->atttypid, a->atttypmod, 0);
	}
	w->trk_desc = BlessTupleDesc(w->trk_desc);
	w->trk_in = palloc(sizeof(int) * Max(w->ntrk, 1));
	w->trk_slot = palloc(sizeof(int) * Max(w->ntrk, 1));
	w->trk_send = palloc(sizeof(FmgrInfo) * Max(w->ntrk, 1));
	for (i = 0; i < w->ntrk; i++)
	{
		Oid			send;
		bool		varlena;

		for (j = 0; j < w->ndata && w->data_att[j] != w->trk_att[i]; j++)
			;
		if (j == w->ndata)
			return false;
		w->trk_in[i] = j;
		w->trk_slot[i] = w->trk_att[i] - 1;
		getTypeBinaryOutputInfo(TupleDescAttr(w->trk_desc, i)->atttypid, &send, &varlena);
		fmgr_info(send, &w->trk_send[i]);
	}
	w->sha = pg_cryptohash_create(PG_SHA256);
	initStringInfo(&w->image);
	w->hash_cxt = AllocSetContextCreate(CurrentMemoryContext, "pgcdc scd2 version hash",
										ALLOCSET_SMALL_SIZES);
	return true;
}

/*
 * sha256(record_send(ROW(tracked columns)::record)), as pgcdc._hash_expr
 * computes it (tracked column t is v[at[t]], n[at[t]]), without forming the
 * row: the image record_send makes (the column count, then each column's
 * type, and its send function's output with its length, or -1 for NULL),
 * hashed by a context kept for the batch.  The send functions allocate: in a context
 * of their own, emptied after each hash.  The read query used to compute
 * this; here it costs about half as much.
 */
static Datum
tracked_hash(Writer *w, const Datum *v, const bool *n, const int *at)
{
	MemoryContext old = MemoryContextSwitchTo(w->hash_cxt);
	int			ncols = Max(w->ntrk, 1);	/* none: ROW(NULL::integer) */
	bytea	   *h;
	int			i;

	resetStringInfo(&w->image);
	pq_sendint32(&w->image, ncols);
	for (i = 0; i < ncols; i++)
	{
		bytea	   *out;

		pq_sendint32(&w->image, TupleDescAttr(w->trk_desc, i)->atttypid);
		if (w->ntrk == 0 || n[at[i]])
		{
			pq_sendint32(&w->image, -1);
			continue;
		}
		out = SendFunctionCall(&w->trk_send[i], v[at[i]]);
		pq_sendint32(&w->image, VARSIZE(out) - VARHDRSZ);
		pq_sendbytes(&w->image, VARDATA(out), VARSIZE(out) - VARHDRSZ);
	}
	MemoryContextSwitchTo(old);
	h = palloc(VARHDRSZ + PG_SHA256_DIGEST_LENGTH);
	SET_VARSIZE(h, VARHDRSZ + PG_SHA256_DIGEST_LENGTH);
	if (pg_cryptohash_init(w->sha) < 0 ||
		pg_cryptohash_update(w->sha, (uint8 *) w->image.data, w->image.len) < 0 ||
		pg_cryptohash_final(w->sha, (uint8 *) VARDATA(h), PG_SHA256_DIGEST_LENGTH) < 0)
		elog(ERROR, "could not compute %s hash: %s", "SHA256", pg_cryptohash_error(w->sha));
	MemoryContextReset(w->hash_cxt);
	return PointerGetDatum(h);
}

/* The hash of a stored version. */
static Datum
version_hash(Writer *w, TupleTableSlot *slot)
{
	return tracked_hash(w, slot->tts_values, slot->tts_isnull, w->trk_slot);
}

/* The hash of a change row that is no delete, into its pgcdc_h. */
static void
change_hash(Writer *w, Row *r)
{
	r->v[w->col[R_H] - 1] = tracked_hash(w, r->v, r->n, w->trk_in);
	r->n[w->col[R_H] - 1] = false;
}

/* The key's latest version (by _valid_from) before the batch, if any. */
static void
find_latest(Writer *w, Row *r, bool has_iu, Latest *l)
{
	TupleTableSlot *s = w->old;
	int			i;

	for (i = 0; i < w->nkeys; i++)
		w->sk[i].sk_argument = r->v[w->key_in[i]];
	index_rescan(w->scan, w->sk, w->nkeys, NULL, 0);
	l->exists = index_getnext_slot(w->scan, BackwardScanDirection, s);
	if (!l->exists)
		return;
	slot_getallattrs(s);
	l->tid = s->tts_tid;
	l->version = DatumGetInt32(s->tts_values[w->sys[S_VERSION] - 1]);
	l->from = DatumGetTimestampTz(s->tts_values[w->sys[S_VALID_FROM] - 1]);
	l->to = DatumGetTimestampTz(s->tts_values[w->sys[S_VALID_TO] - 1]);
	l->cur = DatumGetBool(s->tts_values[w->sys[S_IS_CURRENT] - 1]);
	l->del = DatumGetBool(s->tts_values[w->sys[S_IS_DELETED] - 1]);
	l->last_null = s->tts_isnull[w->sys[S_LAST_SEQUENCE] - 1];
	l->last = l->last_null ? (Datum) 0
		: PointerGetDatum(PG_DETOAST_DATUM_COPY(s->tts_values[w->sys[S_LAST_SEQUENCE] - 1]));
	/* only an insert or update compares with the current version */
	l->hash_null = !(l->cur && has_iu);
	l->hash = l->hash_null ? (Datum) 0 : version_hash(w, s);
	ExecClearTuple(s);
}

/* Group rows by key: a key's hash and equality, as GROUP BY has them. */
static uint32
key_hash(Writer *w, Row *r)
{
	uint32		h = 0;
	int			i;

	for (i = 0; i < w->nkeys; i++)
		h = hash_combine(h, DatumGetUInt32(FunctionCall1Coll(&w->key_hash[i], w->key_coll[i],
															 r->v[w->key_in[i]])));
	return h;
}

static bool
key_equal(Writer *w, Row *a, Row *b)
{
	int			i;

	for (i = 0; i < w->nkeys; i++)
		if (!DatumGetBool(FunctionCall2Coll(&w->key_eq[i], w->key_coll[i],
											a->v[w->key_in[i]], b->v[w->key_in[i]])))
			return false;
	return true;
}

typedef struct KeyEntry
{
	Row		   *row;			/* the key's first row */
	int64		kno;
	char		status;
} KeyEntry;

#define SH_PREFIX		keys
#define SH_ELEMENT_TYPE	KeyEntry
#define SH_KEY_TYPE		Row *
#define SH_KEY			row
#define SH_HASH_KEY(tb, key)	key_hash((Writer *) (tb)->private_data, key)
#define SH_EQUAL(tb, a, b)		key_equal((Writer *) (tb)->private_data, a, b)
#define SH_SCOPE		static inline
#define SH_DECLARE
#define SH_DEFINE
#include "lib/simplehash.h"

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
 * Read rows[0..n) (one key, in sequence order; l its latest version): false
 * if the batch must be staged (a late change or replay, two changes at one
 * position, a clock gone backwards).  Sets each change's time.
 */
static bool
read_key(Writer *w, Row **rows, int n, Change *ch, Latest *l)
{
	bool		isnull;
	Datum		d;
	TimestampTz t0 = 0;
	bool		have_t0;
	TimestampTz max = 0;
	bool		have_max;
	int			i;

	/* a change at or before what the history holds: late, or a replay */
	d = get(w, rows[0], R_SEQ, &isnull);
	if (isnull || (l->exists && !l->last_null &&
				   DatumGetInt32(FunctionCall2(&w->seq_cmp, d, l->last)) <= 0))
		return false;
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

		c->row = rows[i];
		c->op = rows[i]->op;
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

/* The non-null elements of a text[] as a List of C strings. */
static List *
text_list(ArrayType *arr)
{
	Datum	   *d;
	bool	   *nulls;
	int			n;
	int			i;
	List	   *l = NIL;

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &d, &nulls, &n);
	for (i = 0; i < n; i++)
		if (!nulls[i])
			l = lappend(l, TextDatumGetCString(d[i]));
	return l;
}

/* "a, b": the key columns as the null key error names them. */
static char *
key_names(List *keys)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	foreach(lc, keys)
		appendStringInfo(&buf, "%s%s", buf.len > 0 ? ", " : "", (char *) lfirst(lc));
	return buf.data;
}

/*
 * pgcdc._scd2_write(target regclass, changes regclass, stmt text,
 *					 key_columns text[], track_columns text[]) -> bigint[]
 *
 * Run the prepared read query stmt over changes and write target:
 * {inserted, updated, deleted, change rows}; '{}' when this may not write
 * target; NULL when the batch must be staged (nothing written).
 */
Datum
pgcdc_scd2_write(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	Oid			changes = PG_GETARG_OID(1);
	char	   *stmt = text_to_cstring(PG_GETARG_TEXT_PP(2));
	List	   *keys = text_list(PG_GETARG_ARRAYTYPE_P(3));
	List	   *track = PG_ARGISNULL(4) ? NIL : text_list(PG_GETARG_ARRAYTYPE_P(4));
	Relation	rel;
	PreparedStatement *ps;
	Writer		w = {0};
	RowReceiver recv = {0};
	SPIExecuteOptions opts = {0};
	uint64		nrows;
	uint64		nkeys = 0;
	uint64		i;
	bool		stage = false;
	bool		isnull;
	Row		   *rows;
	Row		  **ord;
	uint64	   *first;			/* the rows of key k are ord[first[k] .. first[k + 1]) */
	uint64	   *fill;
	Change	   *ch;
	Latest	   *latest;
	keys_hash  *groups;
	Datum		out[4];
	int64		k;

	/* scd2_apply_changes holds SHARE ROW EXCLUSIVE: no other writer */
	rel = table_open(relid, RowExclusiveLock);

	/*
	 * Whether this may write the target is known from the read query's
	 * columns: a target left to the statement costs no read here.
	 */
	ps = FetchPreparedStatement(stmt, true);
	if (ps->plansource->resultDesc == NULL)
		elog(ERROR, "read query of scd2_apply_changes returns no rows");
	w.in = CreateTupleDescCopy(ps->plansource->resultDesc);
	for (k = 0; k < NREAD; k++)
	{
		w.col[k] = SPI_fnumber(w.in, col_names[k]);
		if (w.col[k] <= 0)
			elog(ERROR, "read query of scd2_apply_changes has no column \"%s\"", col_names[k]);
	}
	w.ndata = w.col[R_OP] - 1;
	if (!writable(rel, w.in, w.ndata, w.col))
	{
		table_close(rel, NoLock);
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(INT8OID));
	}
	writer_begin(&w, rel);
	if (!prepare_keys(&w, keys, track))
	{
		writer_end(&w);
		table_close(rel, NoLock);
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(INT8OID));
	}

	/* the rows, in a context of their own: they can outgrow SPI's */
	recv.pub.receiveSlot = rows_receive;
	recv.pub.rStartup = rows_startup;
	recv.pub.rShutdown = rows_shutdown;
	recv.pub.rDestroy = rows_destroy;
	recv.pub.mydest = DestNone;
	recv.expect = w.in;
	recv.cxt = AllocSetContextCreate(CurrentMemoryContext, "pgcdc scd2 batch rows",
									 ALLOCSET_DEFAULT_SIZES);
	recv.cap = 1024;
	recv.rows = MemoryContextAlloc(recv.cxt, sizeof(Row) * recv.cap);
	opts.dest = &recv.pub;
	SPI_connect();
	if (SPI_execute_extended(psprintf("EXECUTE %s", quote_identifier(stmt)), &opts) < 0 ||
		!recv.started)
		elog(ERROR, "could not run the read query of scd2_apply_changes");
	rows = recv.rows;
	nrows = recv.nrows;
	/* the writes' command: after the one the read query ran in */
	w.estate->es_output_cid = GetCurrentCommandId(true);
	/* (re-planned meanwhile with other columns: the statement does it) */
	if (!recv.same)
	{
		writer_end(&w);
		SPI_finish();
		MemoryContextDelete(recv.cxt);
		table_close(rel, NoLock);
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(INT8OID));
	}

	/* Each row numbered by its key, and hashed unless a delete. */
	fmgr_info(F_BTARRAYCMP, &w.seq_cmp);
	groups = keys_create(CurrentMemoryContext, Max(nrows, 16), &w);
	for (i = 0; i < nrows; i++)
	{
		KeyEntry   *e;
		bool		found;
		int			j;
		Datum		op = get(&w, &rows[i], R_OP, &isnull);

		/* the op, read once here for every later look */
		rows[i].op = '?';
		if (!isnull && VARSIZE_ANY_EXHDR(DatumGetTextPP(op)) == 1)
			rows[i].op = *VARDATA_ANY(DatumGetTextPP(op));
		if (rows[i].op == 'D')
			rows[i].n[w.col[R_H] - 1] = true;
		else
			change_hash(&w, &rows[i]);

		/* the position is compared often: its array untoasted once, not at each compare */
		if (!rows[i].n[w.col[R_SEQ] - 1])
			rows[i].v[w.col[R_SEQ] - 1] =
				PointerGetDatum(PG_DETOAST_DATUM(rows[i].v[w.col[R_SEQ] - 1]));
		/* a null key fails the batch before anything is written, as in SQL */
		for (j = 0; j < w.nkeys; j++)
			if (rows[i].n[w.key_in[j]])
				ereport(ERROR,
						(errcode(ERRCODE_NOT_NULL_VIOLATION),
						 errmsg("null key in changes %s",
								DatumGetCString(DirectFunctionCall1(regclassout,
																	ObjectIdGetDatum(changes)))),
						 errdetail("Key columns: %s.", key_names(keys))));
		e = keys_insert(groups, &rows[i], &found);
		if (!found)
			e->kno = ++nkeys;
		rows[i].kno = e->kno;
	}

	/*
	 * In (key, sequence) order: by key number (a counting sort), then by
	 * sequence within a key (a few rows, most often one: insertion sort).
	 */
	first = palloc0(sizeof(uint64) * (nkeys + 2));
	for (i = 0; i < nrows; i++)
		first[rows[i].kno + 1]++;
	for (i = 1; i <= nkeys + 1; i++)
		first[i] += first[i - 1];
	ord = palloc(sizeof(Row *) * Max(nrows, 1));
	fill = palloc0(sizeof(uint64) * (nkeys + 1));
	for (i = 0; i < nrows; i++)
	{
		int64		kno = rows[i].kno;
		uint64		at = first[kno] + fill[kno]++;

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

	/*
	 * First every key is looked up and read (its changes' times and order
	 * into ch, its latest version into latest), then written: a batch that
	 * must be staged has written nothing.
	 */
	ch = palloc(sizeof(Change) * Max(nrows, 1));
	latest = palloc(sizeof(Latest) * (nkeys + 1));
	for (k = 1; (uint64) k <= nkeys && !stage; k++)
	{
		int			n = (int) (first[k + 1] - first[k]);
		bool		has_iu = false;
		int			j;

		for (j = 0; j < n && !has_iu; j++)
			has_iu = ord[first[k] + j]->op != 'D';
		find_latest(&w, ord[first[k]], has_iu, &latest[k]);
		stage = !read_key(&w, &ord[first[k]], n, &ch[first[k]], &latest[k]);
	}
	if (!stage)
	{
		for (k = 1; (uint64) k <= nkeys; k++)
		{
			int			n = (int) (first[k + 1] - first[k]);

			CHECK_FOR_INTERRUPTS();
			write_key(&w, &ch[first[k]], n, &latest[k]);
			ResetPerTupleExprContext(w.estate);
		}
	}
	writer_end(&w);
	SPI_finish();
	MemoryContextDelete(recv.cxt);
	table_close(rel, NoLock);
	if (stage)
		PG_RETURN_NULL();
	for (k = 0; k < 4; k++)
		out[k] = Int64GetDatum(w.counts[k]);
	PG_RETURN_ARRAYTYPE_P(construct_array(out, 4, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
										  TYPALIGN_DOUBLE));
}
