/*
 * rule.c
 *		Syntax check for the boolean expressions of pgcdc.rule.
 *
 * A rule's check_expr is pasted into the SQL that evaluates it, so it must be
 * exactly one scalar expression: no second statement smuggled in after a
 * semicolon, no FROM/WHERE/ORDER BY tail, no subquery.  The raw parser tells
 * us that without executing anything; type checking against the table's
 * columns happens in SQL (pgcdc._check_rule) when the table is known.
 */
#include "postgres.h"

#include "fmgr.h"
#include "nodes/nodeFuncs.h"
#include "nodes/parsenodes.h"
#include "parser/parser.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

PG_FUNCTION_INFO_V1(pgcdc_parse_rule_expr);

/*
 * A subquery, or what shows a call to be an aggregate or window function
 * (OVER, *, DISTINCT, ORDER BY, FILTER, WITHIN GROUP): a rule judges one row.
 * (A plain aggregate call such as sum(x) looks like any function here; the
 * check against the table, in SQL, refuses it.)
 */
static bool
forbidden_node(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, SubLink))
		return true;
	if (IsA(node, FuncCall))
	{
		FuncCall   *f = (FuncCall *) node;

		if (f->over != NULL || f->agg_star || f->agg_distinct || f->agg_order != NIL ||
			f->agg_filter != NULL || f->agg_within_group)
			return true;
	}
	return raw_expression_tree_walker(node, forbidden_node, context);
}

/*
 * pgcdc._parse_rule_expr(expr text) RETURNS void
 *
 * Errors with SQLSTATE 42601 unless expr is a single expression.
 */
Datum
pgcdc_parse_rule_expr(PG_FUNCTION_ARGS)
{
	char	   *expr;
	char	   *sql;
	List	   *stmts;
	SelectStmt *select;
	ResTarget  *target;
	MemoryContext oldcontext = CurrentMemoryContext;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("check_expr must not be null")));
	expr = text_to_cstring(PG_GETARG_TEXT_PP(0));

	/* The newline ends a trailing "--" comment before our closing paren. */
	sql = psprintf("SELECT (%s\n)", expr);

	/*
	 * A syntax error's position would point into our wrapper, not into the
	 * caller's query: report it as a bad rule instead, with the parser's
	 * message as detail.
	 */
	PG_TRY();
	{
		stmts = raw_parser(sql, RAW_PARSE_DEFAULT);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcontext);
		edata = CopyErrorData();
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("check_expr is not a valid expression: %s", expr),
				 errdetail("%s", edata->message)));
	}
	PG_END_TRY();

	if (list_length(stmts) != 1 ||
		!IsA(linitial_node(RawStmt, stmts)->stmt, SelectStmt))
		goto bad;
	select = (SelectStmt *) linitial_node(RawStmt, stmts)->stmt;
	if (select->op != SETOP_NONE || select->fromClause != NIL ||
		select->whereClause != NULL || select->groupClause != NIL ||
		select->havingClause != NULL || select->windowClause != NIL ||
		select->sortClause != NIL || select->limitCount != NULL ||
		select->limitOffset != NULL || select->lockingClause != NIL ||
		select->withClause != NULL || select->intoClause != NULL ||
		select->distinctClause != NIL || select->valuesLists != NIL ||
		list_length(select->targetList) != 1)
		goto bad;
	target = linitial_node(ResTarget, select->targetList);
	if (target->name != NULL || forbidden_node(target->val, NULL))
		goto bad;

	PG_RETURN_VOID();

bad:
	ereport(ERROR,
			(errcode(ERRCODE_SYNTAX_ERROR),
			 errmsg("check_expr is not a single expression: %s", expr),
			 errhint("A rule is one boolean expression over the row's columns, such as amount >= 0, without subqueries, aggregates or window functions.")));
	PG_RETURN_VOID();			/* keep compiler quiet */
}
