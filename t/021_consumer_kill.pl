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

$src->safe_psql('postgres', q{
CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL, note text, pad text);
} . audit_sql('acct') . q{
CREATE TABLE ctl (stop bool NOT NULL);
INSERT INTO ctl VALUES (false);
INSERT INTO acct SELECT g, 0, 'initial', repeat('x', g) FROM generate_series(1, 200) g;

-- Transactions of one to five distinct keys: insert the absent ones,
-- then update (a tracked column always changes), delete, or move a key.
CREATE PROCEDURE workload() LANGUAGE plpgsql AS $$
DECLARE
  k int;
  r float8;
BEGIN
  LOOP
    FOR k IN SELECT DISTINCT 1 + (random() * 399)::int FROM generate_series(0, (random() * 4)::int) LOOP
      r := random();
      IF NOT EXISTS (SELECT 1 FROM acct WHERE id = k) THEN
        INSERT INTO acct VALUES (k, 0, md5(r::text), CASE WHEN r < 0.1 THEN repeat(md5(k::text), 100) END);
      ELSIF r < 0.2 THEN
        DELETE FROM acct WHERE id = k;
      ELSIF r < 0.25 AND NOT EXISTS (SELECT 1 FROM acct WHERE id = k + 1000) THEN
        UPDATE acct SET id = k + 1000, v = v + 1 WHERE id = k;
      ELSE
        UPDATE acct SET v = v + 1, note = md5(r::text) WHERE id = k;
      END IF;
    END LOOP;
    COMMIT;
    EXIT WHEN (SELECT stop FROM ctl);
    PERFORM pg_sleep(0.002);
  END LOOP;
END $$;
});
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

my $workload = IPC::Run::start(
	[ $src->installed_command('psql'), '-X', '-q', '-d', $src->connstr('postgres'), '-c', 'CALL workload()' ],
	'>', \my $wout, '2>', \my $werr);

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

$src->safe_psql('postgres', 'UPDATE ctl SET stop = true');
$workload->finish;
is($workload->result(0), 0, 'the workload ran without errors') or diag($werr);

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
