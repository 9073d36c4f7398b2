/*
 * prepared.c
 *		The text of a session's prepared statement, by name.
 *
 * The SQL functions prepare their generated statements once per session
 * (pgcdc._prepared) and look each up before every use.  pg_prepared_statements
 * builds a row for every statement of the session, text and all, so that
 * lookup grows with the dozens of statements a session comes to hold, and a
 * staged call makes about twenty.  This is one hash lookup.
 */
#include "postgres.h"

#include "commands/prepare.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/plancache.h"

PG_FUNCTION_INFO_V1(pgcdc_prepared_statement);

/* The statement's text as PREPARE gave it, or NULL if there is none. */
Datum
pgcdc_prepared_statement(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	PreparedStatement *stmt = FetchPreparedStatement(name, false);

	if (stmt == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(stmt->plansource->query_string));
}
