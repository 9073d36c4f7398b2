# A running consumer notices its pipeline change: pause_pipeline stops it
# applying (resume_pipeline starts it again), add_table and remove_table
# take effect without a restart; a target created after the snapshot gets
# a copy of its own (again at the next start, if killed during it), and
# the stream skips for it the changes the copy holds.  A batch that keeps
# failing shows in pgcdc.status.  A column added at the source reaches the
# targets, whether the consumer ran then or was stopped; one dropped there
# stays in the targets the consumer made, no longer NOT NULL; a changed
# column type is followed by them.
use strict;
use warnings;
use lib 't';
use ConsumerTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $src = new_node('source', no_extension => 1);
my $dst = new_node('target');
my $log = "$PostgreSQL::Test::Utils::log_path/consumer_changes.log";

$src->safe_psql('postgres', q{
CREATE TABLE a (id int PRIMARY KEY, v text);
CREATE TABLE b (id int PRIMARY KEY, v text);
INSERT INTO a VALUES (1, 'a1');
INSERT INTO b VALUES (1, 'b1'), (2, 'b2');
});
$dst->safe_psql('postgres', q{
SELECT pgcdc.create_pipeline('p');
SELECT pgcdc.add_table('p', 'public.a', 'public.a_mirror');
});

my $h = start_consumer(consumer_cmd($src, $dst, 'p', '--batch-ms', 50), $log);
$src->safe_psql('postgres', "INSERT INTO a VALUES (2, 'a2')");
# (the consumer creates the target first)
ok(wait_for_row($dst, "SELECT to_regclass('public.a_mirror') IS NOT NULL"), 'the target is created');
ok(wait_for_row($dst, "SELECT EXISTS (SELECT FROM a_mirror WHERE id = 2)"), 'streaming');

# --- pause and resume while it runs
my $at = length(slurp_log($log));
$dst->safe_psql('postgres', "SELECT pgcdc.pause_pipeline('p')");
ok(wait_for_log($log, qr/pipeline "p" was paused: stopping/, $at), 'a pause is noticed by the running consumer');
$src->safe_psql('postgres', "INSERT INTO a VALUES (3, 'while paused')");
sleep 2;
is($dst->safe_psql('postgres', 'SELECT count(*) FROM a_mirror WHERE id = 3'), '0', 'nothing is applied while paused');
# the lag shows, and grows, while paused: the consumer looks every 5 s
for my $id (5, 6)
{
	$src->safe_psql('postgres', "INSERT INTO a VALUES ($id, 'while paused')");
	my $lsn = $src->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');
	ok( wait_for_row($dst, "SELECT source_lsn >= '$lsn' AND lag_bytes > 0 FROM pgcdc.status WHERE pipeline = 'p'"),
		"pgcdc.status shows the source moving on while paused ($id)");
}
my @waiting = slurp_log($log) =~ /pipeline "p" is paused; waiting/g;
is(scalar @waiting, 1, 'the pause is logged once, not at every look');
$dst->safe_psql('postgres', "SELECT pgcdc.resume_pipeline('p')");
ok(wait_for_row($dst, "SELECT count(*) = 3 FROM a_mirror WHERE id IN (3, 5, 6)"), 'resumed: the changes made meanwhile come');
like(slurp_log($log), qr/pipeline "p" was resumed/, 'the resume is logged');

# --- a table map added while it runs
$at = length(slurp_log($log));
$dst->safe_psql('postgres', "SELECT pgcdc.add_table('p', 'public.b', 'public.b_mirror')");
ok(wait_for_log($log, qr/pipeline "p" or its table maps changed: starting over/, $at), 'an added table map is noticed');
ok(wait_for_log($log, qr/copy of the tables added to pipeline "p" done at/, $at),
	'a mirror target created after the snapshot gets a copy of its own');
$src->safe_psql('postgres', "INSERT INTO b VALUES (3, 'b3')");
ok(wait_for_row($dst, "SELECT EXISTS (SELECT FROM b_mirror WHERE id = 3)"), 'the added table streams');
is($dst->safe_psql('postgres', 'SELECT string_agg(id || v, \',\' ORDER BY id) FROM b_mirror'), '1b1,2b2,3b3',
	'its rows from before and its changes since');

# --- a table map removed while it runs
$at = length(slurp_log($log));
$dst->safe_psql('postgres', "SELECT pgcdc.remove_table('p', 'public.a', 'public.a_mirror')");
ok(wait_for_log($log, qr/pipeline "p" or its table maps changed: starting over/, $at), 'a removed table map is noticed');
ok(wait_for_log($log, qr/streaming from slot/, $at), 'and streaming goes on');
$src->safe_psql('postgres', "INSERT INTO a VALUES (4, 'after removal'); INSERT INTO b VALUES (4, 'b4')");
ok(wait_for_row($dst, "SELECT EXISTS (SELECT FROM b_mirror WHERE id = 4)"), 'the other map still streams');
is($dst->safe_psql('postgres', 'SELECT count(*) FROM a_mirror WHERE id = 4'), '0',
	'the removed map gets nothing more');

# --- a batch that keeps failing with an error worth a retry (here a trigger
# raising a serialization failure) shows in pgcdc.status, and the pipeline
# recovers once the cause is gone
$dst->safe_psql('postgres', q{
CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN RAISE EXCEPTION 'try again later' USING ERRCODE = '40001'; END $$;
CREATE TRIGGER stall BEFORE INSERT ON b_mirror FOR EACH ROW EXECUTE FUNCTION stall();
});
$src->safe_psql('postgres', "INSERT INTO b VALUES (5, 'b5')");
ok( wait_for_row($dst,
		"SELECT last_batch_status = 'failed' AND last_batch_error LIKE 'try again later (SQLSTATE 40001)%' "
		  . "AND lag_bytes > 0 FROM pgcdc.status WHERE pipeline = 'p'"),
	'a batch that failed and will be retried shows in pgcdc.status with its error, and the lag');
$dst->safe_psql('postgres', 'DROP TRIGGER stall ON b_mirror');
ok(wait_for_row($dst, "SELECT EXISTS (SELECT FROM b_mirror WHERE id = 5)"), 'the retry applies it once the cause is gone');
ok(wait_for_row($dst, "SELECT last_batch_status = 'ok' FROM pgcdc.status WHERE pipeline = 'p'"),
	'and pgcdc.status is ok again');

# --- a column added at the source while it runs is added to the targets
$at = length(slurp_log($log));
$src->safe_psql('postgres', "ALTER TABLE b ADD COLUMN note text; INSERT INTO b VALUES (7, 'b7', 'new column')");
ok(wait_for_log($log, qr/source table public\.b has a new or dropped column "note": starting over/, $at), 'the new column is noticed');
ok(wait_for_log($log, qr/added column "note" of source table public\.b to target public\.b_mirror/, $at),
	'and added to the target');
ok(wait_for_row($dst, "SELECT EXISTS (SELECT FROM b_mirror WHERE id = 7 AND note = 'new column')"),
	'the change that brought it is applied with it');

is(stop_consumer($h), 0, 'SIGTERM stops it with status 0');

# --- a column added while it is stopped: added at the next start to the
# targets it created, not to one made by hand
$dst->safe_psql('postgres', q{
CREATE TABLE b_narrow (id int PRIMARY KEY, v text);
SELECT pgcdc.add_table('p', 'public.b', 'public.b_narrow');
});
$src->safe_psql('postgres', q{
ALTER TABLE b ADD COLUMN qty int DEFAULT 5;
UPDATE b SET qty = 9 WHERE id = 7;
INSERT INTO b VALUES (8, 'b8', 'while stopped', 11);
});
$at = length(slurp_log($log));
$h = start_consumer(consumer_cmd($src, $dst, 'p', '--batch-ms', 50), $log);
ok(wait_for_row($dst, "SELECT EXISTS (SELECT FROM b_mirror WHERE id = 8)"), 'restarted: the backlog comes');
ok(wait_for_log($log, qr/added column "qty" of source table public\.b to target public\.b_mirror/, $at),
	'the column added while it was stopped is added to the target it created');
is($dst->safe_psql('postgres', 'SELECT id, note, qty FROM b_mirror WHERE id IN (7, 8) ORDER BY id'),
	"7|new column|9\n8|while stopped|11", 'with the values of the changes made since');
ok(wait_for_row($dst, "SELECT EXISTS (SELECT FROM b_narrow WHERE id = 8 AND v = 'b8')"),
	'a target made by hand gets the changes');
is($dst->safe_psql('postgres',
		"SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute "
		  . "WHERE attrelid = 'b_narrow'::regclass AND attnum > 0 AND attname NOT LIKE '\\_%'"),
	'id,v', 'and keeps the columns it was made with');
is(stop_consumer($h), 0, 'stopped again');

# --- a column dropped at the source: a target the consumer made keeps it,
# with its values, but no longer NOT NULL (or every new row would be
# quarantined); events that still carry a column dropped since (added and
# dropped while the consumer was stopped) do not make it start over forever
$src->safe_psql('postgres', q{
CREATE TABLE c (id int PRIMARY KEY, must text NOT NULL, n int NOT NULL);
});
$dst->safe_psql('postgres', q{
SELECT pgcdc.add_table('p', 'public.c', 'public.c_mirror');
SELECT pgcdc.add_table('p', 'public.c', 'public.c_hist', 'scd2');
});
$at = length(slurp_log($log));
$h = start_consumer(consumer_cmd($src, $dst, 'p', '--batch-ms', 50), $log);
ok(wait_for_row($dst, "SELECT to_regclass('public.c_hist') IS NOT NULL"), 'the targets are created');
ok(wait_for_log($log, qr/copy of the tables added to pipeline "p" done at/, $at),
	'mirror and scd2 targets created after the snapshot get a copy of their own');
$src->safe_psql('postgres', "INSERT INTO c VALUES (1, 'c1', 1); UPDATE c SET n = 2 WHERE id = 1");
ok(wait_for_row($dst, "SELECT EXISTS (SELECT FROM c_mirror WHERE id = 1 AND must = 'c1' AND n = 2)"),
	'a table with NOT NULL columns streams');
$src->safe_psql('postgres', "ALTER TABLE c DROP COLUMN must; INSERT INTO c VALUES (2, 20); UPDATE c SET n = 3 WHERE id = 1");
ok(wait_for_log($log, qr/source table public\.c has a new or dropped column "must": starting over/, $at),
	'a dropped column is noticed while it runs');
ok(wait_for_log($log, qr/column "must" of target public\.c_hist is no longer in source table public\.c/, $at),
	'and the scd2 target it made no longer requires it');
ok(wait_for_row($dst, "SELECT EXISTS (SELECT FROM c_mirror WHERE id = 2)"), 'rows written after the drop are applied');
is($dst->safe_psql('postgres', "SELECT string_agg(id || ':' || coalesce(must, '-') || ':' || n, ' ' ORDER BY id) FROM c_mirror"),
	'1:c1:3 2:-:20', 'mirror: the old values are kept, the new rows have the column NULL');
is( $dst->safe_psql('postgres',
		"SELECT string_agg(id || ':' || coalesce(must, '-') || ':' || n || ':' || _is_current, ' ' ORDER BY id, _valid_from) FROM c_hist"),
	'1:c1:1:false 1:c1:2:false 1:-:3:true 2:-:20:true', 'scd2: one version per change, the history keeps the old values');
is($dst->safe_psql('postgres', "SELECT count(*) FROM pgcdc.quarantine WHERE source_table = 'public.c'"), '0',
	'nothing was quarantined');
is(stop_consumer($h), 0, 'stopped');

$src->safe_psql('postgres', q{
ALTER TABLE c ADD COLUMN tmp text;
INSERT INTO c VALUES (3, 30, 'gone soon');
ALTER TABLE c DROP COLUMN tmp;
INSERT INTO c VALUES (4, 40);
});
my ($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'p', '--exit-when-caught-up'), $log, 60);
is($rc, 0, 'a backlog with a column added and dropped since is applied') or diag($err);
is($dst->safe_psql('postgres', "SELECT string_agg(id::text, ',' ORDER BY id) FROM c_mirror"), '1,2,3,4',
	'every row of it');

# --- mirror, scd2 and append maps added while the consumer is stopped, with
# changes to their table since the checkpoint: the copy is taken after
# them, at P, and the stream, resuming from the checkpoint, skips for these
# targets what P holds: no change twice, also when the first attempt to
# stream fails (a trigger on another target asks for a retry) and the
# next one knows P from the target's comment only.
$src->safe_psql('postgres', q{
CREATE TABLE d (id int PRIMARY KEY, v text);
INSERT INTO d SELECT g, 'v' || g FROM generate_series(1, 50) g;
UPDATE d SET v = 'updated' WHERE id <= 10;
DELETE FROM d WHERE id BETWEEN 11 AND 20;
INSERT INTO d VALUES (15, 're-inserted');
INSERT INTO b VALUES (50, 'stall');
});
$dst->safe_psql('postgres', q{
SELECT pgcdc.add_table('p', 'public.d', 'public.d_mirror');
SELECT pgcdc.add_table('p', 'public.d', 'public.d_hist', 'scd2');
SELECT pgcdc.add_table('p', 'public.d', 'public.d_log', 'append');
CREATE FUNCTION stall_b() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN IF NEW.v = 'stall' THEN RAISE EXCEPTION 'try again later' USING ERRCODE = '40001'; END IF; RETURN NEW; END $$;
CREATE TRIGGER stall_b BEFORE INSERT ON b_mirror FOR EACH ROW EXECUTE FUNCTION stall_b();
});
$src->safe_psql('postgres', "UPDATE d SET v = 'after the map' WHERE id IN (1, 15, 30); DELETE FROM d WHERE id = 40");
$at = length(slurp_log($log));
$h = start_consumer(consumer_cmd($src, $dst, 'p', '--batch-ms', 50, '--max-backoff', 1), $log);
ok(wait_for_log($log, qr/copy of the tables added to pipeline "p" done at/, $at), 'the added targets are copied');
ok(wait_for_row($dst, "SELECT last_batch_status = 'failed' FROM pgcdc.status WHERE pipeline = 'p'"),
	'the first batch after the copy fails, to be retried');
like( $dst->safe_psql('postgres', "SELECT obj_description('public.d_hist'::regclass, 'pg_class')"),
	qr/^public\.d: created by pgcdc_consumer, .*; copied at [0-9A-F]+\/[0-9A-F]+$/,
	'the target says where it was copied');
$dst->safe_psql('postgres', 'DROP TRIGGER stall_b ON b_mirror');
ok(wait_for_row($dst, "SELECT EXISTS (SELECT FROM b_mirror WHERE id = 50)"), 'the retry applies the batch');
is(stop_consumer($h), 0, 'stopped');
my @copies = substr(slurp_log($log), $at) =~ /copy of the tables added to pipeline "p" done/g;
is(scalar @copies, 1, 'the retry does not copy again');
is( $dst->safe_psql('postgres', "SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM d_mirror"),
	$src->safe_psql('postgres', "SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM d"),
	'the mirror equals the source');
is($dst->safe_psql('postgres', "SELECT count(*) FROM d_mirror"), '40', '(40 rows)');
is( $dst->safe_psql('postgres',
		"SELECT count(*) || ' ' || count(*) FILTER (WHERE _is_current AND _version = 1) FROM d_hist"),
	'40 40', 'scd2: one version per row of the copy, none from the changes it holds');
is( $dst->safe_psql('postgres', "SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM d_hist"),
	$src->safe_psql('postgres', "SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM d"),
	'with the source\'s rows');
is($dst->safe_psql('postgres', "SELECT string_agg(_op || ':' || n, ' ' ORDER BY _op) FROM (SELECT _op, count(*) n FROM d_log GROUP BY 1) x"),
	'R:40', 'append: one read event per row of the copy, none from the changes it holds');
# changes after P reach every target once
$src->safe_psql('postgres', "UPDATE d SET v = 'later' WHERE id = 2; DELETE FROM d WHERE id = 3; INSERT INTO d VALUES (100, 'new')");
($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'p', '--exit-when-caught-up'), $log, 60);
is($rc, 0, 'the changes after the copy') or diag($err);
is( $dst->safe_psql('postgres', "SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM d_mirror"),
	$src->safe_psql('postgres', "SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM d"),
	'the mirror equals the source');
is( $dst->safe_psql('postgres',
		"SELECT string_agg(id || ':' || v || ':' || _version || ':' || _is_current, ' ' ORDER BY id, _version) "
		  . "FROM d_hist WHERE id IN (2, 3, 100)"),
	'2:updated:1:false 2:later:2:true 3:updated:1:false 100:new:1:true', 'scd2: a version per change since');
is($dst->safe_psql('postgres', "SELECT string_agg(_op || ':' || n, ' ' ORDER BY _op) FROM (SELECT _op, count(*) n FROM d_log GROUP BY 1) x"),
	'D:1 I:1 R:40 U:1', 'append: each change since once');
# rows of the copy with a NULL in the key the map names are quarantined,
# the others copied
$src->safe_psql('postgres', "CREATE TABLE e (id int PRIMARY KEY, code text); INSERT INTO e VALUES (1, 'a'), (2, NULL)");
$dst->safe_psql('postgres', "SELECT pgcdc.add_table('p', 'public.e', 'public.e_mirror', key_columns => '{code}')");
$at = length(slurp_log($log));
$src->safe_psql('postgres', "INSERT INTO e VALUES (3, 'c')");
($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'p', '--exit-when-caught-up'), $log, 60);
is($rc, 0, 'a copy with a NULL key') or diag($err);
like($err, qr/snapshot of public\.e into public\.e_mirror: 1 rows have a NULL key and are quarantined/, 'says so');
is($dst->safe_psql('postgres', "SELECT string_agg(id::text, ',' ORDER BY id) FROM e_mirror"), '1,3',
	'the other rows are copied or streamed');

# --- column types changed at the source: targets the consumer made follow
# them.  While it runs: a type change shows in no event, so before each
# batch it compares the source's columns with those at its start, and
# starts over (the batch comes again) to alter the targets first: nothing
# is refused, nothing rounded.  While it is stopped: the next start alters
# the targets before it streams.
$src->safe_psql('postgres', "CREATE TABLE g (id int PRIMARY KEY, n int, code varchar(3), amt numeric(6,2))");
$dst->safe_psql('postgres', q{
SELECT pgcdc.add_table('p', 'public.g', 'public.g_mirror');
SELECT pgcdc.add_table('p', 'public.g', 'public.g_hist', 'scd2');
});
$at = length(slurp_log($log));
$h = start_consumer(consumer_cmd($src, $dst, 'p', '--batch-ms', 50), $log);
ok(wait_for_row($dst, "SELECT to_regclass('public.g_hist') IS NOT NULL AND to_regclass('public.g_mirror') IS NOT NULL"),
	'the targets of g are created');
$src->safe_psql('postgres', "INSERT INTO g VALUES (1, 1, 'abc', 1.25)");
ok(wait_for_row($dst, "SELECT EXISTS (SELECT FROM g_hist WHERE id = 1) AND EXISTS (SELECT FROM g_mirror WHERE id = 1)"),
	'streaming g');
$src->safe_psql('postgres', q{
ALTER TABLE g ALTER n TYPE bigint, ALTER code TYPE varchar(10), ALTER amt TYPE numeric(10,4);
INSERT INTO g VALUES (2, 5000000000, 'abcdefghij', 2);
UPDATE g SET code = 'abcd', amt = 1.2345 WHERE id = 1;
});
ok( wait_for_row($dst,
		"SELECT EXISTS (SELECT FROM g_mirror WHERE id = 2) AND EXISTS (SELECT FROM g_hist WHERE id = 2) "
		  . "AND EXISTS (SELECT FROM g_mirror WHERE id = 1 AND code = 'abcd')"),
	'the changes after the type change arrive');
like(substr(slurp_log($log), $at), qr/the columns of source table public\.g changed: starting over/,
	'the change is noticed');
like(substr(slurp_log($log), $at), qr/column "amt" of target public\.g_hist is now numeric\(10,4\), as in source table public\.g \(it was numeric\(6,2\)\)/,
	'and the change of type is logged');
is($dst->safe_psql('postgres', "SELECT count(*) FROM pgcdc.quarantine WHERE source_table = 'public.g'"),
	'0', 'nothing was refused');
is(stop_consumer($h), 0, 'stopped');
$src->safe_psql('postgres', "ALTER TABLE g ALTER amt TYPE numeric(12,6); UPDATE g SET amt = 1.234567 WHERE id = 2");
($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'p', '--exit-when-caught-up'), $log, 60);
is($rc, 0, 'a type changed while it was stopped') or diag($err);
is($dst->safe_psql('postgres', "SELECT string_agg(id || ':' || n || ':' || code || ':' || amt, ' ' ORDER BY id) FROM g_mirror"),
	'1:1:abcd:1.234500 2:5000000000:abcdefghij:1.234567', 'the mirror holds the values exactly, not rounded');
is( $dst->safe_psql('postgres',
		"SELECT string_agg(id || ':' || code || ':' || amt || ':' || _version, ' ' ORDER BY id, _version) FROM g_hist"),
	'1:abc:1.250000:1 1:abcd:1.234500:2 2:abcdefghij:2.000000:1 2:abcdefghij:1.234567:2',
	'the history too, a version per change');
is( $dst->safe_psql('postgres',
		"SELECT string_agg(format_type(atttypid, atttypmod), ',' ORDER BY attnum) FROM pg_attribute "
		  . "WHERE attrelid = 'g_mirror'::regclass AND attname IN ('n', 'code', 'amt')"),
	'bigint,character varying(10),numeric(12,6)', 'the target has the source\'s types');

# --- kill -9 during the copy into a mirror target added later: the target
# exists but its copy never committed; the next start copies again instead of
# streaming into a target without the rows from before.  (A rule that sleeps
# holds the copy where the test can kill it.)
$src->safe_psql('postgres', "CREATE TABLE f (id int PRIMARY KEY, v text); INSERT INTO f SELECT g, 'f' || g FROM generate_series(1, 20) g");
$dst->safe_psql('postgres', q{
CREATE FUNCTION public.slow_ok(int) RETURNS boolean LANGUAGE sql AS 'SELECT pg_sleep(0.5) IS NOT NULL OR $1 IS NULL';
SELECT pgcdc.add_table('p', 'public.f', 'public.f_mirror');
SELECT pgcdc.add_rule('p', 'public.f', 'slow', 'public.slow_ok(id)');
});
$at = length(slurp_log($log));
$h = start_consumer(consumer_cmd($src, $dst, 'p', '--batch-ms', 50), $log);
ok(wait_for_row($dst, "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE wait_event = 'PgSleep')"),
	'the copy into the added target is under way');
kill9_consumer($h);
ok(wait_for_row($dst, "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE wait_event = 'PgSleep')"),
	'killed (its copy process stops with it)');
is($dst->safe_psql('postgres', 'SELECT count(*) FROM f_mirror'), '0', 'the target exists, without its rows');
$dst->safe_psql('postgres', "SELECT pgcdc.drop_rule('p', 'public.f', 'slow')");
$src->safe_psql('postgres', "INSERT INTO f VALUES (21, 'after the kill')");
($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'p', '--exit-when-caught-up'), $log, 60);
is($rc, 0, 'the next start after a kill during the copy') or diag($err);
like($err, qr/the copy into target public\.f_mirror did not finish last time: it is taken again/, 'says so');
is( $dst->safe_psql('postgres', "SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM f_mirror"),
	$src->safe_psql('postgres', "SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM f"),
	'and the target equals the source (21 rows)');
($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'p', '--exit-when-caught-up'), $log, 60);
unlike($err, qr/taken again/, 'a copy that committed is not taken again');

# --- a mapped source table renamed while it runs: the changes made under the
# old name and those made under the new one all arrive, whether they come
# before the consumer looks (the source confirms nothing past the rename
# until it does) or not; the maps take the new name once the stream has
# passed the rename, and so do the marks of the targets it made
# (status updates every second: a position confirmed past the rename would
# reach the source before the consumer looks, which is every 5 s when idle)
$at = length(slurp_log($log));
$h = start_consumer(consumer_cmd($src, $dst, 'p', '--batch-ms', 50, '--status-interval', 1), $log);
ok(wait_for_log($log, qr/streaming from slot/, $at), 'streaming again');
my $n0 = $src->safe_psql('postgres', 'SELECT n FROM c WHERE id = 1');
$src->safe_psql('postgres', q{
UPDATE c SET n = n + 100 WHERE id = 1;
BEGIN; INSERT INTO c VALUES (10, 10); ALTER TABLE c RENAME TO c_renamed; UPDATE c_renamed SET n = 11 WHERE id = 10; COMMIT;
UPDATE c_renamed SET n = n + 1000 WHERE id = 1;
INSERT INTO c_renamed VALUES (11, 11);
});
ok(wait_for_log($log, qr/source table public\.c of pipeline "p" was renamed to public\.c_renamed: following it/, $at),
	'a renamed source table is noticed');
ok( wait_for_log(
		$log, qr/the stream has passed the rename of source table public\.c: pipeline "p" now maps public\.c_renamed/, $at),
	'and followed');
$src->safe_psql('postgres', 'INSERT INTO c_renamed VALUES (12, 12)');
ok(wait_for_row($dst, 'SELECT EXISTS (SELECT FROM c_mirror WHERE id = 12)'), 'changes made after it arrive');
is( $dst->safe_psql('postgres', "SELECT string_agg(id || ':' || n, ' ' ORDER BY id) FROM c_mirror"),
	$src->safe_psql('postgres', "SELECT string_agg(id || ':' || n, ' ' ORDER BY id) FROM c_renamed"),
	'the mirror equals the renamed table, nothing lost around the rename');
is( $dst->safe_psql('postgres',
		'SELECT string_agg(n::text, \',\' ORDER BY _version) FROM (SELECT n, _version FROM c_hist '
		  . 'WHERE id = 1 ORDER BY _version DESC LIMIT 2) v'),
	($n0 + 100) . ',' . ($n0 + 1100),
	'the history has a version for the change before the rename and for the one after');
is($dst->safe_psql('postgres', 'SELECT string_agg(n::text, \',\' ORDER BY _version) FROM c_hist WHERE id = 10'),
	'11', 'a row inserted and updated around the rename in one transaction: one version');
is( $dst->safe_psql('postgres',
		"SELECT string_agg(DISTINCT source_table, ',') FROM pgcdc.table_map WHERE target IN ('public.c_mirror', 'public.c_hist')"),
	'public.c_renamed', 'both maps name the new table');
like($dst->safe_psql('postgres', "SELECT obj_description('public.c_hist'::regclass, 'pg_class')"),
	qr/^public\.c_renamed: created by pgcdc_consumer/, 'and so does the mark of the target it made');
# renamed again while idle: no change under the old name, only under the
# new one, which the stream does not carry yet; keepalives come meanwhile
$at = length(slurp_log($log));
$src->safe_psql('postgres', 'ALTER TABLE c_renamed RENAME TO c_again; INSERT INTO c_again VALUES (13, 13)');
ok( wait_for_log(
		$log, qr/the stream has passed the rename of source table public\.c_renamed: pipeline "p" now maps public\.c_again/, $at),
	'a rename with no change before it is followed too');
ok(wait_for_row($dst, 'SELECT EXISTS (SELECT FROM c_mirror WHERE id = 13)'), 'and its change arrives');
is(stop_consumer($h), 0, 'stopped');

# --- a mapped source table dropped while it runs: its changes from before
# the drop are applied (here one that waits behind a large transaction of
# another table when the drop is seen, and the source connection is lost
# meanwhile: the start over keeps the dropped table's map, its name alone
# being gone), then the consumer stops and says to remove the map
$src->safe_psql('postgres', 'CREATE TABLE z (id int PRIMARY KEY, v int); CREATE TABLE zz (id int PRIMARY KEY, v int)');
$dst->safe_psql('postgres',
	"SELECT pgcdc.add_table('p', 'public.z', 'public.z_mirror'); SELECT pgcdc.add_table('p', 'public.zz', 'public.zz_mirror')");
$at = length(slurp_log($log));
$h = start_consumer(consumer_cmd($src, $dst, 'p'), $log);
ok(wait_for_log($log, qr/streaming from slot/, $at), 'streaming with maps of new tables');
$src->safe_psql('postgres', 'INSERT INTO zz SELECT g, g FROM generate_series(1, 200000) g');
$src->safe_psql('postgres', 'INSERT INTO z VALUES (1, 10)');
$src->safe_psql('postgres', 'DROP TABLE z');
ok(wait_for_log($log, qr/source table public\.z of pipeline "p" was dropped: applying its changes up to the drop/, $at),
	'a dropped source table is noticed');
$src->safe_psql('postgres', "SELECT pg_terminate_backend(pid) FROM pg_stat_replication");
ok(wait_for_log($log, qr/retrying in \d+ s/, $at), 'the lost connection is retried');
$h->finish;
is($h->full_result(0) >> 8, 1, 'then the consumer stops, with status 1');
like(
	substr(slurp_log($log), $at),
	qr/ERROR: source table public\.z of pipeline "p" was dropped at the source; its changes up to the drop are applied\nHINT:  Remove its maps: SELECT pgcdc\.remove_table\('p', 'public\.z'\);/,
	'and says to remove its map');
is( $dst->safe_psql('postgres', "SELECT string_agg(id || ':' || v, ' ') FROM z_mirror") . ' '
	  . $dst->safe_psql('postgres', 'SELECT count(*) FROM zz_mirror'),
	'1:10 200000', 'the change made before the drop is applied, and so is the transaction before it');
$dst->safe_psql('postgres', "SELECT pgcdc.remove_table('p', 'public.z')");

# --- the same, and the consumer killed (kill -9) in that window: the next
# process learns of the drop from the target (pgcdc.checkpoint.source_moves,
# written with the checkpoint), where the name alone would be gone
$src->safe_psql('postgres', 'CREATE TABLE y (id int PRIMARY KEY, v int)');
$dst->safe_psql('postgres', "SELECT pgcdc.add_table('p', 'public.y', 'public.y_mirror')");
$at = length(slurp_log($log));
$h = start_consumer(consumer_cmd($src, $dst, 'p'), $log);
ok(wait_for_log($log, qr/streaming from slot/, $at), 'streaming with a map of another new table');
for my $k (1 .. 3)
{
	$src->safe_psql('postgres',
		"INSERT INTO zz SELECT g, g FROM generate_series($k * 200000 + 1, ($k + 1) * 200000) g");
}
$src->safe_psql('postgres', 'INSERT INTO y VALUES (1, 10)');
$src->safe_psql('postgres', 'DROP TABLE y');
ok(wait_for_log($log, qr/source table public\.y of pipeline "p" was dropped: applying its changes up to the drop/, $at),
	'a dropped source table is noticed');
ok( wait_for_row(
		$dst, q{SELECT source_moves->'dropped' @> '[{"table": "public.y"}]' FROM pgcdc.checkpoint WHERE pipeline = 'p'}),
	'the drop is noted in the checkpoint');
kill9_consumer($h);
note('y_mirror rows at the kill: ' . $dst->safe_psql('postgres', 'SELECT count(*) FROM y_mirror'));
$at = length(slurp_log($log));
$h = start_consumer(consumer_cmd($src, $dst, 'p'), $log);
$h->finish;
is($h->full_result(0) >> 8, 1, 'killed and started again, it stops with status 1');
like(
	substr(slurp_log($log), $at),
	qr/source table public\.y was dropped before this start: applying its changes up to the drop.*ERROR: source table public\.y of pipeline "p" was dropped at the source; its changes up to the drop are applied\n/s,
	'after applying the changes up to the drop, which the new process knew of');
is( $dst->safe_psql('postgres', "SELECT string_agg(id || ':' || v, ' ') FROM y_mirror") . ' '
	  . $dst->safe_psql('postgres', 'SELECT count(*) FROM zz_mirror'),
	'1:10 800000', 'the change made before the drop is applied, and so are the transactions before it');
$dst->safe_psql('postgres', "SELECT pgcdc.remove_table('p', 'public.y')");
$src->safe_psql('postgres', 'CREATE TABLE y (id int PRIMARY KEY, v int); INSERT INTO y VALUES (5, 50)');
$dst->safe_psql('postgres', "SELECT pgcdc.add_table('p', 'public.y', 'public.y_mirror')");
($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'p', '--exit-when-caught-up'), $log, 120);
is($rc, 0, 'a new table of that name, mapped again, is not taken for the dropped one') or diag($err);
is($dst->safe_psql('postgres', 'SELECT v FROM y_mirror WHERE id = 5'), '50', 'and its changes are applied');
is($dst->safe_psql('postgres', q{SELECT coalesce(source_moves::text, 'none') FROM pgcdc.checkpoint WHERE pipeline = 'p'}),
	'none', 'and the note is gone from the checkpoint');

# --- a rename followed while it runs, and the consumer killed before the
# stream passed it: the next process follows it too
$src->safe_psql('postgres', 'CREATE TABLE x (id int PRIMARY KEY, v int)');
$dst->safe_psql('postgres', "SELECT pgcdc.add_table('p', 'public.x', 'public.x_mirror')");
$at = length(slurp_log($log));
$h = start_consumer(consumer_cmd($src, $dst, 'p', '--batch-ms', 50), $log);
ok(wait_for_log($log, qr/streaming from slot/, $at), 'streaming with a map of table x');
$src->safe_psql('postgres', 'INSERT INTO zz SELECT g, g FROM generate_series(800001, 1000000) g');
$src->safe_psql('postgres', 'INSERT INTO x VALUES (1, 1)');
$src->safe_psql('postgres', 'ALTER TABLE x RENAME TO x2');
$src->safe_psql('postgres', 'INSERT INTO x2 VALUES (2, 2)');
ok(wait_for_log($log, qr/source table public\.x of pipeline "p" was renamed to public\.x2: following it/, $at),
	'the rename is noticed');
ok( wait_for_row(
		$dst,
		q{SELECT source_moves->'renamed' @> '[{"from": "public.x", "table": "public.x2"}]' FROM pgcdc.checkpoint WHERE pipeline = 'p'}),
	'the rename is noted in the checkpoint');
is($dst->safe_psql('postgres', "SELECT source_moves->'renamed'->0->>'table' FROM pgcdc.status WHERE pipeline = 'p'"),
	'public.x2', 'and pgcdc.status shows it');
kill9_consumer($h);
note('x_mirror rows at the kill: ' . $dst->safe_psql('postgres', 'SELECT count(*) FROM x_mirror'));
note('maps of public.x at the kill (1: the stream had not passed the rename): '
	  . $dst->safe_psql('postgres', "SELECT count(*) FROM pgcdc.table_map WHERE source_table = 'public.x'"));
$at = length(slurp_log($log));
$h = start_consumer(consumer_cmd($src, $dst, 'p', '--batch-ms', 50), $log);
ok(wait_for_log($log, qr/source table public\.x was renamed to public\.x2 before this start: following it/, $at),
	'the next process knows of the rename');
ok( wait_for_log($log, qr/the stream has passed the rename of source table public\.x: pipeline "p" now maps public\.x2\n/, $at),
	'and follows it');
ok(wait_for_row($dst, "SELECT string_agg(id || ':' || v, ' ' ORDER BY id) = '1:1 2:2' FROM x_mirror"),
	'the changes before and after the rename are applied');
is(stop_consumer($h), 0, 'stopped');
is($dst->safe_psql('postgres', q{SELECT coalesce(source_moves::text, 'none') FROM pgcdc.checkpoint WHERE pipeline = 'p'}),
	'none', 'the rename is no longer noted once passed');
$dst->safe_psql('postgres', "SELECT pgcdc.remove_table('p', 'public.x2')");

# --- renamed twice before the stream has passed the first rename (as a
# migration renaming to a temporary name and then to the final one): the
# changes made under each of the three names arrive
$src->safe_psql('postgres', 'CREATE TABLE w (id int PRIMARY KEY, v int)');
$dst->safe_psql('postgres', "SELECT pgcdc.add_table('p', 'public.w', 'public.w_mirror')");
$at = length(slurp_log($log));
$h = start_consumer(consumer_cmd($src, $dst, 'p', '--batch-ms', 50), $log);
ok(wait_for_log($log, qr/streaming from slot/, $at), 'streaming with a map of table w');
$src->safe_psql('postgres', 'INSERT INTO zz SELECT g, g FROM generate_series(1000001, 1200000) g');
$src->safe_psql('postgres', 'INSERT INTO w VALUES (1, 1)');
$src->safe_psql('postgres', 'ALTER TABLE w RENAME TO w_tmp');
$src->safe_psql('postgres', 'INSERT INTO w_tmp VALUES (2, 2)');
ok(wait_for_log($log, qr/source table public\.w of pipeline "p" was renamed to public\.w_tmp: following it/, $at),
	'the first rename is noticed');
$src->safe_psql('postgres', 'ALTER TABLE w_tmp RENAME TO w_final; INSERT INTO w_final VALUES (3, 3)');
ok(wait_for_log($log, qr/source table public\.w_tmp of pipeline "p" was renamed to public\.w_final: following it/, $at),
	'the second rename is noticed');
# ... and the consumer killed (kill -9) once both are noted in the target:
# the next process follows the chain from the notes
ok( wait_for_row(
		$dst,
		q{SELECT source_moves->'renamed' @> '[{"from": "public.w"}, {"from": "public.w_tmp", "table": "public.w_final"}]' FROM pgcdc.checkpoint WHERE pipeline = 'p'}),
	'both renames are noted in the checkpoint');
kill9_consumer($h);
note('maps of public.w at the kill (1: the stream had not passed the renames): '
	  . $dst->safe_psql('postgres', "SELECT count(*) FROM pgcdc.table_map WHERE source_table = 'public.w'"));
$h = start_consumer(consumer_cmd($src, $dst, 'p', '--batch-ms', 50), $log);
ok( wait_for_log($log, qr/the stream has passed the rename of source table public\.w: pipeline "p" now maps public\.w_final\n/, $at),
	'the map follows to the final name');
ok(wait_for_row($dst, "SELECT string_agg(id || ':' || v, ' ' ORDER BY id) = '1:1 2:2 3:3' FROM w_mirror"),
	'the changes made under the first, the temporary and the final name are applied');
is(stop_consumer($h), 0, 'stopped');
$dst->safe_psql('postgres', "SELECT pgcdc.remove_table('p', 'public.w_final')");

# --- renamed while it was stopped: the name is gone at the start, and the
# slot tells whether changes made under it wait there.  With one waiting it
# says to rename the table back, and doing so loses nothing; with none,
# mapping the new name is enough.
$src->safe_psql('postgres', 'UPDATE c_again SET n = n + 1 WHERE id = 13');
$src->safe_psql('postgres', 'ALTER TABLE c_again RENAME TO c');
($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'p', '--exit-when-caught-up'), $log, 60);
is($rc, 1, 'a rename while it was stopped stops it, with status 1');
like(
	$err,
	qr/ERROR: source table public\.c_again of pipeline "p" does not exist\nHINT:  Changes made under that name since the checkpoint are waiting in the slot\. If it was renamed at the source, rename it back and start pgcdc_consumer: it applies them, and follows the table when it is renamed again while it runs\. Mapping the new name now \(SELECT pgcdc\.rename_source_table\('p', 'public\.c_again', 'schema\.new_name'\)\)/,
	'and says that a change waits under the old name, and how to keep it');
$src->safe_psql('postgres', 'ALTER TABLE c RENAME TO c_again');
$at = length(slurp_log($log));
$h = start_consumer(consumer_cmd($src, $dst, 'p', '--batch-ms', 50), $log);
ok(wait_for_row($dst, 'SELECT n = 14 FROM c_mirror WHERE id = 13'), 'renamed back: the waiting change is applied');
$src->safe_psql('postgres', 'ALTER TABLE c_again RENAME TO c');
ok( wait_for_log(
		$log, qr/the stream has passed the rename of source table public\.c_again: pipeline "p" now maps public\.c\n/, $at),
	'renamed again while it runs: followed');
is(stop_consumer($h), 0, 'stopped');
$src->safe_psql('postgres', 'ALTER TABLE c RENAME TO c_stopped');
($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'p', '--exit-when-caught-up'), $log, 60);
is($rc, 1, 'renamed while stopped, nothing made under the old name since: status 1');
like(
	$err,
	qr/HINT:  No change made under that name since the checkpoint is waiting in the slot\. If it was renamed at the source, map the new name, losing nothing: SELECT pgcdc\.rename_source_table\('p', 'public\.c', 'schema\.new_name'\); if it was dropped: SELECT pgcdc\.remove_table\('p', 'public\.c', 'public\.c_(hist|mirror)'\);/,
	'and says that mapping the new name loses nothing');
$src->safe_psql('postgres', 'ALTER TABLE c_stopped RENAME TO c');

# --- the pipeline's snapshot taken again (slot and checkpoint gone): the
# targets' marks of copies taken after the old snapshot are cleared, since
# their positions belong to the old stream
$dst->safe_psql('postgres', "DELETE FROM pgcdc.checkpoint WHERE pipeline = 'p'");
$src->safe_psql('postgres', "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots");
$src->safe_psql('postgres', "INSERT INTO d VALUES (200, 'in the new snapshot')");
($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'p', '--exit-when-caught-up'), $log, 60);
is($rc, 0, 'a new snapshot of the pipeline') or diag($err);
unlike($dst->safe_psql('postgres', "SELECT obj_description('public.d_hist'::regclass, 'pg_class')"),
	qr/copied at/, 'clears the copy marks');
is( $dst->safe_psql('postgres', "SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM d_hist WHERE _is_current"),
	$src->safe_psql('postgres', "SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM d"),
	'and the history starts again from the source');
$src->stop;
$dst->stop;
done_testing();
