/*
 * json_writer.h
 *		Appending JSON text for change events: strings, numbers, LSNs and
 *		column values encoded by type.
 */
#ifndef PGCDC_JSON_WRITER_H
#define PGCDC_JSON_WRITER_H

#include "postgres.h"
#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "fmgr.h"
#include "lib/stringinfo.h"

/* How a column's values are written; decided once per column, by base type. */
typedef enum PgcdcValueKind
{
	PGCDC_VAL_INT2,
	PGCDC_VAL_INT4,
	PGCDC_VAL_INT8,
	PGCDC_VAL_OID,
	PGCDC_VAL_FLOAT4,
	PGCDC_VAL_FLOAT8,
	PGCDC_VAL_NUMERIC,
	PGCDC_VAL_BOOL,
	PGCDC_VAL_JSON,
	PGCDC_VAL_JSONB,
	PGCDC_VAL_TEXT,				/* text, varchar, bpchar: no output call */
	PGCDC_VAL_UUID,				/* formatted here: no output call */
	PGCDC_VAL_TIMESTAMPTZ,		/* formatted here when finite and in years 1-9999 */
	PGCDC_VAL_TIMESTAMP,
	PGCDC_VAL_DATE,
	PGCDC_VAL_OTHER				/* the type's output function, as a string */
} PgcdcValueKind;

/*
 * appendBinaryStringInfo, inlined: an event is made of many small appends,
 * and the call into the server binary for each was a tenth of the work.
 */
static inline void
json_append_bytes(StringInfo out, const char *data, int len)
{
	if (unlikely(out->len + len >= out->maxlen))
		enlargeStringInfo(out, len);
	memcpy(out->data + out->len, data, len);
	out->len += len;
	out->data[out->len] = '\0';
}

/* Append a string literal without a strlen() on the hot path. */
#define json_append_literal(out, lit) \
	json_append_bytes((out), (lit), sizeof(lit) - 1)

/* Does a column of this kind need its type's output function? */
#define json_kind_needs_output(kind) \
	((kind) == PGCDC_VAL_NUMERIC || (kind) == PGCDC_VAL_JSONB || (kind) == PGCDC_VAL_OTHER || \
	 (kind) == PGCDC_VAL_TIMESTAMPTZ || (kind) == PGCDC_VAL_TIMESTAMP || (kind) == PGCDC_VAL_DATE)

extern void json_writer_init(void);
extern PgcdcValueKind json_value_kind(Oid typid);
extern void json_append_string(StringInfo out, const char *s, int len);
extern void json_append_cstring(StringInfo out, const char *s);
extern void json_append_lsn(StringInfo out, XLogRecPtr lsn);
extern void json_append_commit_time(StringInfo out, TimestampTz ts);
extern void json_append_uint64(StringInfo out, uint64 v);
extern void json_append_value(StringInfo out, Datum value, PgcdcValueKind kind,
							  FmgrInfo *output, bool numeric_as_string);

#endif							/* PGCDC_JSON_WRITER_H */
