# pgcdc_consumer end to end: a snapshot, then inserts, updates, deletes,
# key updates, truncates, TOAST (unchanged and changed), NULLs and many
# types, into a mirror, an scd2 history and an append log; once between
# two clusters and once with one database as both source and target.
use strict;
use warnings;
use lib 't';
use ConsumerTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $cols = 'id, code, qty, amount, big, f8, f4, flag, d, ts, tstz, iv, b, j, js, uid, arr, tags, ip, doc';

my $schema = q{
CREATE TABLE orders (
  id int PRIMARY KEY, code varchar(20), qty int, amount numeric(12,2), big bigint, f8 float8,
  f4 real, flag bool, d date, ts timestamp, tstz timestamptz, iv interval, b bytea, j jsonb,
  js json, uid uuid, arr int[], tags text[], ip inet, doc text);
ALTER TABLE orders ALTER doc SET STORAGE EXTERNAL;
CREATE TABLE items (sku text PRIMARY KEY, name text, price numeric, stock int, secret text);
ALTER TABLE items REPLICA IDENTITY FULL;
INSERT INTO items VALUES ('a', 'apple', 1.10, 5, 's1'), ('b', 'pear', 2, 1, 's2');
CREATE FUNCTION big_doc(seed int) RETURNS text LANGUAGE sql
  AS $$ SELECT string_agg(md5((seed * 10000 + g)::text), '') FROM generate_series(1, 3000) g $$;
};

# Three rows the snapshot copies.
my $before = q{
INSERT INTO orders VALUES
 (1, 'a', 1, 10.50, 9007199254740993, 0.1, 1.5, true, '2026-01-01', '2026-01-01 10:00', '2026-01-01 10:00+02',
  '1 day 02:03:04', '\x00ff', '{"k": [1, 2, {"x": null}]}', '{"b":2,  "a":1}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '{1,2,3}', '{"x y", NULL, "q\"uote"}', '10.0.0.1/8', big_doc(1)),
 (2, 'b', 2, -0.01, NULL, 'NaN', '-Infinity', false, 'infinity', NULL, '-infinity', '-1 mon', '\x', 'null',
  '[]', NULL, '{}', '{}', '::1', 'short'),
 (3, E'tab\tnl\n', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL);
};

# Streamed changes, each statement its own source transaction unless
# grouped in BEGIN/COMMIT.
my $after = q{
INSERT INTO orders VALUES (4, E'\u00e9\u20ac"\\\\', 4, 99999999.99, -1, 1e300, 3.4e38, true, '0001-01-01 BC',
  '2026-06-30 23:59:59.999999', '2026-06-30 23:59:59.999999+00', '100 years', '\xdeadbeef', '{"e": "\u00e9"}',
  '{"nested": {"deep": [true, false]}}', '00000000-0000-0000-0000-000000000000', '{-1,0,NULL}', '{a,b}',
  '192.168.1.0/24', big_doc(4));
INSERT INTO orders (id, code, doc, tags, j, js) VALUES
 (7, E'\\\\N', E'back\\\\slash\r\ncr \x1f us \x1e rs \\\\N end\\\\', ARRAY[E'a\\\\b', 'c"d', E'e\nf', '', NULL],
  '{"k": "line\nbreak \\\\ slash \u001f"}', E'{\n  "a": "x\\\\\\\\y"\n}'),
 (8, '', '', '{}', NULL, NULL);
UPDATE orders SET qty = 11 WHERE id = 1;
UPDATE orders SET doc = big_doc(11) WHERE id = 1;
UPDATE orders SET qty = NULL, amount = NULL, j = NULL WHERE id = 4;
UPDATE orders SET qty = 12, code = 'a2' WHERE id = 1;
DELETE FROM orders WHERE id = 2;
UPDATE orders SET id = 20, qty = 20 WHERE id = 3;
BEGIN;
INSERT INTO orders (id, code, qty) VALUES (5, 'five', 5);
UPDATE orders SET qty = 6 WHERE id = 5;
UPDATE orders SET qty = 7 WHERE id = 5;
COMMIT;
UPDATE orders SET qty = 8 WHERE id = 5;
BEGIN;
INSERT INTO orders (id, code, qty) VALUES (6, 'six', 6);
DELETE FROM orders WHERE id = 6;
COMMIT;
TRUNCATE orders;
INSERT INTO orders (id, code, qty, doc, js, j) VALUES (1, 'again', 100, big_doc(100), '{"b":2,  "a":1, "a":3}', '{"n": 1.50}'),
 (7, 'seven', 7, NULL, '[1,  2]', '"s"');
UPDATE orders SET qty = 101 WHERE id = 1;
UPDATE orders SET id = 2 WHERE id = 7;
INSERT INTO orders (id, code, doc) VALUES (40, 'forty', big_doc(40));
UPDATE orders SET id = 41 WHERE id = 40;
UPDATE orders SET id = 42, qty = 42 WHERE id = 41;
UPDATE items SET stock = 4 WHERE sku = 'a';
UPDATE items SET price = 1.25, secret = 'changed' WHERE sku = 'a';
UPDATE items SET stock = 3 WHERE sku = 'a';
DELETE FROM items WHERE sku = 'b';
INSERT INTO items VALUES ('c', 'plum', NULL, 0, NULL);
UPDATE items SET sku = 'a2' WHERE sku = 'a';
};

sub scenario
{
	my ($src, $dst, $pipeline, $label) = @_;
	my $log = "$PostgreSQL::Test::Utils::log_path/consumer_$pipeline.log";

	$src->safe_psql('postgres', $schema . audit_sql('orders') . $before);
	$dst->safe_psql('postgres', qq{
SELECT pgcdc.create_pipeline('$pipeline');
SELECT pgcdc.add_table('$pipeline', 'public.orders', 'public.orders_mirror', 'mirror');
SELECT pgcdc.add_table('$pipeline', 'public.orders', 'public.orders_hist', 'scd2');
SELECT pgcdc.add_table('$pipeline', 'public.orders', 'public.orders_log', 'append');
SELECT pgcdc.add_table('$pipeline', 'public.orders', 'public.orders_soft', 'mirror', soft_delete => true);
SELECT pgcdc.add_table('$pipeline', 'public.items', 'public.items_mirror', 'mirror', ignore_columns => '{secret}');
SELECT pgcdc.add_table('$pipeline', 'public.items', 'public.items_hist', 'scd2', track_columns => '{price}');
});
	my $cmd = consumer_cmd($src, $dst, $pipeline, '--exit-when-caught-up', '--batch-size', 3, '-v');

	my ($rc, $err) = run_consumer($cmd, $log);
	is($rc, 0, "$label: snapshot run exits 0") or diag($err);
	like($err, qr/initial snapshot done/, "$label: the snapshot is logged");
	same_rows($src, 'orders', $dst, 'orders_mirror', $cols, 'id', "$label: mirror equals source after the snapshot");
	my $mark = $src->safe_psql('postgres', 'SELECT max(id) FROM orders_audit');

	$src->safe_psql('postgres', $after);
	($rc, $err) = run_consumer($cmd, $log);
	is($rc, 0, "$label: streaming run exits 0") or diag($err);
	like($err, qr/caught up with the source/, "$label: it says it caught up");

	same_rows($src, 'orders', $dst, 'orders_mirror', $cols, 'id', "$label: mirror equals source");
	same_rows($src, 'orders', $dst, 'orders_hist WHERE _is_current', $cols, 'id',
		"$label: current scd2 versions equal source");
	scd2_check($dst, 'orders_hist', 'id', "$label: scd2 intervals");
	versions_check($src, 'orders', $dst, 'orders_hist', "$label: one scd2 version per change per key");
	is( $dst->safe_psql('postgres',
			"SELECT string_agg(coalesce(qty::text, 'null'), ',' ORDER BY _version) FROM orders_hist WHERE id = 1"),
		'1,11,11,12,100,101',
		"$label: key 1's versions in source order (TOAST change is a version)");
	is( $dst->safe_psql('postgres',
			"SELECT string_agg(qty::text, ',' ORDER BY _version) FROM orders_hist WHERE id = 5"),
		'7,8', "$label: changes in one source transaction collapse into one version");
	is($dst->safe_psql('postgres', 'SELECT count(*) FROM orders_hist WHERE id = 6'),
		'0', "$label: a row inserted and deleted in one transaction leaves no version");
	is( $dst->safe_psql('postgres',
			"SELECT count(*) FROM orders_hist WHERE id = 1 AND doc IS NULL"),
		'0', "$label: unchanged TOAST is carried into new versions, never NULL");
	is( $dst->safe_psql('postgres',
			"SELECT string_agg(id || ':' || md5(doc), ',' ORDER BY _valid_from) FROM orders_hist WHERE id IN (40, 41, 42)"),
		$src->safe_psql('postgres',
			"SELECT '40:' || md5(doc) || ',41:' || md5(doc) || ',42:' || md5(doc) FROM orders WHERE id = 42"),
		"$label: key updates carry unchanged TOAST from the old key, through a chain");
	is( $dst->safe_psql('postgres',
			"SELECT count(*) FILTER (WHERE _is_current) || '/' || count(*) FROM orders_hist WHERE id IN (3, 20)"),
		'0/2', "$label: the key update closed key 3 and the truncate closed key 20");

	same_rows($src, 'orders', $dst, 'orders_soft WHERE NOT _is_deleted', $cols, 'id',
		"$label: soft-delete mirror: live rows equal source");
	is( $dst->safe_psql('postgres', 'SELECT count(*) > 0 FROM orders_soft WHERE _is_deleted'),
		't', "$label: soft-delete mirror keeps deleted rows flagged");

	# REPLICA IDENTITY FULL, ignore_columns, track_columns.
	my $icols = 'sku, name, price, stock';
	same_rows($src, 'items', $dst, 'items_mirror', $icols, 'sku', "$label: identity-full mirror equals source");
	is( $dst->safe_psql('postgres',
			"SELECT count(*) FROM pg_attribute WHERE attrelid = 'items_mirror'::regclass AND attname = 'secret'"),
		'0', "$label: an ignored column is not created in the target");
	same_rows($src, 'items', $dst, 'items_hist WHERE _is_current', $icols, 'sku',
		"$label: current versions equal source, untracked columns updated in place");
	is( $dst->safe_psql('postgres',
			"SELECT string_agg(price || '/' || _is_current, ',' ORDER BY _version) FROM items_hist WHERE sku = 'a'"),
		'1.10/false,1.25/false', "$label: only a tracked column's change opens a version; the key update closes it");
	scd2_check($dst, 'items_hist', 'sku', "$label: items history intervals");

	my $events = $src->safe_psql('postgres', "SELECT count(*) FROM orders_audit WHERE id > $mark");
	append_check($dst, 'orders_log', $events, "$label: append has one row per event");
	is( $dst->safe_psql('postgres',
			"SELECT string_agg(_op, '' ORDER BY _source_lsn, _source_seq) FROM orders_log WHERE _op <> 'R'"),
		$src->safe_psql('postgres', "SELECT string_agg(op, '' ORDER BY id) FROM orders_audit WHERE id > $mark"),
		"$label: append events in source order");
	is($dst->safe_psql('postgres', "SELECT count(*) FROM orders_log WHERE _op = 'R'"),
		'3', "$label: the snapshot's rows are 'R' events in the append log");
	is( $dst->safe_psql('postgres',
			"SELECT count(*) FROM orders_log WHERE _op = 'R' AND _key = jsonb_build_object('id', _new->'id')"),
		'3', "$label: with their key in _key, as streamed events have it");
	is( $dst->safe_psql('postgres',
			"SELECT _new->>'doc' = (SELECT doc FROM orders_mirror WHERE id = 1) FROM orders_log "
			  . "WHERE _op = 'I' AND (_new->>'id')::int = 1"),
		't', "$label: the append log keeps whole new rows");

	# Nothing new: a third run applies nothing and skips nothing twice.
	my $batches = $dst->safe_psql('postgres', 'SELECT count(*) FROM pgcdc.batch');
	($rc, $err) = run_consumer($cmd, $log);
	is($rc, 0, "$label: an idle run exits 0") or diag($err);
	same_rows($src, 'orders', $dst, 'orders_mirror', $cols, 'id', "$label: still equal after an idle run");
	append_check($dst, 'orders_log', $events, "$label: an idle run appends nothing");
	cmp_ok($dst->safe_psql('postgres', 'SELECT count(*) FROM pgcdc.batch'), '<=', $batches + 1,
		"$label: an idle run applies at most its own marker");
}

my $a = new_node('source', no_extension => 1);
my $b = new_node('target');
scenario($a, $b, 'two', 'two clusters');

my $c = new_node('both');
scenario($c, $c, 'one', 'one database');

# One database: a pipeline that reads pipeline "one"'s mirror with
# origin=none sees what users write there, not what the consumer applied
# (its session carries the replication origin pgcdc_one).
$c->safe_psql('postgres', q{
SELECT pgcdc.create_pipeline('loop', options => '{"origin": "none"}');
SELECT pgcdc.add_table('loop', 'public.orders_mirror', 'public.loop_log', 'append');
});
my $loop_log = "$PostgreSQL::Test::Utils::log_path/consumer_loop.log";
my $loop = consumer_cmd($c, $c, 'loop', '--exit-when-caught-up');
my $one = consumer_cmd($c, $c, 'one', '--exit-when-caught-up');
my ($rc, $err) = run_consumer($loop, $loop_log);
is($rc, 0, 'origin: the second pipeline starts') or diag($err);
is($c->safe_psql('postgres', "SELECT count(*) FROM pg_replication_origin WHERE roname = 'pgcdc_one'"), '1',
	'origin: the consumer created its replication origin');
# (with 300 more rows in one transaction: they go into the mirror by
# COPY, consumer/born.c, and carry the origin as well)
$c->safe_psql('postgres',
	"INSERT INTO orders (id, code) SELECT g, 'via the consumer' FROM generate_series(30, 30) g "
	  . "UNION ALL SELECT g, 'via the consumer' FROM generate_series(1001, 1300) g");
($rc, $err) = run_consumer($one, $loop_log);
is($rc, 0, 'origin: pipeline one applies the insert') or diag($err);
$c->safe_psql('postgres', "UPDATE orders_mirror SET code = 'by hand' WHERE id = 1");
($rc, $err) = run_consumer($loop, $loop_log);
is($rc, 0, 'origin: the second pipeline catches up') or diag($err);
is( $c->safe_psql('postgres',
		"SELECT string_agg(_op || ':' || (_new->>'id') || ':' || (_new->>'code'), ',') FROM loop_log WHERE _op <> 'R'"),
	'U:1:by hand', 'origin: only the change made by hand is captured, not the consumer\'s own');

# Batches in both target sessions (--apply-sessions 2): a statement
# trigger makes each apply statement on orders_mirror take 80 ms, so every next batch
# (one source transaction each, --batch-size 1) is complete while the one
# before is applied, and goes to the other session, where it waits, idle in
# its transaction, longer than the database's idle timeouts allow others.
# Nothing fails, the mirror is exact, and what either session applied
# carries the origin: pipeline "loop" captures none of it.
slow_applies($c, 'orders_mirror');
$c->safe_psql('postgres', q{
ALTER DATABASE postgres SET idle_in_transaction_session_timeout = '40ms';
ALTER DATABASE postgres SET idle_session_timeout = '40ms';
});
# (each insert with 300 more rows: a batch's new keys go into the mirror by
# COPY, consumer/born.c, in whichever session applies it)
$c->safe_psql('postgres',
	"INSERT INTO orders (id, code, qty) SELECT $_, 'two sessions', $_ UNION ALL "
	  . "SELECT 10000 + $_ * 1000 + g, 'two sessions', $_ FROM generate_series(1, 300) g")
  for 100 .. 119;
$c->safe_psql('postgres', "UPDATE orders SET qty = qty + 1 WHERE id = $_") for 100 .. 109;
$c->safe_psql('postgres', "DELETE FROM orders WHERE id = $_") for 110 .. 114;
my $one_log = "$PostgreSQL::Test::Utils::log_path/consumer_one_sessions.log";
($rc, $err) = run_consumer(consumer_cmd($c, $c, 'one', '--exit-when-caught-up', '--batch-size', 1, '-v'), $one_log);
is($rc, 0, 'two sessions: pipeline one applies 35 transactions, one batch each') or diag($err);
my ($first, $second) = session_batches($err);
ok($second >= 5 && $first >= 5,
	"two sessions: batches were applied in both target sessions ($first and $second)")
  or diag($err);
unlike($err, qr/ ERROR: /, 'two sessions: no error on the way (no idle timeout ends a waiting session)');
# and with --apply-sessions 1, every batch in the one session
$c->safe_psql('postgres', "UPDATE orders SET qty = qty * 10 WHERE id = $_") for 115 .. 119;
($rc, $err) = run_consumer(
	consumer_cmd($c, $c, 'one', '--exit-when-caught-up', '--batch-size', 1, '--apply-sessions', 1, '-v'),
	$one_log);
is($rc, 0, 'one session: pipeline one applies 5 more transactions') or diag($err);
($first, $second) = session_batches($err);
ok($first >= 5 && $second == 0, "one session: every batch in the first session ($first and $second)")
  or diag($err);
$c->safe_psql('postgres', q{
ALTER DATABASE postgres RESET idle_in_transaction_session_timeout;
ALTER DATABASE postgres RESET idle_session_timeout;
});
# (row 1 of the mirror was changed by hand above)
same_rows($c, 'orders WHERE id >= 100', $c, 'orders_mirror WHERE id >= 100', $cols, 'id',
	'two sessions: mirror equals source');
($rc, $err) = run_consumer($loop, $loop_log);
is($rc, 0, 'two sessions: the second pipeline catches up') or diag($err);
is( $c->safe_psql('postgres',
		"SELECT string_agg(_op || ':' || (_new->>'id') || ':' || (_new->>'code'), ',') FROM loop_log WHERE _op <> 'R'"),
	'U:1:by hand', 'two sessions: what either session applied carries the origin, so none of it is captured');

# How a stream is cut into batches (--idle-flush on, the default): a burst
# that fills batches faster than --batch-size per --batch-ms is not cut at
# its pauses but at --batch-size (larger batches cost the target less per
# event); a lone transaction goes after a tenth of --batch-ms.
$a->safe_psql('postgres', q{
CREATE TABLE burst (id int PRIMARY KEY, v text);
CREATE PROCEDURE burst(n int) LANGUAGE plpgsql AS $$
BEGIN
	FOR k IN 0 .. n - 1 LOOP
		INSERT INTO burst SELECT k * 500 + g, 'v' FROM generate_series(1, 500) g;
		COMMIT;
		PERFORM pg_sleep(0.05);
	END LOOP;
END $$;
});
$b->safe_psql('postgres', q{
SELECT pgcdc.create_pipeline('rate');
SELECT pgcdc.add_table('rate', 'public.burst', 'public.burst_mirror');
});
my $rate_log = "$PostgreSQL::Test::Utils::log_path/consumer_rate.log";
my $rate = start_consumer(consumer_cmd($a, $b, 'rate', '--batch-size', 10000, '--batch-ms', 8000), $rate_log);
ok(wait_for_log($rate_log, qr/streaming from slot/), 'batches: streaming');
$a->safe_psql('postgres', 'CALL burst(30)');
my $t0 = time;
ok(wait_for_row($b, 'SELECT count(*) = 15000 FROM burst_mirror'),
	'batches: a burst of 30 transactions of 500 inserts, 50 ms apart, is applied');
# its last batch (10 transactions, half of --batch-size) goes when the source
# has been silent for a tenth of --batch-ms, not after half of --batch-ms (4 s)
cmp_ok(time - $t0, '<', 3.5, 'batches: the last one soon after the burst ends');
is( $b->safe_psql('postgres',
		"SELECT string_agg(transactions::text, ', ' ORDER BY first_lsn) FROM pgcdc.batch "
		  . "WHERE pipeline = 'rate' AND inserts > 0"),
	'20, 10', 'batches: it went in batches of --batch-size (20 transactions), not cut at its pauses');
$t0 = time;
$a->safe_psql('postgres', "INSERT INTO burst VALUES (0, 'lone')");
ok(wait_for_row($b, 'SELECT EXISTS (SELECT FROM burst_mirror WHERE id = 0)', 6),
	'batches: a lone transaction is applied long before --batch-ms (8 s)');
note sprintf('the lone transaction was applied after %.1f s', time - $t0);
is(stop_consumer($rate), 0, 'batches: stopped');

$_->stop for ($a, $b, $c);
done_testing();
