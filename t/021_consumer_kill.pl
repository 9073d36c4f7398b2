# Exactly once under kill -9: a workload of mixed inserts, updates, deletes
# and key updates runs on the source while the consumer is killed with
# SIGKILL at random moments and restarted, again and again.  At the end
# the mirror equals the source, the scd2 history has exactly one version
# per change (checked against a trigger-filled audit on the source), and
# the append log has every event exactly once.
use strict;
use warnings;
use lib 't';
use ConsumerTest;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $kills = $ENV{PGCDC_KILLS} // 12;
my $src = new_node('source', no_extension => 1);
my $dst = new_node('target');
my $log = "$PostgreSQL::Test::Utils::log_path/consumer_kill.log";

$src->safe_psql('postgres', workload_sql());
$dst->safe_psql('postgres', q{
SELECT pgcdc.create_pipeline('p');
SELECT pgcdc.add_table('p', 'public.acct', 'public.acct_mirror', 'mirror');
SELECT pgcdc.add_table('p', 'public.acct', 'public.acct_hist', 'scd2');
SELECT pgcdc.add_table('p', 'public.acct', 'public.acct_log', 'append');
});

my @args = ('--batch-size', 40, '--batch-ms', 50, '--status-interval', 1);
my $cmd = consumer_cmd($src, $dst, 'p', @args);

# The snapshot first, undisturbed: the append log's boundary is then known.
my ($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'p', @args, '--exit-when-caught-up'), $log);
is($rc, 0, 'snapshot run exits 0') or diag($err);
my $mark = $src->safe_psql('postgres', 'SELECT max(id) FROM acct_audit');

my $workload = start_workload($src);

# Kill at random moments: right after start (connecting, creating temp
# tables), in the middle of batches, between them.
srand($ENV{PGCDC_SEED} // time);
my ($killed, $restarts) = (0, 0);
for my $i (1 .. $kills)
{
	my $h = start_consumer($cmd, $log);
	$restarts++;
	usleep(int(rand($i % 3 == 0 ? 300_000 : 2_000_000)) + 50_000);
	my $status = kill9_consumer($h);
	$killed++ if ($status & 127) == 9;
}
is($killed, $kills, "the consumer was killed with SIGKILL $kills times");

is(stop_workload($src, $workload), 0, 'the workload ran without errors');

($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'p', @args, '--exit-when-caught-up'), $log);
is($rc, 0, 'the last run catches up and exits 0') or diag($err);

my $changes = $src->safe_psql('postgres', "SELECT count(*) FROM acct_audit WHERE id > $mark");
cmp_ok($changes, '>', 500, "the workload made $changes changes");
note("$changes changes, $kills kills; " . ($err =~ /(applied \d+ events.*)/ ? $1 : ''));

my $cols = 'id, v, note, pad';
same_rows($src, 'acct', $dst, 'acct_mirror', $cols, 'id', 'mirror equals source');
same_rows($src, 'acct', $dst, 'acct_hist WHERE _is_current', $cols, 'id', 'current scd2 versions equal source');
scd2_check($dst, 'acct_hist', 'id', 'scd2 intervals are well formed');
versions_check($src, 'acct', $dst, 'acct_hist', 'scd2: no duplicate and no missing version');
is( $dst->safe_psql('postgres',
		'SELECT count(*) FROM (SELECT id, _source_lsn, _source_seq FROM acct_hist '
		  . 'GROUP BY 1, 2, 3 HAVING count(*) > 1) d'),
	'0', 'scd2: no change applied twice');
append_check($dst, 'acct_log', $changes, 'append: every event exactly once');
is( $dst->safe_psql('postgres', "SELECT string_agg(_op, '' ORDER BY _source_lsn, _source_seq) FROM acct_log WHERE _op <> 'R'"),
	$src->safe_psql('postgres', "SELECT string_agg(op, '' ORDER BY id) FROM acct_audit WHERE id > $mark"),
	'append: the events in source order');
is($dst->safe_psql('postgres', "SELECT count(*) FROM pgcdc.quarantine"), '0', 'nothing was quarantined');

# What the kills did, for the record.
my $all = slurp_log($log);
my $resumed = () = $all =~ /streaming from slot "pgcdc_p" at/g;
my $skipped = 0;
$skipped += $1 while $all =~ /(\d+) transactions skipped as already applied/g;
note("consumer starts that reached streaming: $resumed; transactions skipped as already applied "
	  . "(last runs' progress lines): $skipped");

$src->stop;
$dst->stop;
done_testing();
