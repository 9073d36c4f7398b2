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

my $rows = 150_000;
my $src = new_node('source', no_extension => 1);
my $dst = new_node('target');
my $log = "$PostgreSQL::Test::Utils::log_path/consumer_snapshot.log";

$src->safe_psql('postgres', workload_sql(rows => $rows, keys => $rows));
$dst->safe_psql('postgres', q{
SELECT pgcdc.create_pipeline('p');
SELECT pgcdc.add_table('p', 'public.acct', 'public.acct_mirror', 'mirror');
SELECT pgcdc.add_table('p', 'public.acct', 'public.acct_hist', 'scd2');
SELECT pgcdc.add_table('p', 'public.acct', 'public.acct_log', 'append');
SELECT pgcdc.add_table('p', 'public.acct_audit', 'public.audit_log', 'append');
});

my $workload = start_workload($src);
usleep(300_000);
my $consumer = start_consumer(consumer_cmd($src, $dst, 'p', '--batch-ms', 100), $log);
ok(wait_for_row($dst, 'SELECT count(*) > 0 FROM pgcdc.checkpoint', 100), 'the snapshot finishes');
my $done_at = $src->safe_psql('postgres', 'SELECT now()');
sleep 2;
is(stop_workload($src, $workload), 0, 'the workload ran without errors');
is(stop_consumer($consumer), 0, 'the streaming consumer stops cleanly');
my ($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'p', '--exit-when-caught-up'), $log);
is($rc, 0, 'the consumer catches up') or diag($err);

my $out = slurp_log($log);
like($out, qr/snapshot of public\.acct into public\.acct_mirror: $rows rows|snapshot of public\.acct into public\.acct_mirror: \d+ rows/,
	'the snapshot logs rows per table');

# The boundary: every audit row is in the log once, as a snapshot row or
# as a streamed insert, and some of each kind exist.
my $audit = $src->safe_psql('postgres', 'SELECT count(*) FROM acct_audit');
is( $dst->safe_psql('postgres',
		"SELECT count(*) || ' ' || count(DISTINCT (_new->>'id')::bigint) FROM audit_log WHERE _op IN ('R', 'I')"),
	"$audit $audit", 'each audit row is in the audit log exactly once');
my ($in_snapshot, $streamed, $during) = split /\|/, $dst->safe_psql('postgres', qq{
SELECT count(*) FILTER (WHERE _op = 'R') - $rows, count(*) FILTER (WHERE _op = 'I'),
       count(*) FILTER (WHERE _op = 'I' AND _commit_ts < '$done_at')
FROM audit_log});
cmp_ok($in_snapshot, '>', 0, "changes before the consistent point are in the snapshot ($in_snapshot)");
cmp_ok($during, '>', 0, "changes made while the snapshot ran were streamed ($during of $streamed)");

my $cols = 'id, v, note, pad';
same_rows($src, 'acct', $dst, 'acct_mirror', $cols, 'id', 'mirror equals source');
same_rows($src, 'acct', $dst, 'acct_hist WHERE _is_current', $cols, 'id', 'current scd2 versions equal source');
scd2_check($dst, 'acct_hist', 'id', 'scd2 intervals are well formed');

# Versions: one per key in the snapshot (acct_log's 'R' rows), then what
# the streamed audit rows say.
versions_check($dst, 'acct', $dst, 'acct_hist', 'scd2: the snapshot version plus one per streamed change', q{
(SELECT (_new->>'id')::bigint AS id, (_new->>'txid')::bigint AS txid, _new->>'op' AS op,
        (_new->>'old_key')::int AS old_key, (_new->>'new_key')::int AS new_key
   FROM audit_log WHERE _op = 'I'
 UNION ALL
 SELECT 0, 0, 'I', NULL, (_new->>'id')::int FROM acct_log WHERE _op = 'R')});
my $acct_events = $dst->safe_psql('postgres', "SELECT count(*) FROM audit_log WHERE _op = 'I'");
append_check($dst, 'acct_log', $acct_events, 'append: each streamed change once');

$src->stop;
$dst->stop;
done_testing();
