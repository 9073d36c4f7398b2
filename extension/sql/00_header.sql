/*
 * The pgcdc extension's install script, built by make from
 * the files in extension/sql/, in file-name order (edit those, not this file):
 *   10_control_tables             control tables and the status view
 *   20_helpers                    internal helpers (name parsing, column lookup, errors, prepared statements)
 *   30_pipelines_maps_rules       pipeline, table map and rule management
 *   40_scd2_history_merge         SCD2 history tables and scd2_merge
 *   41_scd2_stage_and_segment     scd2_apply_changes' staged path: staging, effective times, in-order segments, truncates
 *   42_scd2_late                  late changes and replays, applied in rounds
 *   43_scd2_apply_changes         scd2_apply_changes: the one-statement path and the entry point
 *   50_mirror                     mirror apply
 *   60_quarantine                 rules and quarantine
 *   70_privileges                 privileges
 *
 * Every function pins search_path to pg_catalog, pg_temp, and user
 * identifiers reach dynamic SQL only through format('%I') / quote_ident or
 * as regclass output, so neither hostile objects on the caller's path nor
 * odd table and column names change what runs.  Functions that resolve a
 * table name given as text are thin SQL wrappers that pass the caller's
 * current_schema() to the pinned implementation: the pinned path would
 * otherwise hide the caller's schema.
 */

\echo Use "CREATE EXTENSION pgcdc" to load this file. \quit
