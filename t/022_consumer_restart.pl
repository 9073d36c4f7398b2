# The source restarts, and separately the target restarts, while the
# consumer streams a running workload: it reconnects by itself (with
# backoff), keeps applying, and the targets end exactly right.  SIGTERM
# stops it cleanly with status 0.
use strict;
use warnings;
use lib 't';
use ConsumerTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $src = new_node('source', no_extension => 1);
my $dst = new_node('target');
my $log = "$PostgreSQL::Test::Utils::log_path/consumer_restart.log";

$src->safe_psql('postgres', workload_sql());
$dst->safe_psql('postgres', q{
SELECT pgcdc.create_pipeline('p');
SELECT pgcdc.add_table('p', 'public.acct', 'public.acct_mirror', 'mirror');
SELECT pgcdc.add_table('p', 'public.acct', 'public.acct_hist', 'scd2');
SELECT pgcdc.add_table('p', 'public.acct', 'public.acct_log', 'append');
});

my $consumer = start_consumer(consumer_cmd($src, $dst, 'p', '--batch-ms', 50, '--status-interval', 1), $log);
ok(wait_for_row($dst, 'SELECT count(*) > 0 FROM pgcdc.checkpoint'), 'the snapshot is done');
my $mark = $src->safe_psql('postgres', 'SELECT max(id) FROM acct_audit');

# The checkpoint moves: the consumer applies what the workload writes.
sub applies
{
	my ($what) = @_;
	my $at = $dst->safe_psql('postgres', 'SELECT transactions FROM pgcdc.checkpoint');
	ok(wait_for_row($dst, "SELECT transactions > $at + 20 FROM pgcdc.checkpoint", 60),
		"the consumer applies $what");
}

my $workload = start_workload($src);
applies('while the workload runs');

$src->restart;
$workload->finish;    # its session died with the restart
$workload = start_workload($src);
applies('after the source restarted');

$dst->restart;
applies('after the target restarted');

# Both at once, and back after a while: the backoff keeps trying.
$src->stop;
$dst->stop;
sleep 3;
$dst->start;
$src->start;
$workload->finish;
$workload = start_workload($src);
applies('after both were down for a few seconds');

is(stop_workload($src, $workload), 0, 'the last workload run ended cleanly');
$src->safe_psql('postgres', "INSERT INTO acct VALUES (9999, 0, 'sentinel', NULL)");
ok(wait_for_row($dst, 'SELECT EXISTS (SELECT 1 FROM acct_mirror WHERE id = 9999)'),
	'the running consumer caught up with the last change');
# Idle captured tables, busy other tables: the slot still follows (the
# walsender's keepalives are confirmed when nothing is pending), so a
# fast shutdown of the source, which waits for the consumer to confirm
# everything sent, does not hang.
$src->safe_psql('postgres', 'CREATE TABLE other AS SELECT g FROM generate_series(1, 50000) g');
my $written = $src->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');
ok( wait_for_row($src,
		"SELECT confirmed_flush_lsn >= '$written' FROM pg_replication_slots WHERE slot_name = 'pgcdc_p'", 30),
	'the slot advances over WAL of tables the pipeline does not capture');
my $t0 = time;
$src->restart;
cmp_ok(time - $t0, '<', 20, 'the source restarts promptly while the consumer is connected');
$src->safe_psql('postgres', "INSERT INTO acct VALUES (9998, 0, 'after the last restart', NULL)");
ok(wait_for_row($dst, 'SELECT EXISTS (SELECT 1 FROM acct_mirror WHERE id = 9998)'),
	'the consumer reconnected after that restart too');
is(stop_consumer($consumer), 0, 'SIGTERM stops the consumer with status 0');

my $out = slurp_log($log);
like($out, qr/lost the replication connection|lost the source connection|the source ended replication|could not receive data/,
	'the lost source connection is logged');
like($out, qr/retrying in 1 s.*retrying in 2 s/s, 'reconnects back off');
unlike($out, qr/retrying in [3-9] s/, '--max-backoff caps the wait');
like($out, qr/LOG: stopped/, 'a clean stop is logged');

my $changes = $src->safe_psql('postgres', "SELECT count(*) FROM acct_audit WHERE id > $mark");
my $cols = 'id, v, note, pad';
same_rows($src, 'acct', $dst, 'acct_mirror', $cols, 'id', 'mirror equals source');
same_rows($src, 'acct', $dst, 'acct_hist WHERE _is_current', $cols, 'id', 'current scd2 versions equal source');
scd2_check($dst, 'acct_hist', 'id', 'scd2 intervals are well formed');
versions_check($src, 'acct', $dst, 'acct_hist', 'scd2: no duplicate and no missing version');
append_check($dst, 'acct_log', $changes, 'append: every event exactly once');

$src->stop;
$dst->stop;
done_testing();
