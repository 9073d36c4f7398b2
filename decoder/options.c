/*
 * options.c
 *		Parsing and checking the pgcdc output plugin's options.
 *
 * One loop over the DefElems, as test_decoding and pgoutput do: every
 * option is known, given at most once and has a valid value, or the
 * decoding session fails before it emits anything.
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "nodes/makefuncs.h"
#include "utils/builtins.h"
#include "utils/varlena.h"

#include "options.h"

typedef enum PgcdcOptionId
{
	OPT_FORMAT_VERSION,
	OPT_INCLUDE_TRANSACTION,
	OPT_SKIP_EMPTY_XACTS,
	OPT_TABLES,
	OPT_EXCLUDE_TABLES,
	OPT_PUBLICATIONS,
	OPT_ACTIONS,
	OPT_ORIGIN,
	OPT_MESSAGES,
	OPT_MESSAGE_PREFIXES,
	OPT_INCLUDE_TYPES,
	OPT_NUMERIC_AS_STRING,
	OPT_PACK_BYTES,
	NUM_OPTIONS
} PgcdcOptionId;

static const char *const option_names[NUM_OPTIONS] = {
	[OPT_FORMAT_VERSION] = "format-version",
	[OPT_INCLUDE_TRANSACTION] = "include-transaction",
	[OPT_SKIP_EMPTY_XACTS] = "skip-empty-xacts",
	[OPT_TABLES] = "tables",
	[OPT_EXCLUDE_TABLES] = "exclude-tables",
	[OPT_PUBLICATIONS] = "publications",
	[OPT_ACTIONS] = "actions",
	[OPT_ORIGIN] = "origin",
	[OPT_MESSAGES] = "messages",
	[OPT_MESSAGE_PREFIXES] = "message-prefixes",
	[OPT_INCLUDE_TYPES] = "include-types",
	[OPT_NUMERIC_AS_STRING] = "numeric-as-string",
	[OPT_PACK_BYTES] = "pack-bytes",
};

#define PATTERN_HINT \
	"Write schema.table, with * as a wildcard and a backslash before a literal dot, comma, asterisk or backslash."

static PgcdcOptionId
lookup_option(const char *name)
{
	int			i;

	for (i = 0; i < NUM_OPTIONS; i++)
	{
		if (strcmp(name, option_names[i]) == 0)
			return (PgcdcOptionId) i;
	}
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unrecognized pgcdc option \"%s\"", name),
			 errhint("Valid options are format-version, include-transaction, skip-empty-xacts, tables, exclude-tables, publications, actions, origin, messages, message-prefixes, include-types, numeric-as-string and pack-bytes.")));
	pg_unreachable();
}

static bool
option_bool(const char *name, const char *value)
{
	bool		result;

	/* "-o skip-empty-xacts" without a value means true, as in test_decoding */
	if (value == NULL)
		return true;
	if (!parse_bool(value, &result))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for pgcdc option \"%s\": \"%s\"", name, value),
				 errhint("Use true or false.")));
	return result;
}

/* pack-bytes: a size in bytes, 0 (one event per write) up to 1 MB */
static int
option_pack_bytes(const char *name, const char *value)
{
	char	   *end;
	long		n;

	errno = 0;
	n = strtol(value, &end, 10);
	if (errno != 0 || end == value || *end != '\0' || n < 0 || n > PGCDC_MAX_PACK_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for pgcdc option \"%s\": \"%s\"", name, value),
				 errhint("Use a number of bytes from 0 to %d.", PGCDC_MAX_PACK_BYTES)));
	return (int) n;
}

static const char *
option_required(const char *name, const char *value)
{
	if (value == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("pgcdc option \"%s\" requires a value", name)));
	return value;
}

static void
bad_pattern(const char *optname, const char *item, int itemlen, const char *why)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid table pattern \"%.*s\" in pgcdc option \"%s\"",
					itemlen, item, optname),
			 errdetail("%s", why),
			 errhint(PATTERN_HINT)));
}

/*
 * Split a comma-separated schema.table pattern list.  Escaped '*' and '\'
 * stay escaped in the stored pattern (the matcher needs to tell them from
 * the wildcard); other escaped characters are stored as themselves.
 * Unescaped blanks around a pattern are ignored.
 */
static List *
parse_pattern_list(const char *optname, const char *value)
{
	List	   *result = NIL;
	const char *p = value;

	for (;;)
	{
		const char *item = p;
		StringInfoData part[2];
		int			keep[2] = {0, 0};	/* length without trailing blanks */
		int			cur = 0;
		PgcdcPattern *pat;

		initStringInfo(&part[0]);
		initStringInfo(&part[1]);
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '\0' || *p == ',')
			bad_pattern(optname, item, p - item, "The pattern is empty.");
		while (*p != '\0' && *p != ',')
		{
			if (*p == '\\')
			{
				p++;
				if (*p == '\0')
					bad_pattern(optname, item, p - item, "The pattern ends with a backslash.");
				if (*p == '*' || *p == '\\')
					appendStringInfoChar(&part[cur], '\\');
				appendStringInfoChar(&part[cur], *p++);
				keep[cur] = part[cur].len;
			}
			else if (*p == '.')
			{
				if (cur == 1)
					bad_pattern(optname, item, strcspn(item, ","),
								"The pattern has more than one unescaped dot.");
				cur = 1;
				p++;
				while (*p == ' ' || *p == '\t')
					p++;
			}
			else
			{
				appendStringInfoChar(&part[cur], *p);
				if (*p != ' ' && *p != '\t')
					keep[cur] = part[cur].len;
				p++;
			}
		}
		if (cur == 0)
			bad_pattern(optname, item, p - item,
						"The pattern has no dot between schema and table.");
		if (keep[0] == 0 || keep[1] == 0)
			bad_pattern(optname, item, p - item,
						"The schema and the table part must not be empty.");
		pat = palloc(sizeof(PgcdcPattern));
		pat->schema = pnstrdup(part[0].data, keep[0]);
		pat->table = pnstrdup(part[1].data, keep[1]);
		result = lappend(result, pat);
		if (*p == '\0')
			break;
		p++;					/* skip the comma */
	}
	return result;
}

/*
 * Split a comma-separated list where '\' escapes a comma, backslash or
 * blank; unescaped blanks around an item are dropped, as in "tables".
 */
static List *
parse_escaped_list(const char *optname, const char *value)
{
	List	   *result = NIL;
	StringInfoData item;
	int			keep = 0;		/* item's length without trailing blanks */
	const char *p;

	if (value[strspn(value, " \t")] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("pgcdc option \"%s\" must name at least one item", optname)));
	initStringInfo(&item);
	for (p = value;; p++)
	{
		if (*p == '\\')
		{
			p++;
			if (*p == '\0')
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid value for pgcdc option \"%s\": \"%s\"", optname, value),
						 errdetail("The value ends with a backslash.")));
			appendStringInfoChar(&item, *p);
			keep = item.len;
		}
		else if (*p == ',' || *p == '\0')
		{
			result = lappend(result, pnstrdup(item.data, keep));
			resetStringInfo(&item);
			keep = 0;
			if (*p == '\0')
				break;
		}
		else if ((*p == ' ' || *p == '\t') && item.len == 0)
			continue;
		else
		{
			appendStringInfoChar(&item, *p);
			if (*p != ' ' && *p != '\t')
				keep = item.len;
		}
	}
	return result;
}

static uint8
parse_actions(const char *value)
{
	uint8		actions = 0;
	char	   *raw = pstrdup(value);
	List	   *names;
	ListCell   *lc;

	if (!SplitIdentifierString(raw, ',', &names))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for pgcdc option \"actions\": \"%s\"", value),
				 errhint("Valid actions are insert, update, delete and truncate.")));
	if (names == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("pgcdc option \"actions\" must name at least one action"),
				 errhint("Valid actions are insert, update, delete and truncate.")));
	foreach(lc, names)
	{
		const char *a = lfirst(lc);

		if (strcmp(a, "insert") == 0)
			actions |= PGCDC_ACTION_INSERT;
		else if (strcmp(a, "update") == 0)
			actions |= PGCDC_ACTION_UPDATE;
		else if (strcmp(a, "delete") == 0)
			actions |= PGCDC_ACTION_DELETE;
		else if (strcmp(a, "truncate") == 0)
			actions |= PGCDC_ACTION_TRUNCATE;
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unrecognized action \"%s\" in pgcdc option \"actions\"", a),
					 errhint("Valid actions are insert, update, delete and truncate.")));
	}
	return actions;
}

static List *
parse_publications(const char *value)
{
	char	   *raw = pstrdup(value);
	List	   *names;

	/* SQL identifier syntax, like pgoutput's publication_names */
	if (!SplitIdentifierString(raw, ',', &names))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("invalid publication list in pgcdc option \"publications\": \"%s\"", value),
				 errhint("Separate publication names with commas; double-quote names that need it.")));
	if (names == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("pgcdc option \"publications\" must name at least one publication")));
	return names;
}

void
pgcdc_parse_options(PgcdcOptions *opts, List *options)
{
	bool		seen[NUM_OPTIONS] = {0};
	ListCell   *lc;

	opts->include_transaction = true;
	opts->skip_empty_xacts = true;
	opts->messages = true;
	opts->include_types = false;
	opts->numeric_as_string = false;
	opts->pack_bytes = 0;
	opts->origin_none = false;
	opts->actions = PGCDC_ACTION_ALL;
	opts->tables = NIL;
	opts->exclude_tables = NIL;
	opts->publications = NIL;
	opts->message_prefixes = NIL;
	opts->have_message_prefixes = false;

	foreach(lc, options)
	{
		DefElem    *elem = lfirst(lc);
		const char *name = elem->defname;
		const char *value = elem->arg ? strVal(elem->arg) : NULL;
		PgcdcOptionId id = lookup_option(name);

		if (seen[id])
			ereport(ERROR,
					(errcode(ERRCODE_SYNTAX_ERROR),
					 errmsg("pgcdc option \"%s\" specified more than once", name)));
		seen[id] = true;

		switch (id)
		{
			case OPT_FORMAT_VERSION:
				if (strcmp(option_required(name, value), "1") != 0)
					ereport(ERROR,
							(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
							 errmsg("unsupported value for pgcdc option \"format-version\": \"%s\"", value),
							 errhint("The only format version is 1.")));
				break;
			case OPT_INCLUDE_TRANSACTION:
				opts->include_transaction = option_bool(name, value);
				break;
			case OPT_SKIP_EMPTY_XACTS:
				opts->skip_empty_xacts = option_bool(name, value);
				break;
			case OPT_TABLES:
				opts->tables = parse_pattern_list(name, option_required(name, value));
				break;
			case OPT_EXCLUDE_TABLES:
				opts->exclude_tables = parse_pattern_list(name, option_required(name, value));
				break;
			case OPT_PUBLICATIONS:
				opts->publications = parse_publications(option_required(name, value));
				break;
			case OPT_ACTIONS:
				opts->actions = parse_actions(option_required(name, value));
				break;
			case OPT_ORIGIN:
				option_required(name, value);
				if (pg_strcasecmp(value, "none") == 0)
					opts->origin_none = true;
				else if (pg_strcasecmp(value, "any") == 0)
					opts->origin_none = false;
				else
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("invalid value for pgcdc option \"origin\": \"%s\"", value),
							 errhint("Use any or none.")));
				break;
			case OPT_MESSAGES:
				opts->messages = option_bool(name, value);
				break;
			case OPT_MESSAGE_PREFIXES:
				opts->message_prefixes = parse_escaped_list(name, option_required(name, value));
				opts->have_message_prefixes = true;
				break;
			case OPT_INCLUDE_TYPES:
				opts->include_types = option_bool(name, value);
				break;
			case OPT_NUMERIC_AS_STRING:
				opts->numeric_as_string = option_bool(name, value);
				break;
			case OPT_PACK_BYTES:
				opts->pack_bytes = option_pack_bytes(name, option_required(name, value));
				break;
			case NUM_OPTIONS:
				pg_unreachable();
		}
	}
}

/* Glob match: '*' matches any run of bytes, "\x" matches x literally. */
static bool
glob_match(const char *pat, const char *str)
{
	const char *star_pat = NULL;
	const char *star_str = NULL;

	for (;;)
	{
		const char *lit;
		int			adv;

		if (*pat == '*')
		{
			star_pat = ++pat;
			star_str = str;
			continue;
		}
		if (*str == '\0')
			return *pat == '\0';
		lit = pat;
		adv = 1;
		if (*pat == '\\')
		{
			lit = pat + 1;
			adv = 2;
		}
		if (*pat != '\0' && *lit == *str)
		{
			pat += adv;
			str++;
			continue;
		}
		if (star_pat == NULL)
			return false;
		pat = star_pat;
		str = ++star_str;
	}
}

bool
pgcdc_pattern_list_match(List *patterns, const char *schema, const char *table)
{
	ListCell   *lc;

	foreach(lc, patterns)
	{
		PgcdcPattern *p = lfirst(lc);

		if (glob_match(p->schema, schema) && glob_match(p->table, table))
			return true;
	}
	return false;
}
