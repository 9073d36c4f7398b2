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
# streamed events are; the rest is applied.  A snapshot the target's types
# refuse would fail the same way every time: status 1 and the reason, not
# a retry loop.
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

$src->safe_psql('postgres', "CREATE TABLE wide (id int PRIMARY KEY, v text); INSERT INTO wide VALUES (1, 'far too long')");
$dst->safe_psql('postgres', q{
CREATE TABLE narrow (id int PRIMARY KEY, v varchar(3));
SELECT pgcdc.create_pipeline('bad');
SELECT pgcdc.add_table('bad', 'public.wide', 'public.narrow');
});
($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'bad', '--exit-when-caught-up'), $log, 60);
is($rc, 1, 'a snapshot the target refuses exits 1') or diag($err);
like($err, qr/too long.*\n.*ERROR: the initial snapshot of pipeline "bad" failed on a table's rows\nHINT:  /s,
	'and says why');

$src->stop;
$dst->stop;
done_testing();
