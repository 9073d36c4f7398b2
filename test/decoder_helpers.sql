-- Helpers for the decoder tests (\i from each sql/decoder_*.sql).
-- ev(slot, options...) consumes the slot and returns each event as its JSON
-- text, keys in emitted order, with values that differ run to run
-- (xid, LSNs, timestamps) masked as "*".  Parsing as json also checks that
-- every event is JSON.
SET client_min_messages = warning;
CREATE OR REPLACE FUNCTION pgcdc_mask(data text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT '{' || string_agg(to_json(key)::text || ':' ||
           CASE WHEN key IN ('xid', 'commit_lsn', 'lsn', 'ts', 'end_lsn')
                     AND value::text <> 'null'
                THEN '"*"' ELSE value::text END,
           ',' ORDER BY ord) || '}'
  FROM json_each(data::json) WITH ORDINALITY AS e(key, value, ord)
$$;
CREATE OR REPLACE FUNCTION ev(slot name, VARIADIC opts text[] DEFAULT '{}')
RETURNS SETOF text LANGUAGE sql AS $$
  SELECT pgcdc_mask(data)
  FROM pg_logical_slot_get_changes(slot, NULL, NULL, VARIADIC opts)
$$;
RESET client_min_messages;
