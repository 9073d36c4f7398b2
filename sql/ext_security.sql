-- pgcdc extension: privileges, and no subversion through search_path
CREATE EXTENSION pgcdc;
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
\set SHOW_CONTEXT never

CREATE ROLE pgcdc_regress_user LOGIN;
CREATE ROLE pgcdc_regress_admin LOGIN;
-- what an operator of pipelines needs (README: privileges)
GRANT USAGE ON SCHEMA pgcdc TO pgcdc_regress_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON pgcdc.pipeline, pgcdc.table_map, pgcdc.rule,
	pgcdc.quarantine, pgcdc.checkpoint, pgcdc.batch TO pgcdc_regress_admin;
GRANT SELECT ON pgcdc.status TO pgcdc_regress_admin;
CREATE SCHEMA regress_own AUTHORIZATION pgcdc_regress_user;

-- PUBLIC can neither read nor write the control tables
SET ROLE pgcdc_regress_user;
SELECT count(*) FROM pgcdc.pipeline;
INSERT INTO pgcdc.pipeline (name, slot_name) VALUES ('evil', 'evil');
UPDATE pgcdc.quarantine SET status = 'discarded';
SELECT * FROM pgcdc.status;
SELECT pgcdc.create_pipeline('mine');
-- but history tables of its own tables, and merges into them, are fine
SET search_path = regress_own;
CREATE TABLE item (id int PRIMARY KEY, name text);
INSERT INTO item VALUES (1, 'one');
SELECT pgcdc.create_history_table('item', 'item_history');
SELECT * FROM pgcdc.scd2_merge('item_history', 'item', '{id}', valid_at => '2024-01-01');
SELECT id, name, _version FROM item_history;
RESET ROLE;
GRANT USAGE ON SCHEMA regress_own TO pgcdc_regress_admin;
GRANT SELECT ON regress_own.item, regress_own.item_history TO pgcdc_regress_admin;
-- nor into someone else's table it cannot write
CREATE TABLE public.not_yours (id int PRIMARY KEY, name text);
SELECT pgcdc.create_history_table('public.not_yours', 'public.not_yours_history');
SET ROLE pgcdc_regress_user;
SELECT * FROM pgcdc.scd2_merge('public.not_yours_history', 'item', '{id}', valid_at => '2024-01-01');
SELECT pgcdc.create_history_table('item', 'public.sneaky');
RESET ROLE;

-- an operator role with the grants manages pipelines and the quarantine
SET ROLE pgcdc_regress_admin;
SELECT name, slot_name FROM pgcdc.create_pipeline('ops');
SELECT target FROM pgcdc.add_table('ops', 'regress_own.item', 'regress_own.item_history', 'scd2');
SELECT name FROM pgcdc.add_rule('ops', 'regress_own.item', 'named', 'name IS NOT NULL');
SELECT pgcdc.quarantine_event('ops', NULL, NULL, '{"op": "I", "schema": "regress_own", "table": "item"}',
							  '23514', 'rule');
SELECT pgcdc.quarantine_discard(1, 'test');
SELECT pipeline, open_quarantine FROM pgcdc.status;
SELECT pgcdc.drop_pipeline('ops');
RESET ROLE;

-- hostile objects on the caller's search_path change nothing: an operator
-- and functions that would shadow the built-ins if the code looked names up
CREATE SCHEMA hostile;
CREATE FUNCTION hostile.texteq_always(text, text) RETURNS boolean LANGUAGE sql
	AS $$ SELECT true $$;
CREATE OPERATOR hostile.= (LEFTARG = text, RIGHTARG = text, FUNCTION = hostile.texteq_always);
CREATE FUNCTION hostile.int4eq_never(int, int) RETURNS boolean LANGUAGE sql
	AS $$ SELECT false $$;
CREATE OPERATOR hostile.= (LEFTARG = int, RIGHTARG = int, FUNCTION = hostile.int4eq_never);
CREATE FUNCTION hostile.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'epoch'::timestamptz $$;
CREATE FUNCTION hostile.count(anyelement) RETURNS bigint LANGUAGE sql AS $$ SELECT 42::bigint $$;
CREATE FUNCTION hostile.format(text, VARIADIC text[]) RETURNS text LANGUAGE sql
	AS $$ SELECT 'DROP TABLE public.victim' $$;
CREATE FUNCTION hostile.quote_ident(text) RETURNS text LANGUAGE sql
	AS $$ SELECT 'victim; DROP TABLE public.victim' $$;
CREATE TABLE public.victim (id int PRIMARY KEY, name text);
INSERT INTO public.victim VALUES (1, 'a'), (2, 'b');
SET search_path = public, hostile, pg_catalog;
SELECT pgcdc.create_history_table('victim', 'victim_history');
SELECT * FROM pgcdc.scd2_merge('victim_history', 'victim', '{id}', valid_at => '2024-01-01');
UPDATE victim SET name = 'B' WHERE id OPERATOR(pg_catalog.=) 2;
SELECT * FROM pgcdc.scd2_merge('victim_history', 'victim', '{id}', valid_at => '2024-01-02');
SELECT name, slot_name FROM pgcdc.create_pipeline('p');
SELECT source_table, target FROM pgcdc.add_table('p', 'victim', 'victim_history', 'scd2');
RESET search_path;
SELECT id, name, _valid_from::date, _is_current, _version FROM victim_history ORDER BY id, _valid_from;
SELECT count(*) FROM victim;

-- names that are SQL: quotes, spaces, upper case, semicolons
CREATE SCHEMA "a""b; DROP TABLE victim; --";
CREATE TABLE "a""b; DROP TABLE victim; --"."T; x" ("K ey" int PRIMARY KEY, "V""al" text);
INSERT INTO "a""b; DROP TABLE victim; --"."T; x" VALUES (1, 'x');
SELECT pgcdc.create_history_table('"a""b; DROP TABLE victim; --"."T; x"',
								  '"a""b; DROP TABLE victim; --"."H; x"');
SELECT * FROM pgcdc.scd2_merge('"a""b; DROP TABLE victim; --"."H; x"',
							   '"a""b; DROP TABLE victim; --"."T; x"', '{K ey}',
							   valid_at => '2024-01-01');
SELECT "K ey", "V""al", _version FROM "a""b; DROP TABLE victim; --"."H; x";
SELECT source_table FROM pgcdc.add_table('p', '"a""b; DROP TABLE victim; --"."T; x"');
SELECT count(*) FROM victim;

SET client_min_messages = warning;
DROP EXTENSION pgcdc;
DROP SCHEMA hostile, regress_own, "a""b; DROP TABLE victim; --" CASCADE;
DROP TABLE public.not_yours, public.not_yours_history, public.victim, public.victim_history;
DROP OWNED BY pgcdc_regress_user, pgcdc_regress_admin;
DROP ROLE pgcdc_regress_user, pgcdc_regress_admin;
