-- origin=none skips changes made under a replication origin (the apply
-- side of a replication tool), so two-way setups do not loop.
\set ECHO none
\i test/decoder_helpers.sql
\set ECHO all

CREATE TABLE org_t (id int PRIMARY KEY, src text);
SELECT 'init' FROM pg_create_logical_replication_slot('org_slot', 'pgcdc');
SELECT 'origin' FROM pg_replication_origin_create('pgcdc_test_origin');

INSERT INTO org_t VALUES (1, 'local');
SELECT 'setup' FROM pg_replication_origin_session_setup('pgcdc_test_origin');
INSERT INTO org_t VALUES (2, 'replicated');
SELECT 'msg' FROM pg_logical_emit_message(true, 'app', 'replicated message');
SELECT pg_replication_origin_session_reset();
INSERT INTO org_t VALUES (3, 'local');

-- any (the default): everything
SELECT e::jsonb->>'op' AS op, e::jsonb->'new'->>'src' AS src
FROM (SELECT pgcdc_mask(data) AS e
      FROM pg_logical_slot_peek_changes('org_slot', NULL, NULL, 'origin', 'any')) s;
-- none: only the local changes, and no empty transactions for the others
SELECT e::jsonb->>'op' AS op, e::jsonb->'new'->>'src' AS src
FROM ev('org_slot', 'origin', 'none') e;

SELECT pg_drop_replication_slot('org_slot');
SELECT pg_replication_origin_drop('pgcdc_test_origin');
DROP TABLE org_t;
