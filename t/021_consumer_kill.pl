# Exactly once under kill -9: a workload of mixed inserts, updates, deletes
# and key updates runs on the source from before the first start while the
# consumer is killed with SIGKILL at random moments (during the snapshot,
# in the middle of batches, between them) and restarted, again and again.
# At the end the mirror equals the source, the scd2 history has exactly one
# version per change (checked against a trigger-filled audit table that is
# captured too), and the append log has every event exactly once.
use strict;
use warnings;
use lib 't';
use ConsumerTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $kills = $ENV{PGCDC_KILLS} // 12;
my $src = new_node('source', no_extension => 1);
my $dst = new_node('target');
my $log = "$PostgreSQL::Test::Utils::log_path/consumer_kill.log";

$src->safe_psql('postgres', workload_sql(rows => 3000, keys => 400));
$dst->safe_psql('postgres', acct_pipeline_sql('p'));
# (-v: a line per batch, saying which of the two target sessions applied it)
my $cmd = consumer_cmd($src, $dst, 'p', '--batch-size', 40, '--batch-ms', 50, '--status-interval', 1, '-v');

my $workload = start_workload($src);
my $seed = $ENV{PGCDC_SEED} // time;
srand($seed);
note("seed $seed");

# The first kills come early, while the snapshot runs; later ones at any
# moment of streaming.
my ($killed, $in_snapshot) = (0, 0);
for my $i (1 .. $kills)
{
	my $snapshot_done = $dst->safe_psql('postgres', 'SELECT count(*) FROM pgcdc.checkpoint');
	my $h = start_consumer($cmd, $log);
	usleep($i <= 3 ? 50_000 + int(rand(350_000)) : 300_000 + int(rand(2_200_000)));
	my $status = kill9_consumer($h);
	$killed++ if ($status & 127) == 9;
	$in_snapshot++ unless $snapshot_done;
}
is($killed, $kills, "the consumer was killed with SIGKILL $kills times");
note("$in_snapshot kills before the first snapshot had completed");

is(stop_workload($src, $workload), 0, 'the workload ran without errors');
my ($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'p', '--exit-when-caught-up'), $log);
is($rc, 0, 'the last run catches up and exits 0') or diag($err);

my ($snap, $streamed) = acct_checks($src, $dst);
cmp_ok($streamed, '>', 500, "the workload made $streamed streamed changes");
cmp_ok($dst->safe_psql('postgres', 'SELECT count(*) FROM pgcdc.batch'), '>', $kills, 'batches were applied between kills');

# What the kills did, for the record.
my $all = slurp_log($log);
my $snapshots = () = $all =~ /initial snapshot done/g;
my $redone = () = $all =~ /has no checkpoint in the target: taking the snapshot again/g;
my $starts = () = $all =~ /streaming from slot "pgcdc_p" at/g;
my $batches = $dst->safe_psql('postgres', 'SELECT count(*) FROM pgcdc.batch');
my (undef, $in_second) = session_batches($all);
# ("initial snapshot done" is logged after the snapshot's commit: a kill
# between the two leaves a completed snapshot without its line)
note("kills: $kills ($in_snapshot before the snapshot completed); 'initial snapshot done' logged: $snapshots, "
	  . "slots dropped to redo an interrupted snapshot: $redone; starts that reached streaming: $starts; "
	  . "batches committed: $batches ($in_second in the second target session); "
	  . "audit rows in the snapshot: $snap, streamed: $streamed");

$src->stop;
$dst->stop;
done_testing();
