/*
 * options.h
 *		The pgcdc output plugin's options, parsed once at startup.
 */
#ifndef PGCDC_OPTIONS_H
#define PGCDC_OPTIONS_H

#include "postgres.h"
#include "nodes/pg_list.h"

/* Bits of PgcdcOptions.actions and of per-relation action masks. */
#define PGCDC_ACTION_INSERT		0x01
#define PGCDC_ACTION_UPDATE		0x02
#define PGCDC_ACTION_DELETE		0x04
#define PGCDC_ACTION_TRUNCATE	0x08
#define PGCDC_ACTION_ALL		0x0F

/* pack-bytes bounds the walsender's write buffer: memory stays flat */
#define PGCDC_MAX_PACK_BYTES	(1024 * 1024)

/* One schema.table pattern; '*' is the wildcard, '\' escapes in both parts. */
typedef struct PgcdcPattern
{
	char	   *schema;
	char	   *table;
} PgcdcPattern;

typedef struct PgcdcOptions
{
	bool		include_transaction;
	bool		skip_empty_xacts;
	bool		messages;
	bool		include_types;
	bool		numeric_as_string;
	int			pack_bytes;		/* > 0: events share a write up to this size */
	bool		origin_none;	/* skip changes that carry a replication origin */
	uint8		actions;		/* PGCDC_ACTION_* */
	List	   *tables;			/* PgcdcPattern *; NIL means all tables */
	List	   *exclude_tables; /* PgcdcPattern * */
	List	   *publications;	/* char * names; NIL means no publication filter */
	List	   *message_prefixes;	/* char *; NIL means every prefix */
	bool		have_message_prefixes;
} PgcdcOptions;

extern void pgcdc_parse_options(PgcdcOptions *opts, List *options);
extern bool pgcdc_pattern_list_match(List *patterns, const char *schema,
									 const char *table);

#endif							/* PGCDC_OPTIONS_H */
