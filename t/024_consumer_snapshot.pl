# The initial snapshot of a large table while a workload keeps changing
# it: every change is either in the snapshot or streamed after it, never
# both and never neither.  The audit table (insert only, captured into an
# append log) shows where each change fell; the scd2 history must hold
# one version per key from the snapshot plus one per streamed change.
use strict;
use warnings;
use lib 't';
use ConsumerTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $rows = 100_000;
my $src = new_node('source', no_extension => 1);
my $dst = new_node('target');
my $log = "$PostgreSQL::Test::Utils::log_path/consumer_snapshot.log";

$src->safe_psql('postgres', workload_sql(rows => $rows, keys => $rows));
$dst->safe_psql('postgres', acct_pipeline_sql('p'));

my $workload = start_workload($src);
usleep(300_000);

# Stopped during the snapshot (SIGTERM), it stops promptly and cleanly;
# metrics answer while the snapshot runs.
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $first = start_consumer(consumer_cmd($src, $dst, 'p', '--metrics-port', $port, '--snapshot-jobs', 1), $log);
sleep 2;
like(slurp_log($log), qr/initial snapshot of 4 tables/, 'the snapshot has started');
unlike(slurp_log($log), qr/initial snapshot done/, 'and is not done yet');
like(http_get($port, '/metrics'), qr/^pgcdc_events_total\{pipeline="p"\} 0$/m, 'metrics answer during the snapshot');
my $t0 = time;
is(stop_consumer($first), 0, 'SIGTERM during the snapshot exits 0');
cmp_ok(time - $t0, '<=', 3, 'and promptly');
is($dst->safe_psql('postgres', 'SELECT count(*) FROM pgcdc.checkpoint'), '0', 'an interrupted snapshot leaves no checkpoint');
my $stopped_log = slurp_log($log);
like($stopped_log, qr/initial snapshot stopped: the next start takes it again/, 'the log says the snapshot stopped');
unlike($stopped_log, qr/ ERROR: /, 'a stop is no error: the cancelled copy logs none');

my $consumer = start_consumer(consumer_cmd($src, $dst, 'p', '--batch-ms', 100), $log);
ok(wait_for_row($dst, 'SELECT count(*) > 0 FROM pgcdc.checkpoint', 100), 'the snapshot finishes');
my $done_at = $src->safe_psql('postgres', 'SELECT now()');
sleep 2;
is(stop_workload($src, $workload), 0, 'the workload ran without errors');
is(stop_consumer($consumer), 0, 'the streaming consumer stops cleanly');
my ($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'p', '--exit-when-caught-up'), $log);
is($rc, 0, 'the consumer catches up') or diag($err);

my $out = slurp_log($log);
like($out, qr/snapshot of public\.acct into public\.acct_mirror: \d+ rows/, 'the snapshot logs rows per table');
like($out, qr/has no checkpoint in the target: taking the snapshot again/, 'the interrupted snapshot is taken again');

my ($in_snapshot, $streamed) = acct_checks($src, $dst);
cmp_ok($in_snapshot - $rows, '>', 0, 'changes made before the consistent point are in the snapshot');
is( $dst->safe_psql('postgres', "SELECT count(*) > 0 FROM audit_log WHERE _op = 'I' AND _commit_ts < '$done_at'"),
	't', 'changes made while the snapshot ran were streamed');

# Copied rows with a NULL in the key the map names are quarantined, as such
# streamed events are; the rest is applied.
$src->safe_psql('postgres', "CREATE TABLE nk (id int PRIMARY KEY, code text, n int); INSERT INTO nk VALUES (1, 'a', 1), (2, NULL, 2)");
$dst->safe_psql('postgres', q{
SELECT pgcdc.create_pipeline('nulls');
SELECT pgcdc.add_table('nulls', 'public.nk', 'public.nk_mirror', key_columns => '{code}');
SELECT pgcdc.add_table('nulls', 'public.nk', 'public.nk_hist', 'scd2', key_columns => '{code}');
});
($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'nulls', '--exit-when-caught-up'), $log, 60);
is($rc, 0, 'a snapshot with NULL keys is taken') or diag($err);
is($dst->safe_psql('postgres', "SELECT string_agg(code, ',') FROM nk_mirror") . ' '
	  . $dst->safe_psql('postgres', "SELECT string_agg(code, ',') FROM nk_hist"), 'a a', 'the other rows are applied');
is( $dst->safe_psql('postgres',
		"SELECT string_agg(target || ':' || error_code || ':' || (event->'new'->>'id'), ' ' ORDER BY target) "
		  . "FROM pgcdc.quarantine WHERE pipeline = 'nulls'"),
	'public.nk_hist:23502:2 public.nk_mirror:23502:2', 'the NULL-key row is quarantined for each target');

# Copied rows the target refuses (a value too long for its type, a CHECK)
# are found by halves and quarantined, each as an 'I' event at the
# snapshot's position with its SQLSTATE; the other rows are applied, and
# a replay after the fix completes the target.  So for an append log with
# a CHECK of its own (its rows are numbered: each quarantined row has its
# own seq, so that each replays).
$src->safe_psql('postgres', q{
CREATE TABLE wide (id int PRIMARY KEY, v text, n int, tags int[], at timestamptz, p point);
INSERT INTO wide SELECT g, CASE WHEN g IN (17, 500, 1999) THEN 'far too long' ELSE 'ok' END, g,
  ARRAY[g, NULL, -g], '2026-12-04 10:00:00.123456+00'::timestamptz + g * interval '1 hour', point(g, -g)
  FROM generate_series(1, 2000) g;
});
$dst->safe_psql('postgres', q{
CREATE TABLE narrow (id int PRIMARY KEY, v varchar(3), n int CHECK (n <> 777), tags int[], at timestamptz, p point);
CREATE TABLE wide_shape (id int, v varchar(3), n int, tags int[], at timestamptz, p point);
SELECT pgcdc.create_history_table('wide_shape', 'public.narrow_hist', '{id}');
SELECT pgcdc.create_pipeline('bad');
SELECT pgcdc.add_table('bad', 'public.wide', 'public.narrow');
SELECT pgcdc.add_table('bad', 'public.wide', 'public.narrow_hist', 'scd2');
CREATE TABLE wide_log (_op text NOT NULL, _source_lsn pg_lsn NOT NULL, _source_seq integer NOT NULL,
  _xid bigint, _commit_ts timestamptz, _key jsonb, _new jsonb, _old jsonb,
  _received_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (_source_lsn, _source_seq),
  CONSTRAINT no_777 CHECK ((_new->>'n')::int IS DISTINCT FROM 777));
SELECT pgcdc.add_table('bad', 'public.wide', 'public.wide_log', 'append');
});
($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'bad', '--exit-when-caught-up'), $log, 120);
is($rc, 0, 'a snapshot with rows the target refuses is taken') or diag($err);
like($err, qr/snapshot of public\.wide into public\.narrow: 4 rows the target refuses are quarantined, the other 1996 applied/,
	'the log counts the refused rows');
like($err, qr/snapshot of public\.wide into public\.wide_log: 1 rows the target refuses are quarantined, the other 1999 applied/,
	'and those of the append log');
is( $dst->safe_psql('postgres', "SELECT count(*) || ' ' || count(*) FILTER (WHERE n = 777) FROM narrow") . ' '
	  . $dst->safe_psql('postgres', 'SELECT count(*) FROM narrow_hist') . ' '
	  . $dst->safe_psql('postgres', "SELECT count(*) || ' ' || count(*) FILTER (WHERE _op = 'R') FROM wide_log"),
	'1996 0 1997 1999 1999', 'the rows the targets accept are applied');
is( $dst->safe_psql('postgres',
		"SELECT error_code || ':' || (event->'new'->>'id') || ':' || (event->>'op') || ':' || ((event->>'seq')::int > 0) "
		  . "FROM pgcdc.quarantine WHERE pipeline = 'bad' AND target = 'public.wide_log'"),
	'23514:777:I:true', 'the append log\'s refused row is quarantined with its number as seq');
is( $dst->safe_psql('postgres',
		"SELECT string_agg(target || ':' || error_code || ':' || (event->'new'->>'id') || ':' || (event->>'op') || ':' "
		  . "  || (event->>'seq'), ' ' ORDER BY target, (event->'new'->>'id')::int) "
		  . "  || ' ' || count(DISTINCT commit_lsn) || ' ' || bool_and(commit_lsn <= (SELECT commit_lsn FROM pgcdc.checkpoint WHERE pipeline = 'bad')) "
		  . "FROM pgcdc.quarantine WHERE pipeline = 'bad' AND status = 'open' AND target <> 'public.wide_log'"),
	'public.narrow:22001:17:I:0 public.narrow:22001:500:I:0 public.narrow:23514:777:I:0 '
	  . 'public.narrow:22001:1999:I:0 public.narrow_hist:22001:17:I:0 public.narrow_hist:22001:500:I:0 '
	  . 'public.narrow_hist:22001:1999:I:0 1 true',
	'each refused row is quarantined per target with its SQLSTATE, as an insert at the snapshot position');
$dst->safe_psql('postgres', q{
ALTER TABLE narrow ALTER v TYPE text, DROP CONSTRAINT narrow_n_check;
ALTER TABLE narrow_hist ALTER v TYPE text;
ALTER TABLE wide_log DROP CONSTRAINT no_777;
});
is($dst->safe_psql('postgres', "SELECT applied || ' ' || failed FROM pgcdc.quarantine_replay(pipeline => 'bad')"),
	'8 0', 'after the fix the refused rows replay');
is( $dst->safe_psql('postgres',
		"SELECT count(*) || ' ' || count(DISTINCT _new->>'id') || ' ' || string_agg(_op, '') FILTER (WHERE _new->>'n' = '777') "
		  . "FROM wide_log"),
	'2000 2000 I', 'the append log has every row once, the replayed one as an insert');
same_rows($src, 'wide', $dst, 'narrow', 'id, v, n, tags, at, p::text', 'id', 'the mirror equals the source');
same_rows($src, 'wide', $dst, 'narrow_hist', 'id, v, n, tags, at, p::text', 'id', 'the history\'s versions equal the source');
is( $dst->safe_psql('postgres',
		"SELECT count(*) || ' ' || count(*) FILTER (WHERE _is_current AND _version = 1) || ' ' || count(*) FILTER (WHERE v = 'far too long') FROM narrow_hist"),
	'2000 2000 3', 'the history has one current first version per row');

# A target that refuses much of a table does not fit it: the copy stops
# after 1000 refused rows and the snapshot fails (status 1, nothing kept).
$src->safe_psql('postgres', "CREATE TABLE longer (id int PRIMARY KEY, v text); INSERT INTO longer SELECT g, 'far too long' FROM generate_series(1, 1001) g");
$dst->safe_psql('postgres', q{
CREATE TABLE shorter (id int PRIMARY KEY, v varchar(3));
SELECT pgcdc.create_pipeline('worse');
SELECT pgcdc.add_table('worse', 'public.longer', 'public.shorter');
});
($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'worse', '--exit-when-caught-up'), $log, 120);
is($rc, 1, 'a snapshot the target refuses wholesale exits 1') or diag($err);
like($err, qr/target public\.shorter refuses more than 1000 rows of public\.longer, the last: value too long.*\n.*ERROR: the initial snapshot of pipeline "worse" failed on a table's rows\nHINT:  /s,
	'and says why');
is($dst->safe_psql('postgres', "SELECT count(*) FROM pgcdc.quarantine WHERE pipeline = 'worse'"), '0',
	'and quarantines nothing of it');

$src->stop;
$dst->stop;
done_testing();
