/* ------------------------------------------------------------------------
 * 7. Privileges
 *
 * The control tables belong to the extension's owner and are not writable
 * by PUBLIC (nor readable: slot names, options and quarantined rows are
 * not everyone's business).  Functions run with the caller's rights
 * (SECURITY INVOKER), so a caller needs the privileges on the control
 * tables and targets that the function touches; README lists them.
 * ------------------------------------------------------------------------ */

REVOKE ALL ON pgcdc.pipeline, pgcdc.table_map, pgcdc.checkpoint, pgcdc.batch,
	pgcdc.quarantine, pgcdc.rule, pgcdc.mirror_tombstone, pgcdc.status FROM PUBLIC;
-- The SCD2 and mirror functions work on the caller's own tables with the
-- caller's rights: anyone may call them.
GRANT USAGE ON SCHEMA pgcdc TO PUBLIC;
