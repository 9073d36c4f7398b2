/*
 * event.c
 *		The few top-level fields of a pgcdc event (SPEC section 1) that the
 *		consumer needs to route and order it: op, commit_lsn, seq, end_lsn,
 *		schema, table and a message's prefix.  Everything else stays JSON
 *		and is taken apart by the target server (jsonb_populate_record), so
 *		a full JSON parser is not needed here, only a correct skipper.
 */
#include "postgres_fe.h"

#include "consumer.h"

typedef struct Scan
{
	const char *p;
	const char *end;
} Scan;

static void
skip_ws(Scan *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

static unsigned
hex4(const char *p)
{
	unsigned	v = 0;

	for (int i = 0; i < 4; i++)
	{
		char		c = p[i];

		v = v * 16 + (c >= '0' && c <= '9' ? c - '0' :
					  c >= 'a' && c <= 'f' ? c - 'a' + 10 : c - 'A' + 10);
	}
	return v;
}

/*
 * The code point of a \u escape whose hex digits start at *p (a surrogate
 * pair taken together); *p moves past it.
 */
static bool
read_u_escape(const char **p, const char *end, unsigned *cp)
{
	if (end - *p < 4)
		return false;
	*cp = hex4(*p);
	*p += 4;
	if (*cp >= 0xD800 && *cp < 0xDC00 && end - *p >= 6 && (*p)[0] == '\\' && (*p)[1] == 'u')
	{
		*cp = 0x10000 + ((*cp - 0xD800) << 10) + (hex4(*p + 2) - 0xDC00);
		*p += 6;
	}
	return true;
}

/* A code point as UTF-8 into buf (4 bytes at most); returns its length. */
static int
utf8_encode(unsigned cp, char *buf)
{
	if (cp < 0x80)
	{
		buf[0] = (char) cp;
		return 1;
	}
	if (cp < 0x800)
	{
		buf[0] = (char) (0xC0 | (cp >> 6));
		buf[1] = (char) (0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000)
	{
		buf[0] = (char) (0xE0 | (cp >> 12));
		buf[1] = (char) (0x80 | ((cp >> 6) & 0x3F));
		buf[2] = (char) (0x80 | (cp & 0x3F));
		return 3;
	}
	buf[0] = (char) (0xF0 | (cp >> 18));
	buf[1] = (char) (0x80 | ((cp >> 12) & 0x3F));
	buf[2] = (char) (0x80 | ((cp >> 6) & 0x3F));
	buf[3] = (char) (0x80 | (cp & 0x3F));
	return 4;
}

/*
 * Parse a JSON string at s->p into out (unescaping the simple escapes), or
 * skip it when out is NULL.  Runs between escapes are found with memchr:
 * this is the consumer's hottest loop.
 */
static bool
scan_string(Scan *s, char *out, size_t outlen, size_t *used)
{
	size_t		n = 0;

	if (s->p >= s->end || *s->p != '"')
		return false;
	s->p++;
	for (;;)
	{
		const char *q = memchr(s->p, '"', s->end - s->p);
		const char *bs;
		char		c;

		if (q == NULL)
			return false;
		bs = memchr(s->p, '\\', q - s->p);
		if (out)
		{
			size_t		run = (bs ? bs : q) - s->p;

			if (run > outlen - 1 - n)
				run = n + 1 < outlen ? outlen - 1 - n : 0;
			memcpy(out + n, s->p, run);
			n += run;
		}
		if (bs == NULL)
		{
			s->p = q + 1;
			break;
		}
		s->p = bs + 1;
		if (s->p >= s->end)
			return false;
		c = *s->p++;
		switch (c)
		{
			case 'n':
				c = '\n';
				break;
			case 't':
				c = '\t';
				break;
			case 'r':
				c = '\r';
				break;
			case 'b':
				c = '\b';
				break;
			case 'f':
				c = '\f';
				break;
			case 'u':
				{
					/*
					 * Decoded to UTF-8, the client encoding of the consumer's
					 * sessions: a non-UTF-8 source escapes every non-ASCII
					 * character of names this way.
					 */
					unsigned	cp;
					char		utf8[4];
					int			k;

					if (!read_u_escape(&s->p, s->end, &cp))
						return false;
					k = utf8_encode(cp, utf8);
					if (out && n + k < outlen)
					{
						memcpy(out + n, utf8, k);
						n += k;
					}
					continue;
				}
			default:
				break;			/* \" \\ \/ */
		}
		if (out && n + 1 < outlen)
			out[n++] = c;
	}
	if (out)
		out[n] = '\0';
	if (used)
		*used = n + 1;
	return true;
}

/*
 * Characters skip_value stops at inside a container: strings and nesting.
 * Numbers, literals, separators and blanks between them pass in a tight
 * loop (the row objects are most of every event).
 */
static const bool structural[256] = {['"'] = true, ['{'] = true, ['}'] = true, ['['] = true, [']'] = true};

/* Skip any JSON value. */
static bool
skip_value(Scan *s)
{
	int			depth = 0;

	skip_ws(s);
	do
	{
		if (s->p >= s->end)
			return false;
		switch (*s->p)
		{
			case '"':
				if (!scan_string(s, NULL, 0, NULL))
					return false;
				break;
			case '{':
			case '[':
				depth++;
				s->p++;
				break;
			case '}':
			case ']':
				depth--;
				s->p++;
				break;
			default:
				/* numbers, true, false, null, and separators inside containers */
				if (depth == 0)
				{
					while (s->p < s->end && *s->p != ',' && *s->p != '}' && *s->p != ']')
						s->p++;
				}
				else
				{
					while (s->p < s->end && !structural[(unsigned char) *s->p])
						s->p++;
				}
				break;
		}
	} while (depth > 0);
	return true;
}

static long
scan_number(Scan *s)
{
	long		v = 0;

	skip_ws(s);
	while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
		v = v * 10 + (*s->p++ - '0');
	return v;
}

/*
 * Pass over a row object ({"col": value, ...}), noting its fields in *rf;
 * anything else (null) is skipped.  rf is complete if it was an object of
 * at most ROW_FIELDS_MAX fields.
 */
static bool
index_object(Scan *s, RowFields *rf)
{
	rf->obj = s->p;
	rf->n = 0;
	rf->complete = false;
	if (s->p >= s->end || *s->p != '{')
		return skip_value(s);
	s->p++;
	for (;;)
	{
		const char *name;
		uint32_t	namelen;
		const char *value;

		skip_ws(s);
		if (s->p < s->end && *s->p == '}')
		{
			s->p++;
			break;
		}
		name = s->p + 1;
		if (!scan_string(s, NULL, 0, NULL))
			return false;
		namelen = (uint32_t) (s->p - 1 - name);
		skip_ws(s);
		if (s->p >= s->end || *s->p++ != ':')
			return false;
		skip_ws(s);
		value = s->p;
		if (!skip_value(s))
			return false;
		if (rf->n < ROW_FIELDS_MAX)
		{
			rf->f[rf->n].name = name;
			rf->f[rf->n].namelen = namelen;
			rf->f[rf->n].escaped = memchr(name, '\\', namelen) != NULL;
			rf->f[rf->n].value.ptr = value;
			rf->f[rf->n].value.len = s->p - value;
		}
		rf->n++;
		skip_ws(s);
		if (s->p < s->end && *s->p == ',')
			s->p++;
	}
	rf->complete = rf->n <= ROW_FIELDS_MAX;
	return true;
}

/* The top-level keys event_parse reads (SPEC section 1); the rest are skipped. */
typedef enum EventKey
{
	EK_OTHER, EK_OP, EK_COMMIT_LSN, EK_END_LSN, EK_SEQ, EK_SCHEMA, EK_TABLE, EK_TS,
	EK_PREFIX, EK_NEW, EK_KEY, EK_OLD, EK_UNCHANGED_TOAST
} EventKey;

/* By first character, then the one name it can be: a dozen keys per event. */
static EventKey
event_key(const char *key)
{
	switch (key[0])
	{
		case 'o':
			return strcmp(key, "op") == 0 ? EK_OP : strcmp(key, "old") == 0 ? EK_OLD : EK_OTHER;
		case 'c':
			return strcmp(key, "commit_lsn") == 0 ? EK_COMMIT_LSN : EK_OTHER;
		case 'e':
			return strcmp(key, "end_lsn") == 0 ? EK_END_LSN : EK_OTHER;
		case 's':
			return strcmp(key, "seq") == 0 ? EK_SEQ : strcmp(key, "schema") == 0 ? EK_SCHEMA : EK_OTHER;
		case 't':
			return strcmp(key, "table") == 0 ? EK_TABLE : strcmp(key, "ts") == 0 ? EK_TS : EK_OTHER;
		case 'p':
			return strcmp(key, "prefix") == 0 ? EK_PREFIX : EK_OTHER;
		case 'n':
			return strcmp(key, "new") == 0 ? EK_NEW : EK_OTHER;
		case 'k':
			return strcmp(key, "key") == 0 ? EK_KEY : EK_OTHER;
		case 'u':
			return strcmp(key, "unchanged_toast") == 0 ? EK_UNCHANGED_TOAST : EK_OTHER;
	}
	return EK_OTHER;
}

bool
event_parse(const char *json, size_t len, EventInfo *ev, RowFields *fields,
			char *scratch, size_t scratchlen)
{
	Scan		s = {json, json + len};
	char		key[32];
	char		val[64];
	size_t		used = 0;
	EventKey	k;

	memset(ev, 0, sizeof(*ev));
	skip_ws(&s);
	if (s.p >= s.end || *s.p++ != '{')
		return false;
	for (;;)
	{
		skip_ws(&s);
		if (s.p < s.end && *s.p == '}')
			break;
		if (!scan_string(&s, key, sizeof(key), NULL))
			return false;
		skip_ws(&s);
		if (s.p >= s.end || *s.p++ != ':')
			return false;
		skip_ws(&s);
		k = event_key(key);
		switch (k)
		{
			case EK_OP:
				if (!scan_string(&s, val, sizeof(val), NULL))
					return false;
				ev->op = val[0];
				break;
			case EK_COMMIT_LSN:
			case EK_END_LSN:
				if (!scan_string(&s, val, sizeof(val), NULL) ||
					!parse_lsn(val, key[0] == 'c' ? &ev->commit_lsn : &ev->end_lsn))
					return false;
				break;
			case EK_SEQ:
				ev->seq = scan_number(&s);
				break;
			case EK_SCHEMA:
			case EK_TABLE:
			case EK_TS:
			case EK_PREFIX:
				if (s.p < s.end && *s.p == '"')
				{
					size_t		n;
					const char **dst = k == EK_SCHEMA ? &ev->schema : k == EK_TABLE ? &ev->table :
					k == EK_TS ? &ev->ts : &ev->prefix;

					if (used >= scratchlen || !scan_string(&s, scratch + used, scratchlen - used, &n))
						return false;
					*dst = scratch + used;
					used += n;
					break;
				}
				/* a null one is skipped as any other value */
				/* FALLTHROUGH */
			default:
				{
					/* the row objects are kept as spans for row_values */
					JsonSpan   *span = k == EK_NEW ? &ev->new_row : k == EK_KEY ? &ev->key :
					k == EK_OLD ? &ev->old : k == EK_UNCHANGED_TOAST ? &ev->unchanged_toast : NULL;
					const char *start = s.p;

					/* the row a change stages: its fields noted on the way (op comes first) */
					if (k == EK_NEW || (ev->op == 'D' && (k == EK_KEY || k == EK_OLD)))
					{
						if (!index_object(&s, fields))
							return false;
						ev->fields = fields;
					}
					else if (!skip_value(&s))
						return false;
					if (span && *start != 'n')	/* not null */
					{
						span->ptr = start;
						span->len = s.p - start;
					}
				}
				break;
		}
		skip_ws(&s);
		if (s.p < s.end && *s.p == ',')
			s.p++;
	}
	return ev->op != 0;
}

/*
 * The characters a value's text cannot hold as they are: in an array
 * literal element ("...": quote and backslash), and in a field of the
 * batch's COPY (text format, \x1f between fields: backslash, newline,
 * carriage return and the delimiter).
 */
static const bool special[256] = {['"'] = true, ['\\'] = true, ['\n'] = true, ['\r'] = true, ['\x1f'] = true};

static inline bool
special_char(char c)
{
	return special[(unsigned char) c];
}

/* One character of a value, escaped as an array literal or a COPY field needs. */
static inline void
value_char(PQExpBuffer out, char c, bool copy)
{
	if (!copy)
	{
		if (c == '"' || c == '\\')
			appendPQExpBufferChar(out, '\\');
		appendPQExpBufferChar(out, c);
	}
	else if (c == '\n')
		appendPQExpBufferStr(out, "\\n");
	else if (c == '\r')
		appendPQExpBufferStr(out, "\\r");
	else
	{
		if (c == '\\' || c == '\x1f')
			appendPQExpBufferChar(out, '\\');
		appendPQExpBufferChar(out, c);
	}
}

/*
 * Append the text of a JSON value (a string unescaped to UTF-8, anything
 * else as it is): as an element of an array literal ("...", quotes and
 * backslashes escaped) or, with copy, as a field of the batch's COPY (text
 * format, escaped; batch.c).
 */
static bool
append_value(PQExpBuffer out, const char *v, size_t len, bool raw, bool copy)
{
	const char *p = v;
	const char *end = v + len;
	bool		string = !raw && *p == '"';

	if (!copy)
		appendPQExpBufferChar(out, '"');
	if (string)
	{
		p++;
		end--;
	}
	while (p < end)
	{
		const char *run = p;
		char		c;

		/* copy runs that need nothing done to them in one go */
		while (p < end && !special_char(*p))
			p++;
		if (p > run)
			appendBinaryPQExpBuffer(out, run, p - run);
		if (p >= end)
			break;
		c = *p;
		if (!string || c != '\\')
		{
			/* a character of the text */
			value_char(out, c, copy);
			p++;
			continue;
		}
		/* a JSON escape in a string */
		if (++p >= end)
			return false;
		switch (*p)
		{
			case 'b':
				appendPQExpBufferChar(out, '\b');
				break;
			case 'f':
				appendPQExpBufferChar(out, '\f');
				break;
			case 'n':
				value_char(out, '\n', copy);
				break;
			case 'r':
				value_char(out, '\r', copy);
				break;
			case 't':
				appendPQExpBufferChar(out, '\t');
				break;
			case 'u':
				{
					unsigned	cp;
					char		utf8[4];
					const char *hex = p + 1;
					int			n;

					if (!read_u_escape(&hex, end, &cp))
						return false;
					p = hex - 1;	/* the loop steps past the last digit */
					n = utf8_encode(cp, utf8);
					if (n == 1)
						value_char(out, utf8[0], copy);
					else
						appendBinaryPQExpBuffer(out, utf8, n);
					break;
				}
			default:
				/* \" \\ \/: the character itself */
				value_char(out, *p, copy);
				break;
		}
		p++;
	}
	if (!copy)
		appendPQExpBufferChar(out, '"');
	return true;
}

/* Text (no JSON) as a field of the batch's COPY: escaped, not NULL. */
void
copy_text(PQExpBuffer out, const char *v, size_t len)
{
	(void) append_value(out, v, len, true, true);
}

/*
 * A field of a row object (name unescaped): its value to its data column,
 * or, not a data column (ignored, lacking in the target, or new at the
 * source), noted if the source did not have it when the maps were loaded.
 */
static void
take_field(TableMap *m, const char *name, JsonSpan value, int *next)
{
	int			k;
	int			c;

	for (k = 0; k < m->ncols; k++)
	{
		int			j = (*next + k) % m->ncols;

		if (strcmp(m->colnames[j], name) == 0)
		{
			m->values[j] = value;
			*next = j + 1;
			return;
		}
	}
	if (m->new_column)
		return;
	for (c = 0; c < m->nsrc && strcmp(m->srcnames[c], name) != 0; c++)
		;
	if (c == m->nsrc && m->nsrc > 0 && !target_column_noted(m->source_table, name))
	{
		m->new_column = true;
		strlcpy(m->changed_column, name, sizeof(m->changed_column));
	}
}

/*
 * Find the map's data columns in a row object of an event ({"col": value,
 * ...}): m->values[j] is column j's JSON value, or empty if absent.  A
 * column the source did not have when the maps were loaded sets
 * new_column, and so does (whole: every column is there) the absence of a
 * NOT NULL column of a target we made: the source changed, and the target
 * must follow (target.c).  A column noted once is not noted again: it may
 * be one added and dropped since, still in older events.  The fields
 * event_parse noted (fields, when they are obj's) spare a second scan.
 */
bool
row_values(TableMap *m, JsonSpan obj, const RowFields *fields, bool whole)
{
	char		name[NAMEDATALEN * 2];
	int			next = 0;		/* fields usually come in column order: try that first */
	RowFields  *own = NULL;

	memset(m->values, 0, sizeof(JsonSpan) * m->ncols);
	if (fields == NULL || fields->obj != obj.ptr)
	{
		/* not the row event_parse noted (no caller does that now) */
		Scan		s = {obj.ptr, obj.ptr + obj.len};

		own = pg_malloc(sizeof(RowFields));
		if (!index_object(&s, own))
			own->complete = false;
		fields = own;
	}
	if (!fields->complete)
	{
		free(own);
		return false;
	}
	for (int i = 0; i < fields->n; i++)
	{
		const char *nm = fields->f[i].name;
		uint32_t	len = fields->f[i].namelen;

		if (!fields->f[i].escaped)
		{
			/* the usual name: compared where it is */
			int			k;

			for (k = 0; k < m->ncols; k++)
			{
				int			j = (next + k) % m->ncols;

				if (strncmp(m->colnames[j], nm, len) == 0 && m->colnames[j][len] == '\0')
				{
					m->values[j] = fields->f[i].value;
					next = j + 1;
					break;
				}
			}
			if (k < m->ncols)
				continue;
			len = Min(len, sizeof(name) - 1);
			memcpy(name, nm, len);
			name[len] = '\0';
		}
		else
		{
			Scan		ns = {nm - 1, nm + len + 1};

			if (!scan_string(&ns, name, sizeof(name), NULL))
			{
				free(own);
				return false;
			}
		}
		take_field(m, name, fields->f[i].value, &next);
	}
	free(own);
	if (whole && m->watch_any && !m->new_column)
		for (int j = 0; j < m->ncols; j++)
			if (m->colwatch[j] && m->values[j].ptr == NULL &&
				!target_column_noted(m->source_table, m->colnames[j]))
			{
				m->new_column = true;
				strlcpy(m->changed_column, m->colnames[j], sizeof(m->changed_column));
				break;
			}
	return true;
}

/*
 * The row found by row_values as COPY fields of the map's data columns, in
 * target order, each after a \x1f: absent and null columns are NULL (\N).
 * The target parses each with its column's input function; no JSON is
 * parsed on the server.
 */
bool
row_fields(PQExpBuffer out, TableMap *m)
{
	for (int j = 0; j < m->ncols; j++)
	{
		JsonSpan	v = m->values[j];

		appendPQExpBufferChar(out, '\x1f');
		if (v.ptr == NULL || (v.len == 4 && memcmp(v.ptr, "null", 4) == 0))
		{
			appendPQExpBufferStr(out, "\\N");
			continue;
		}
		if (!append_value(out, v.ptr, v.len, m->coljson[j], true))
			return false;
	}
	return true;
}

/* A JSON array of strings (unchanged_toast) as a text[] literal. */
bool
array_literal(PQExpBuffer out, JsonSpan arr)
{
	Scan		s = {arr.ptr, arr.ptr + arr.len};
	bool		first = true;

	skip_ws(&s);
	if (s.p >= s.end || *s.p++ != '[')
		return false;
	appendPQExpBufferChar(out, '{');
	for (;;)
	{
		const char *start;

		skip_ws(&s);
		if (s.p < s.end && *s.p == ']')
			break;
		start = s.p;
		if (!skip_value(&s))
			return false;
		if (!first)
			appendPQExpBufferChar(out, ',');
		first = false;
		if (!append_value(out, start, s.p - start, false, false))
			return false;
		skip_ws(&s);
		if (s.p < s.end && *s.p == ',')
			s.p++;
	}
	appendPQExpBufferChar(out, '}');
	return true;
}
