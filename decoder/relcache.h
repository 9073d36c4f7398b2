/*
 * relcache.h
 *		Per-relation state of the pgcdc output plugin: what to emit for a
 *		table, and everything needed to write its rows without catalog
 *		lookups on the hot path.  Entries are rebuilt after relcache and
 *		publication invalidations, which decoding replays at the right WAL
 *		positions, so filters and column lists are those "as of the change".
 */
#ifndef PGCDC_RELCACHE_H
#define PGCDC_RELCACHE_H

#include "postgres.h"
#include "fmgr.h"
#include "utils/rel.h"

#include "json_writer.h"
#include "options.h"

typedef struct PgcdcColumn
{
	char	   *json_name;		/* "name": ready to append */
	int			json_name_len;
	PgcdcValueKind kind;
	bool		varlena;		/* typlen == -1: may be an unchanged TOAST pointer */
	FmgrInfo	output;			/* output function, for kinds that need one */
} PgcdcColumn;

typedef struct PgcdcRelEntry
{
	Oid			relid;			/* hash key */
	bool		valid;
	MemoryContext cxt;			/* everything below lives here */
	uint8		actions;		/* PGCDC_ACTION_* to emit for this relation */
	char	   *header;			/* "schema":"...","table":"..." */
	int			header_len;
	char	   *types;			/* ,"types":{...} or NULL */
	int			types_len;
	char		replident;		/* pg_class.relreplident */
	int			natts;
	PgcdcColumn *cols;			/* natts entries; json_name NULL if dropped */
	int			nkeys;			/* 0: key is null (no identity) */
	int		   *keys;			/* key columns (0-based), in index order */
	Datum	   *new_values;		/* heap_deform_tuple buffers */
	bool	   *new_nulls;
	Datum	   *old_values;
	bool	   *old_nulls;
} PgcdcRelEntry;

extern void pgcdc_relcache_init(const PgcdcOptions *opts);
extern void pgcdc_relcache_shutdown(void);
extern PgcdcRelEntry *pgcdc_relcache_get(Relation rel);

#endif							/* PGCDC_RELCACHE_H */
