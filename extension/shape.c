/*
 * shape.c
 *		pgcdc._shape: the name under which apply_mirror and
 *		scd2_apply_changes keep the statements they prepared for a call of
 *		one shape, cached for the session.
 *
 * The shape is an md5 of everything the generated statements depend on
 * (pgcdc._shape_of: the arguments, the names and columns of both tables,
 * the source of the functions that generate them).  Reading that from the
 * catalogs and planning the query took about 0.4 ms, at every call: a fifth
 * of a small batch's cost on the target.  It is computed once here, and
 * forgotten when anything it read may have changed: the relcache tells of
 * either table changed, renamed or dropped, the syscaches of a function or
 * schema changed (rare: everything is forgotten then).  Invalidations for
 * a transaction's own DDL, and for DDL rolled back, arrive here as well.
 * A shape computed while an invalidation came is returned, not kept.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(pgcdc_shape);

typedef struct Shape
{
	Oid			target;
	Oid			changes;
	char	   *key;			/* the code and argument arrays, as text */
	char	   *shape;
} Shape;

/* the session's shapes, in TopMemoryContext (a few per table map) */
static List *shapes = NIL;
static bool callbacks_set = false;
/* invalidations processed in this session, of any relation or function */
static uint64 invalidations = 0;

static void
forget(Shape *s)
{
	pfree(s->key);
	pfree(s->shape);
	pfree(s);
}

static void
forget_relation(Datum arg, Oid relid)
{
	ListCell   *lc;

	invalidations++;
	foreach(lc, shapes)
	{
		Shape	   *s = lfirst(lc);

		if (!OidIsValid(relid) || s->target == relid || s->changes == relid)
		{
			forget(s);
			shapes = foreach_delete_current(shapes, lc);
		}
	}
}

static void
forget_all(Datum arg, int cacheid, uint32 hashvalue)
{
	forget_relation(arg, InvalidOid);
}

/* pgcdc._shape(code text[], target regclass, changes regclass, VARIADIC args text[]) */
Datum
pgcdc_shape(PG_FUNCTION_ARGS)
{
	Oid			target;
	Oid			changes;
	char	   *key;
	ListCell   *lc;
	Shape	   *s;
	Datum		values[4];
	Oid			types[4] = {TEXTARRAYOID, REGCLASSOID, REGCLASSOID, TEXTARRAYOID};
	char	   *shape;
	SPIPlanPtr	plan;
	uint64		before;
	bool		keep;
	MemoryContext caller = CurrentMemoryContext;

	/* (STRICT) */
	target = PG_GETARG_OID(1);
	changes = PG_GETARG_OID(2);
	key = psprintf("%s\n%s", OidOutputFunctionCall(F_ARRAY_OUT, PG_GETARG_DATUM(0)),
				   OidOutputFunctionCall(F_ARRAY_OUT, PG_GETARG_DATUM(3)));

	if (!callbacks_set)
	{
		CacheRegisterRelcacheCallback(forget_relation, (Datum) 0);
		CacheRegisterSyscacheCallback(PROCOID, forget_all, (Datum) 0);
		CacheRegisterSyscacheCallback(NAMESPACEOID, forget_all, (Datum) 0);
		callbacks_set = true;
	}

	foreach(lc, shapes)
	{
		s = lfirst(lc);
		if (s->target == target && s->changes == changes && strcmp(s->key, key) == 0)
			PG_RETURN_TEXT_P(cstring_to_text(s->shape));
	}

	values[0] = PG_GETARG_DATUM(0);
	values[1] = ObjectIdGetDatum(target);
	values[2] = ObjectIdGetDatum(changes);
	values[3] = PG_GETARG_DATUM(3);
	before = invalidations;
	SPI_connect();
	plan = SPI_prepare("SELECT pgcdc._shape_of($1, $2, $3, $4)", 4, types);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));

	/*
	 * Read with a snapshot taken now, not the transaction's (REPEATABLE
	 * READ): a change committed before it is in the shape; one committed
	 * after it has its invalidation processed later, and that either
	 * forgets the entry or, processed before the entry exists (when the
	 * query takes its locks), keeps it from being stored.
	 */
	if (SPI_execute_snapshot(plan, values, NULL, GetLatestSnapshot(), InvalidSnapshot, true, false, 1)
		!= SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "pgcdc._shape_of returned no row");
	shape = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	if (shape == NULL)
		elog(ERROR, "pgcdc._shape_of returned NULL");
	keep = invalidations == before;
	shape = MemoryContextStrdup(keep ? TopMemoryContext : caller, shape);
	SPI_finish();
	if (keep)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		s = palloc(sizeof(Shape));
		s->target = target;
		s->changes = changes;
		s->key = pstrdup(key);
		s->shape = shape;
		shapes = lappend(shapes, s);
		MemoryContextSwitchTo(old);
	}
	PG_RETURN_TEXT_P(cstring_to_text(shape));
}
