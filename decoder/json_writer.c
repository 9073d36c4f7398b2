/*
 * json_writer.c
 *		JSON text for change events.
 *
 * Everything appends straight into the output StringInfo: no intermediate
 * buffers, no per-value allocations for numbers, text or names.  Values are
 * encoded by a kind chosen once per column (see json_value_kind), so the hot
 * path is a switch, not a catalog lookup.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "common/shortest_dec.h"
#include "mb/pg_wchar.h"
#include "datatype/timestamp.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "json_writer.h"

/*
 * In a UTF-8 database text goes out as it is.  Otherwise it is converted to
 * UTF-8 and every non-ASCII character is written as a \u escape, so that the
 * output is valid UTF-8 JSON and also valid text in the database encoding.
 */
static bool utf8_database = true;

static const char hexdigits[] = "0123456789ABCDEF";
static const char hexdigits_lower[] = "0123456789abcdef";

void
json_writer_init(void)
{
	utf8_database = (GetDatabaseEncoding() == PG_UTF8);
}

PgcdcValueKind
json_value_kind(Oid typid)
{
	switch (getBaseType(typid))
	{
		case INT2OID:
			return PGCDC_VAL_INT2;
		case INT4OID:
			return PGCDC_VAL_INT4;
		case INT8OID:
			return PGCDC_VAL_INT8;
		case OIDOID:
			return PGCDC_VAL_OID;
		case FLOAT4OID:
			return PGCDC_VAL_FLOAT4;
		case FLOAT8OID:
			return PGCDC_VAL_FLOAT8;
		case NUMERICOID:
			return PGCDC_VAL_NUMERIC;
		case BOOLOID:
			return PGCDC_VAL_BOOL;
		case JSONOID:
			return PGCDC_VAL_JSON;
		case JSONBOID:
			return PGCDC_VAL_JSONB;
		case TEXTOID:
		case VARCHAROID:
		case BPCHAROID:
			return PGCDC_VAL_TEXT;
		case UUIDOID:
			return PGCDC_VAL_UUID;
		case TIMESTAMPTZOID:
			return PGCDC_VAL_TIMESTAMPTZ;
		case TIMESTAMPOID:
			return PGCDC_VAL_TIMESTAMP;
		case DATEOID:
			return PGCDC_VAL_DATE;
		default:
			return PGCDC_VAL_OTHER;
	}
}

static void
append_escape(StringInfo out, unsigned char c)
{
	switch (c)
	{
		case '"':
			json_append_bytes(out, "\\\"", 2);
			break;
		case '\\':
			json_append_bytes(out, "\\\\", 2);
			break;
		case '\b':
			json_append_bytes(out, "\\b", 2);
			break;
		case '\f':
			json_append_bytes(out, "\\f", 2);
			break;
		case '\n':
			json_append_bytes(out, "\\n", 2);
			break;
		case '\r':
			json_append_bytes(out, "\\r", 2);
			break;
		case '\t':
			json_append_bytes(out, "\\t", 2);
			break;
		default:
			{
				char		buf[6] = {'\\', 'u', '0', '0',
				hexdigits[c >> 4], hexdigits[c & 15]};

				json_append_bytes(out, buf, 6);
			}
	}
}

static void
append_u_escape(StringInfo out, pg_wchar cp)
{
	char		buf[6] = {'\\', 'u',
		hexdigits[(cp >> 12) & 15], hexdigits[(cp >> 8) & 15],
	hexdigits[(cp >> 4) & 15], hexdigits[cp & 15]};

	json_append_bytes(out, buf, 6);
}

/* One non-ASCII character of UTF-8 text as \uXXXX (two for a surrogate pair). */
static const unsigned char *
append_non_ascii(StringInfo out, const unsigned char *p, const unsigned char *end)
{
	int			l = pg_utf_mblen(p);

	if (p + l <= end && pg_utf8_islegal(p, l))
	{
		pg_wchar	cp = utf8_to_unicode(p);

		if (cp > 0xFFFF)
		{
			cp -= 0x10000;
			append_u_escape(out, 0xD800 + (cp >> 10));
			append_u_escape(out, 0xDC00 + (cp & 0x3FF));
		}
		else
			append_u_escape(out, cp);
		return p + l;
	}
	/* SQL_ASCII data that is not UTF-8: keep the byte, as Latin-1 */
	append_u_escape(out, *p);
	return p + 1;
}

/* Non-UTF-8 database: convert, then escape everything outside ASCII. */
static void
append_string_ascii(StringInfo out, const char *s, int len)
{
	const unsigned char *p;
	const unsigned char *end;
	char	   *utf8 = pg_server_to_any(s, len, PG_UTF8);

	if (utf8 != s)
		len = strlen(utf8);
	p = (const unsigned char *) utf8;
	end = p + len;
	appendStringInfoCharMacro(out, '"');
	while (p < end)
	{
		unsigned char c = *p;

		if (c < 0x80)
		{
			if (c < 0x20 || c == '"' || c == '\\')
				append_escape(out, c);
			else
				appendStringInfoCharMacro(out, (char) c);
			p++;
			continue;
		}
		p = append_non_ascii(out, p, end);
	}
	appendStringInfoCharMacro(out, '"');
}

/*
 * Does any byte of the 8 need escaping (< 0x20, '"' or '\\')?  The classic
 * "has a zero byte" bit trick, applied to x, x ^ '"' and x ^ '\\'.
 */
static inline bool
word_needs_escape(uint64 x)
{
	const uint64 ones = UINT64CONST(0x0101010101010101);
	const uint64 highs = UINT64CONST(0x8080808080808080);
	uint64		q = x ^ (ones * '"');
	uint64		b = x ^ (ones * '\\');

	return ((((x - ones * 0x20) & ~x) | ((q - ones) & ~q) | ((b - ones) & ~b)) & highs) != 0;
}

/* A JSON string (RFC 8259): quotes, backslashes and controls escaped. */
void
json_append_string(StringInfo out, const char *s, int len)
{
	const char *start = s;
	const char *end = s + len;
	const char *p = s;

	if (!utf8_database)
	{
		append_string_ascii(out, s, len);
		return;
	}

	appendStringInfoCharMacro(out, '"');
	/* most text needs no escapes: skip clean 8-byte words */
	while (end - p >= 8)
	{
		uint64		w;

		memcpy(&w, p, 8);
		if (word_needs_escape(w))
			break;
		p += 8;
	}
	for (; p < end; p++)
	{
		unsigned char c = (unsigned char) *p;

		if (likely(c >= 0x20 && c != '"' && c != '\\'))
			continue;
		if (p > start)
			json_append_bytes(out, start, p - start);
		append_escape(out, c);
		start = p + 1;
	}
	if (end > start)
		json_append_bytes(out, start, end - start);
	appendStringInfoCharMacro(out, '"');
}

void
json_append_cstring(StringInfo out, const char *s)
{
	json_append_string(out, s, strlen(s));
}

static int
format_hex32(char *buf, uint32 v)
{
	char		tmp[8];
	int			n = 0;
	int			i;

	do
	{
		tmp[n++] = hexdigits[v & 15];
		v >>= 4;
	} while (v != 0);
	for (i = 0; i < n; i++)
		buf[i] = tmp[n - 1 - i];
	return n;
}

/* An LSN as a JSON string in the server's X/X notation. */
void
json_append_lsn(StringInfo out, XLogRecPtr lsn)
{
	char		buf[20];
	int			n = 0;

	buf[n++] = '"';
	n += format_hex32(buf + n, (uint32) (lsn >> 32));
	buf[n++] = '/';
	n += format_hex32(buf + n, (uint32) lsn);
	buf[n++] = '"';
	json_append_bytes(out, buf, n);
}

void
json_append_uint64(StringInfo out, uint64 v)
{
	char		buf[MAXINT8LEN + 1];
	int			n = pg_ulltoa_n(v, buf);

	json_append_bytes(out, buf, n);
}

static inline void
append_number(StringInfo out, const char *digits, int len, bool quoted)
{
	if (quoted)
		appendStringInfoCharMacro(out, '"');
	json_append_bytes(out, digits, len);
	if (quoted)
		appendStringInfoCharMacro(out, '"');
}

/* NaN and the infinities are not JSON numbers: they go out as strings. */
static bool
append_special_float(StringInfo out, double v)
{
	if (isnan(v))
		json_append_literal(out, "\"NaN\"");
	else if (isinf(v))
	{
		if (v > 0)
			json_append_literal(out, "\"Infinity\"");
		else
			json_append_literal(out, "\"-Infinity\"");
	}
	else
		return false;
	return true;
}

/*
 * Embed json text as it is, but with raw line breaks (insignificant
 * whitespace: inside JSON strings they are always escaped) turned into
 * spaces, so that every event stays on one line.
 */
static void
append_json_text(StringInfo out, const char *s, int len)
{
	int			start = out->len;
	int			i;

	if (!utf8_database)
	{
		/*
		 * As text values: the event must be valid in the database encoding
		 * and as UTF-8, so everything outside ASCII (only ever inside JSON
		 * strings) goes out as \u escapes.
		 */
		const unsigned char *p;
		const unsigned char *end;

		s = pg_server_to_any(s, len, PG_UTF8);
		p = (const unsigned char *) s;
		end = p + strlen(s);
		while (p < end)
		{
			if (*p < 0x80)
				appendStringInfoCharMacro(out, (char) *p++);
			else
				p = append_non_ascii(out, p, end);
		}
	}
	else
		json_append_bytes(out, s, len);
	for (i = start; i < out->len; i++)
	{
		if (out->data[i] == '\n' || out->data[i] == '\r')
			out->data[i] = ' ';
	}
}

static inline char *
put_digits(char *p, int v, int width)
{
	for (int i = width - 1; i >= 0; i--)
	{
		p[i] = '0' + v % 10;
		v /= 10;
	}
	return p + width;
}

static char *
put_date(char *p, int year, int mon, int mday)
{
	p = put_digits(p, year, 4);
	*p++ = '-';
	p = put_digits(p, mon, 2);
	*p++ = '-';
	return put_digits(p, mday, 2);
}

/*
 * What timestamp_out / timestamptz_out print with DateStyle ISO and
 * TimeZone UTC ("2026-11-29 05:28:32.123456+00"), without the output
 * function's tm conversions and sprintf.  Infinities, BC and years past 9999
 * are left to the output function.
 */
static bool
append_timestamp(StringInfo out, Timestamp ts, bool utc_suffix, bool all_digits)
{
	struct pg_tm tm;
	fsec_t		fsec;
	char		buf[40];
	char	   *p = buf;

	if (TIMESTAMP_NOT_FINITE(ts) ||
		timestamp2tm(ts, NULL, &tm, &fsec, NULL, NULL) != 0 ||
		tm.tm_year < 1 || tm.tm_year > 9999)
		return false;
	*p++ = '"';
	p = put_date(p, tm.tm_year, tm.tm_mon, tm.tm_mday);
	*p++ = ' ';
	p = put_digits(p, tm.tm_hour, 2);
	*p++ = ':';
	p = put_digits(p, tm.tm_min, 2);
	*p++ = ':';
	p = put_digits(p, tm.tm_sec, 2);
	if (fsec != 0 || all_digits)
	{
		*p++ = '.';
		p = put_digits(p, fsec, 6);
		while (!all_digits && p[-1] == '0')
			p--;
	}
	if (utc_suffix)
	{
		memcpy(p, "+00", 3);
		p += 3;
	}
	*p++ = '"';
	json_append_bytes(out, buf, p - buf);
	return true;
}

/*
 * The "ts" field: a commit time, always with six fractional digits
 * ("2026-11-29 05:28:32.120000+00") so that fixed-pattern parsers read it.
 */
void
json_append_commit_time(StringInfo out, TimestampTz ts)
{
	if (!append_timestamp(out, ts, true, true))
		json_append_cstring(out, timestamptz_to_str(ts));
}

static bool
append_date(StringInfo out, DateADT d)
{
	int			year,
				mon,
				mday;
	char		buf[16];
	char	   *p = buf;

	if (DATE_NOT_FINITE(d))
		return false;
	j2date(d + POSTGRES_EPOCH_JDATE, &year, &mon, &mday);
	if (year < 1 || year > 9999)
		return false;
	*p++ = '"';
	p = put_date(p, year, mon, mday);
	*p++ = '"';
	json_append_bytes(out, buf, p - buf);
	return true;
}

/*
 * Append one non-null column value encoded as SPEC.md section 1 says.
 * Output functions run with the settings pinned at startup (ISO dates, UTC,
 * shortest-exact floats, hex bytea), so text forms do not depend on the
 * session.
 */
void
json_append_value(StringInfo out, Datum value, PgcdcValueKind kind,
				  FmgrInfo *output, bool numeric_as_string)
{
	char		buf[64];
	int			n;
	char	   *s;

	switch (kind)
	{
		case PGCDC_VAL_INT2:
			n = pg_ltoa(DatumGetInt16(value), buf);
			append_number(out, buf, n, numeric_as_string);
			break;
		case PGCDC_VAL_INT4:
			n = pg_ltoa(DatumGetInt32(value), buf);
			append_number(out, buf, n, numeric_as_string);
			break;
		case PGCDC_VAL_INT8:
			n = pg_lltoa(DatumGetInt64(value), buf);
			append_number(out, buf, n, numeric_as_string);
			break;
		case PGCDC_VAL_OID:
			n = pg_ultoa_n(DatumGetObjectId(value), buf);
			append_number(out, buf, n, numeric_as_string);
			break;
		case PGCDC_VAL_FLOAT4:
			{
				float4		f = DatumGetFloat4(value);

				if (append_special_float(out, f))
					break;
				n = float_to_shortest_decimal_bufn(f, buf);
				append_number(out, buf, n, numeric_as_string);
				break;
			}
		case PGCDC_VAL_FLOAT8:
			{
				float8		f = DatumGetFloat8(value);

				if (append_special_float(out, f))
					break;
				n = double_to_shortest_decimal_bufn(f, buf);
				append_number(out, buf, n, numeric_as_string);
				break;
			}
		case PGCDC_VAL_NUMERIC:
			s = OutputFunctionCall(output, value);
			/* NaN, Infinity and -Infinity are strings in JSON */
			if (isdigit((unsigned char) s[0]) ||
				(s[0] == '-' && isdigit((unsigned char) s[1])))
				append_number(out, s, strlen(s), numeric_as_string);
			else
				json_append_cstring(out, s);
			break;
		case PGCDC_VAL_BOOL:
			if (DatumGetBool(value))
				json_append_literal(out, "true");
			else
				json_append_literal(out, "false");
			break;
		case PGCDC_VAL_JSON:
			{
				text	   *t = DatumGetTextPP(value);

				append_json_text(out, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
				break;
			}
		case PGCDC_VAL_JSONB:
			s = OutputFunctionCall(output, value);
			append_json_text(out, s, strlen(s));
			break;
		case PGCDC_VAL_TEXT:
			{
				text	   *t = DatumGetTextPP(value);

				json_append_string(out, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
				break;
			}
		case PGCDC_VAL_UUID:
			{
				/* what uuid_out prints, without its palloc */
				const unsigned char *u = DatumGetUUIDP(value)->data;

				n = 0;
				buf[n++] = '"';
				for (int i = 0; i < UUID_LEN; i++)
				{
					if (i == 4 || i == 6 || i == 8 || i == 10)
						buf[n++] = '-';
					buf[n++] = hexdigits_lower[u[i] >> 4];
					buf[n++] = hexdigits_lower[u[i] & 15];
				}
				buf[n++] = '"';
				json_append_bytes(out, buf, n);
				break;
			}
		case PGCDC_VAL_TIMESTAMPTZ:
		case PGCDC_VAL_TIMESTAMP:
			if (!append_timestamp(out, DatumGetTimestamp(value), kind == PGCDC_VAL_TIMESTAMPTZ, false))
				json_append_cstring(out, OutputFunctionCall(output, value));
			break;
		case PGCDC_VAL_DATE:
			if (!append_date(out, DatumGetDateADT(value)))
				json_append_cstring(out, OutputFunctionCall(output, value));
			break;
		case PGCDC_VAL_OTHER:
			json_append_cstring(out, OutputFunctionCall(output, value));
			break;
	}
}
