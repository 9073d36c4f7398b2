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

/* Parse a JSON string at s->p into out (unescaping the simple escapes). */
static bool
scan_string(Scan *s, char *out, size_t outlen, size_t *used)
{
	size_t		n = 0;

	if (s->p >= s->end || *s->p != '"')
		return false;
	s->p++;
	while (s->p < s->end && *s->p != '"')
	{
		char		c = *s->p++;

		if (c == '\\')
		{
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
					/* kept escaped: names and prefixes are compared, not shown */
					if (s->end - s->p < 4)
						return false;
					if (out && n + 6 < outlen)
					{
						out[n++] = '\\';
						out[n++] = 'u';
						memcpy(out + n, s->p, 4);
						n += 4;
					}
					s->p += 4;
					continue;
				default:
					break;		/* \" \\ \/ */
			}
		}
		if (out && n + 1 < outlen)
			out[n++] = c;
	}
	if (s->p >= s->end)
		return false;
	s->p++;
	if (out)
		out[n] = '\0';
	if (used)
		*used = n + 1;
	return true;
}

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
					s->p++;
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

bool
event_parse(const char *json, size_t len, EventInfo *ev, char *scratch, size_t scratchlen)
{
	Scan		s = {json, json + len};
	char		key[32];
	char		val[64];
	size_t		used = 0;

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
		if (strcmp(key, "op") == 0)
		{
			if (!scan_string(&s, val, sizeof(val), NULL))
				return false;
			ev->op = val[0];
		}
		else if (strcmp(key, "commit_lsn") == 0 || strcmp(key, "end_lsn") == 0)
		{
			if (!scan_string(&s, val, sizeof(val), NULL) ||
				!parse_lsn(val, key[0] == 'c' ? &ev->commit_lsn : &ev->end_lsn))
				return false;
		}
		else if (strcmp(key, "seq") == 0)
			ev->seq = scan_number(&s);
		else if ((strcmp(key, "schema") == 0 || strcmp(key, "table") == 0 ||
				  strcmp(key, "prefix") == 0 || strcmp(key, "ts") == 0) &&
				 s.p < s.end && *s.p == '"')
		{
			size_t		n;
			const char **dst = strcmp(key, "schema") == 0 ? &ev->schema :
			strcmp(key, "table") == 0 ? &ev->table :
			strcmp(key, "ts") == 0 ? &ev->ts : &ev->prefix;

			if (used >= scratchlen || !scan_string(&s, scratch + used, scratchlen - used, &n))
				return false;
			*dst = scratch + used;
			used += n;
		}
		else if (!skip_value(&s))
			return false;
		skip_ws(&s);
		if (s.p < s.end && *s.p == ',')
			s.p++;
	}
	return ev->op != 0;
}
