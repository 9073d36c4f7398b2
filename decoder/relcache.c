/*
 * relcache.c
 *		The pgcdc output plugin's per-relation cache.
 *
 * Like pgoutput's RelationSyncCache: a hash keyed by relid, entries marked
 * invalid by relcache and publication syscache callbacks and rebuilt on next
 * use.  The hash lives under CacheMemoryContext, so a callback can never see
 * freed memory even after a decoding session ended in an error; the next
 * session's startup throws the old one away (its filters may differ).
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/partition.h"
#include "catalog/pg_index.h"
#include "catalog/pg_publication.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "pgcdc_compat.h"
#include "relcache.h"

static HTAB *RelCache = NULL;
static MemoryContext RelCacheCxt = NULL;
static const PgcdcOptions *cache_opts = NULL;
static bool callbacks_registered = false;

static void
invalidate_all(void)
{
	HASH_SEQ_STATUS status;
	PgcdcRelEntry *entry;

	hash_seq_init(&status, RelCache);
	while ((entry = hash_seq_search(&status)) != NULL)
		entry->valid = false;
}

static void
relcache_callback(Datum arg, Oid relid)
{
	if (RelCache == NULL)
		return;
	if (!OidIsValid(relid))
		invalidate_all();
	else
	{
		PgcdcRelEntry *entry = hash_search(RelCache, &relid, HASH_FIND, NULL);

		if (entry != NULL)
			entry->valid = false;
	}
}

/* Publication membership or actions changed: recompute every entry. */
static void
publication_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	if (RelCache != NULL)
		invalidate_all();
}

/*
 * A schema or type renamed: entries hold the schema name (header, tables
 * filter) and type names (include-types), and no relcache invalidation
 * comes for the tables in that schema or with that type.
 */
static void
names_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	if (RelCache != NULL)
		invalidate_all();
}

void
pgcdc_relcache_init(const PgcdcOptions *opts)
{
	HASHCTL		ctl;

	if (RelCacheCxt != NULL)
		MemoryContextDelete(RelCacheCxt);
	RelCache = NULL;
	RelCacheCxt = AllocSetContextCreate(CacheMemoryContext, "pgcdc relation cache",
										ALLOCSET_DEFAULT_SIZES);
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(PgcdcRelEntry);
	ctl.hcxt = RelCacheCxt;
	RelCache = hash_create("pgcdc relation cache", 128, &ctl,
						   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	cache_opts = opts;

	/* Callbacks cannot be unregistered: register once per backend. */
	if (!callbacks_registered)
	{
		CacheRegisterRelcacheCallback(relcache_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(PUBLICATIONOID, publication_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(PUBLICATIONRELMAP, publication_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(NAMESPACEOID, names_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(TYPEOID, names_callback, (Datum) 0);
#ifdef PGCDC_HAVE_SCHEMA_PUBLICATIONS
		CacheRegisterSyscacheCallback(PUBLICATIONNAMESPACEMAP, publication_callback, (Datum) 0);
#endif
		callbacks_registered = true;
	}
}

void
pgcdc_relcache_shutdown(void)
{
	if (RelCacheCxt != NULL)
		MemoryContextDelete(RelCacheCxt);
	RelCacheCxt = NULL;
	RelCache = NULL;
	cache_opts = NULL;
}

/* Union of the publish actions of our publications that contain rel. */
static uint8
publication_actions(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	List	   *relpubs = GetRelationPublications(relid);
	List	   *schemapubs = NIL;
	uint8		result = 0;
	ListCell   *lc;

#ifdef PGCDC_HAVE_SCHEMA_PUBLICATIONS
	schemapubs = GetSchemaPublications(RelationGetNamespace(rel));
#endif
	/* A partition is published when an ancestor is, as in pgoutput. */
	if (rel->rd_rel->relispartition)
	{
		foreach(lc, get_partition_ancestors(relid))
		{
			Oid			anc = lfirst_oid(lc);

			relpubs = list_concat(relpubs, GetRelationPublications(anc));
#ifdef PGCDC_HAVE_SCHEMA_PUBLICATIONS
			schemapubs = list_concat(schemapubs,
									 GetSchemaPublications(get_rel_namespace(anc)));
#endif
		}
	}

	foreach(lc, cache_opts->publications)
	{
		const char *name = lfirst(lc);
		Publication *pub = GetPublicationByName(name, true);

		if (pub == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("publication \"%s\" does not exist", name),
					 errdetail("The pgcdc option \"publications\" names it."),
					 errhint("Create the publication, or remove it from the option.")));
		if (!pub->alltables &&
			!list_member_oid(relpubs, pub->oid) &&
			!list_member_oid(schemapubs, pub->oid))
			continue;
		if (pub->pubactions.pubinsert)
			result |= PGCDC_ACTION_INSERT;
		if (pub->pubactions.pubupdate)
			result |= PGCDC_ACTION_UPDATE;
		if (pub->pubactions.pubdelete)
			result |= PGCDC_ACTION_DELETE;
		if (pub->pubactions.pubtruncate)
			result |= PGCDC_ACTION_TRUNCATE;
	}
	return result;
}

static uint8
relation_actions(Relation rel, const char *nspname, const char *relname)
{
	uint8		actions = cache_opts->actions;

	if (cache_opts->tables != NIL &&
		!pgcdc_pattern_list_match(cache_opts->tables, nspname, relname))
		return 0;
	if (pgcdc_pattern_list_match(cache_opts->exclude_tables, nspname, relname))
		return 0;
	if (cache_opts->publications != NIL && actions != 0)
		actions &= publication_actions(rel);
	return actions;
}

/*
 * The key columns: those of the replica identity index (DEFAULT: the
 * primary key; USING INDEX: that index).  FULL uses the primary key when
 * there is one and the whole row otherwise; NOTHING has no key.  Index
 * columns come from the syscache, without locking the index, as
 * RelationGetIdentityKeyBitmap does, since a walsender must not take locks
 * that can deadlock with a TRUNCATE being decoded.
 */
static void
set_key_columns(PgcdcRelEntry *entry, Relation rel)
{
	Oid			indexoid = InvalidOid;
	int			i;

	entry->nkeys = 0;
	entry->keys = palloc(sizeof(int) * Max(entry->natts, 1));
	if (entry->replident == REPLICA_IDENTITY_NOTHING)
		return;
	if (entry->replident == REPLICA_IDENTITY_INDEX)
		indexoid = RelationGetReplicaIndex(rel);
	else
	{
		list_free(RelationGetIndexList(rel));	/* sets rd_pkindex */
		indexoid = rel->rd_pkindex;
	}

	if (OidIsValid(indexoid))
	{
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(indexoid));
		Form_pg_index idx;

		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for index %u", indexoid);
		idx = (Form_pg_index) GETSTRUCT(tup);
		for (i = 0; i < idx->indnkeyatts; i++)
		{
			AttrNumber	attnum = idx->indkey.values[i];

			if (attnum > 0 && attnum <= entry->natts)
				entry->keys[entry->nkeys++] = attnum - 1;
		}
		ReleaseSysCache(tup);
	}
	else if (entry->replident == REPLICA_IDENTITY_FULL)
	{
		for (i = 0; i < entry->natts; i++)
		{
			if (entry->cols[i].json_name != NULL)
				entry->keys[entry->nkeys++] = i;
		}
	}
}

static char *
json_fragment(StringInfo buf, int *len)
{
	*len = buf->len;
	return buf->data;
}

static void
build_entry(PgcdcRelEntry *entry, Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	MemoryContext oldcxt;
	StringInfoData buf;
	char	   *nspname;
	int			i;
	bool		first = true;

	/* Valid from now on: an invalidation arriving during the build wins. */
	entry->valid = true;
	if (entry->cxt != NULL)
		MemoryContextReset(entry->cxt);
	else
		entry->cxt = AllocSetContextCreate(RelCacheCxt, "pgcdc relation",
										   ALLOCSET_SMALL_SIZES);
	oldcxt = MemoryContextSwitchTo(entry->cxt);

	nspname = get_namespace_name(RelationGetNamespace(rel));
	entry->actions = relation_actions(rel, nspname, RelationGetRelationName(rel));

	initStringInfo(&buf);
	appendStringInfoString(&buf, "\"schema\":");
	json_append_cstring(&buf, nspname);
	appendStringInfoString(&buf, ",\"table\":");
	json_append_cstring(&buf, RelationGetRelationName(rel));
	entry->header = json_fragment(&buf, &entry->header_len);

	entry->natts = desc->natts;
	entry->cols = palloc0(sizeof(PgcdcColumn) * Max(desc->natts, 1));
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		PgcdcColumn *col = &entry->cols[i];

		if (att->attisdropped)
			continue;
		initStringInfo(&buf);
		json_append_cstring(&buf, NameStr(att->attname));
		appendStringInfoCharMacro(&buf, ':');
		col->json_name = json_fragment(&buf, &col->json_name_len);
		col->kind = json_value_kind(att->atttypid);
		col->varlena = (att->attlen == -1);
		if (json_kind_needs_output(col->kind))
		{
			Oid			outfunc;
			bool		isvarlena;

			getTypeOutputInfo(att->atttypid, &outfunc, &isvarlena);
			fmgr_info_cxt(outfunc, &col->output, entry->cxt);
		}
	}

	entry->replident = rel->rd_rel->relreplident;
	set_key_columns(entry, rel);

	entry->types = NULL;
	entry->types_len = 0;
	if (cache_opts->include_types)
	{
		initStringInfo(&buf);
		appendStringInfoString(&buf, ",\"types\":{");
		for (i = 0; i < desc->natts; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);

			if (att->attisdropped)
				continue;
			if (!first)
				appendStringInfoCharMacro(&buf, ',');
			first = false;
			appendBinaryStringInfo(&buf, entry->cols[i].json_name,
								   entry->cols[i].json_name_len);
			json_append_cstring(&buf, format_type_with_typemod(att->atttypid,
															   att->atttypmod));
		}
		appendStringInfoCharMacro(&buf, '}');
		entry->types = json_fragment(&buf, &entry->types_len);
	}

	entry->new_values = palloc(sizeof(Datum) * Max(desc->natts, 1));
	entry->new_nulls = palloc(sizeof(bool) * Max(desc->natts, 1));
	entry->old_values = palloc(sizeof(Datum) * Max(desc->natts, 1));
	entry->old_nulls = palloc(sizeof(bool) * Max(desc->natts, 1));

	MemoryContextSwitchTo(oldcxt);
}

PgcdcRelEntry *
pgcdc_relcache_get(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	bool		found;
	PgcdcRelEntry *entry;

	entry = hash_search(RelCache, &relid, HASH_ENTER, &found);
	if (!found)
	{
		entry->valid = false;
		entry->cxt = NULL;
	}
	if (!entry->valid)
		build_entry(entry, rel);
	return entry;
}
