# pgcdc_consumer compacts mirror batches: of several events on one key in
# a batch only the last reaches a mirror target, yet the mirror ends equal
# to the source through re-inserts, unchanged TOAST, key changes and
# truncates; scd2 and append maps still get every event, and a map with
# rules still has every event checked.  A soft-delete mirror ends the same
# as one fed one source transaction per batch.
use strict;
use warnings;
use lib 't';
use ConsumerTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $src = new_node('source', no_extension => 1);
my $dst = new_node('target');
my $log = "$PostgreSQL::Test::Utils::log_path/consumer_compaction.log";

$src->safe_psql('postgres', q{
CREATE TABLE acc (id int PRIMARY KEY, v int, note text, doc text);
ALTER TABLE acc ALTER doc SET STORAGE EXTERNAL;
CREATE TABLE ruled (id int PRIMARY KEY, v int);
CREATE TABLE coded (id int PRIMARY KEY, code text);
} . audit_sql('acc'));
$dst->safe_psql('postgres', q{
SELECT pgcdc.create_pipeline('cmp');
SELECT pgcdc.add_table('cmp', 'public.acc', 'public.acc_mirror', 'mirror');
SELECT pgcdc.add_table('cmp', 'public.acc', 'public.acc_soft', 'mirror', soft_delete => true);
SELECT pgcdc.add_table('cmp', 'public.acc', 'public.acc_hist', 'scd2');
SELECT pgcdc.add_table('cmp', 'public.acc', 'public.acc_log', 'append');
SELECT pgcdc.add_table('cmp', 'public.ruled', 'public.ruled_mirror', 'mirror');
SELECT pgcdc.add_rule('cmp', 'public.ruled', 'v_not_negative', 'v >= 0');
SELECT pgcdc.add_table('cmp', 'public.coded', 'public.coded_mirror', 'mirror', key_columns => '{code}');
SELECT pgcdc.create_pipeline('one');
SELECT pgcdc.add_table('one', 'public.acc', 'public.acc_soft1', 'mirror', soft_delete => true);
});
# the same soft-delete mirror, one source transaction per batch
my $cmd1 = consumer_cmd($src, $dst, 'one', '--exit-when-caught-up', '--batch-size', 1);
# one batch holds everything a run sees; its lines, their headers and its
# events' JSON are in files (--batch-memory 0), read back out of order
my $cmd = consumer_cmd($src, $dst, 'cmp', '--exit-when-caught-up', '--batch-size', 1000000,
	'--batch-ms', 600000, '--idle-flush', 'off', '--batch-memory', 0);
my ($rc, $err) = run_consumer($cmd, $log);
is($rc, 0, 'first run creates the slot') or diag($err);
($rc, $err) = run_consumer($cmd1, $log);
is($rc, 0, 'and the per-transaction pipeline\'s') or diag($err);

my $cols = 'id, v, note, doc';
sub check
{
	my ($label, $events) = @_;
	same_rows($src, 'acc', $dst, 'acc_mirror', $cols, 'id', "$label: mirror equals source");
	same_rows($src, 'acc', $dst, 'acc_soft WHERE NOT _is_deleted', $cols, 'id',
		"$label: soft-delete mirror's live rows equal source");
	same_rows($src, 'acc', $dst, 'acc_hist WHERE _is_current', $cols, 'id',
		"$label: current scd2 versions equal source");
	versions_check($src, 'acc', $dst, 'acc_hist', "$label: scd2 has a version per change per key");
	scd2_check($dst, 'acc_hist', 'id', "$label: scd2 intervals");
	append_check($dst, 'acc_log', $events, "$label: append has every event once");
	# a soft-delete mirror is the same whatever the batches: flagged rows too
	my ($rc1, $err1) = run_consumer($cmd1, $log);
	is($rc1, 0, "$label: the per-transaction run exits 0") or diag($err1);
	same_rows($dst, 'acc_soft1', $dst, 'acc_soft', "$cols, _source_lsn, _source_seq, _is_deleted", 'id',
		"$label: soft-delete mirror in one batch equals it in one batch per transaction");
}

# Many events per key in one batch: updates, deletes, re-inserts, unchanged
# TOAST after a TOAST change, a key change and updates of the new key, and
# a rule-breaking row fixed later in the batch.
$src->safe_psql('postgres', q{
INSERT INTO acc SELECT g, 0, 'n' || g, NULL FROM generate_series(1, 200) g;
UPDATE acc SET v = v + 1;
UPDATE acc SET v = v + 1 WHERE id % 2 = 0;
UPDATE acc SET v = v + 1, note = 'third';
DELETE FROM acc WHERE id % 10 = 0;
INSERT INTO acc SELECT g, 100, 'back', NULL FROM generate_series(10, 50, 10) g;
UPDATE acc SET doc = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 3000) g) WHERE id = 1;
UPDATE acc SET v = 7 WHERE id = 1;
UPDATE acc SET v = 8 WHERE id = 1;
UPDATE acc SET id = 1000 WHERE id = 2;
UPDATE acc SET v = 9 WHERE id = 1000;
UPDATE acc SET v = 10 WHERE id = 1000;
INSERT INTO ruled VALUES (1, -5);
UPDATE ruled SET v = 5 WHERE id = 1;
INSERT INTO coded VALUES (1, 'a'), (2, NULL), (3, NULL);
UPDATE coded SET id = id;
});
($rc, $err) = run_consumer($cmd, $log);
is($rc, 0, 'batch run exits 0') or diag($err);
my $events = $src->safe_psql('postgres', 'SELECT count(*) FROM acc_audit');
check('one batch', $events);
is( $dst->safe_psql('postgres',
		"SELECT count(*) || ' ' || string_agg(DISTINCT v || ' ' || note, ',') FROM acc_soft WHERE _is_deleted"),
	'16 3 third', 'soft delete: keys inserted and deleted within the batch are kept flagged, with their last values');
is( $dst->safe_psql('postgres', "SELECT length(doc) FROM acc_mirror WHERE id = 1"),
	'96000', 'unchanged TOAST after a TOAST change keeps the new value');

# The mirror maps were compacted: the batch log counts the rows left out.
my ($events_logged, $skipped) = split /\|/, $dst->safe_psql('postgres',
	'SELECT sum(inserts + updates + deletes + truncates), sum(skipped) FROM pgcdc.batch');
# each of the 200 keys had at least three events before the batch's first
# barrier (the key change): its first two are replaced, in both mirrors
cmp_ok($skipped, '>=', 2 * 2 * 200, 'the earlier events of each key were left out of both mirrors')
  or diag("skipped $skipped of $events_logged");

# The rule saw the breaking insert even though a later update fixed it.
is( $dst->safe_psql('postgres',
		"SELECT count(*) || ' ' || string_agg(event->>'op', ',') FROM pgcdc.quarantine "
		  . "WHERE status = 'open' AND target = 'public.ruled_mirror'"),
	'1 I', 'the rule quarantined the breaking insert');
is($dst->safe_psql('postgres', q{SELECT id || ':' || v FROM ruled_mirror}), '1:5',
	'the later update applied');

# Events with a null key are not folded together: each fails and is quarantined.
is( $dst->safe_psql('postgres',
		"SELECT count(*) FROM pgcdc.quarantine WHERE target = 'public.coded_mirror' AND error_code = '23502'"),
	'4', 'every event with a null key is quarantined (2 inserts, 2 updates)');
is($dst->safe_psql('postgres', 'SELECT code FROM coded_mirror'), 'a', 'the row with a key is applied');

# A truncate in the middle of a batch: events before it and after it.
$src->safe_psql('postgres', q{
UPDATE acc SET v = 500 WHERE id < 20;
DELETE FROM acc WHERE id = 3;
TRUNCATE acc;
INSERT INTO acc SELECT g, 1, 'after', NULL FROM generate_series(1, 30) g;
UPDATE acc SET v = 2 WHERE id <= 15;
DELETE FROM acc WHERE id = 30;
});
($rc, $err) = run_consumer($cmd, $log);
is($rc, 0, 'truncate run exits 0') or diag($err);
$events = $src->safe_psql('postgres', 'SELECT count(*) FROM acc_audit');
check('around a truncate', $events);
is( $dst->safe_psql('postgres', 'SELECT count(*) FILTER (WHERE _is_deleted) > 0 FROM acc_soft'),
	't', 'soft delete: the truncate flagged the rows that were there');

# Keys inserted and deleted within one batch: none of their events reaches
# the mirror (both are skipped); the soft-delete mirror keeps them flagged.
my $logged = $dst->safe_psql('postgres', 'SELECT coalesce(max(id), 0) FROM pgcdc.batch');
$src->safe_psql('postgres', q{
INSERT INTO acc SELECT g, 1, 'brief', NULL FROM generate_series(5001, 5100) g;
UPDATE acc SET v = 2 WHERE id BETWEEN 5001 AND 5050;
DELETE FROM acc WHERE id > 5000;
});
($rc, $err) = run_consumer($cmd, $log);
is($rc, 0, 'brief keys run exits 0') or diag($err);
$events = $src->safe_psql('postgres', 'SELECT count(*) FROM acc_audit');
check('brief keys', $events);
is( $dst->safe_psql('postgres', "SELECT sum(skipped) FROM pgcdc.batch WHERE id > $logged"),
	'300', 'keys inserted and deleted in the batch: all 250 of their events left out of the mirror '
	  . '(and the 50 updated inserts out of the soft-delete mirror)');
is( $dst->safe_psql('postgres', "SELECT count(*) FROM acc_soft WHERE id > 5000 AND _is_deleted AND note = 'brief'"),
	'100', 'the soft-delete mirror has them, flagged');

# Keys born in a batch (first event an insert; 256 or more) go into the
# mirror by one COPY, not through the staging table: their rows carry the
# positions the merge writes (the soft-delete mirror's, which merges
# everything) and the batch's one sync time.  A row written into the mirror by hand under such a
# key makes that COPY fail: the batch merges them instead, over that row.
$logged = $dst->safe_psql('postgres', 'SELECT max(id) FROM pgcdc.batch');
$dst->safe_psql('postgres', "INSERT INTO acc_mirror (id, v, note) VALUES (6001, -1, 'by hand')");
$src->safe_psql('postgres', q{
INSERT INTO acc SELECT g, 3, 'born', NULL FROM generate_series(6001, 6300) g;
UPDATE acc SET v = 4 WHERE id BETWEEN 6001 AND 6010;
UPDATE acc SET v = 5 WHERE id = 1;
});
($rc, $err) = run_consumer($cmd, $log);
is($rc, 0, 'born keys over a row written by hand: exits 0') or diag($err);
like($err, qr/public.acc_mirror refused the rows of keys new in the batch \(SQLSTATE 23505/,
	'the mirror refused the born keys\' COPY, and says so');
$events = $src->safe_psql('postgres', 'SELECT count(*) FROM acc_audit');
check('born keys over a row written by hand', $events);
$src->safe_psql('postgres', q{
INSERT INTO acc SELECT g, 6, 'born', NULL FROM generate_series(6301, 6600) g;
UPDATE acc SET v = 7 WHERE id BETWEEN 6301 AND 6310;
UPDATE acc SET v = 8 WHERE id IN (1, 6001);
});
($rc, $err) = run_consumer($cmd, $log);
is($rc, 0, 'born keys: exits 0') or diag($err);
unlike($err, qr/refused/, 'nothing refused');
$events = $src->safe_psql('postgres', 'SELECT count(*) FROM acc_audit');
check('born keys', $events);
same_rows($dst, 'acc_soft WHERE NOT _is_deleted', $dst, 'acc_mirror', 'id, _source_lsn, _source_seq', 'id',
	'born and merged rows carry the same source positions as in the merged soft-delete mirror');
is( $dst->safe_psql('postgres',
		'SELECT count(DISTINCT _synced_at) || ' . "' '" . ' || count(*) FROM acc_mirror WHERE id IN (1, 6001) OR id > 6300'),
	'1 302', 'born and merged rows of the batch have its one sync time');
is($dst->safe_psql('postgres', "SELECT count(*) FROM pgcdc.batch WHERE id > $logged AND status <> 'ok'"),
	'0', 'the batches committed whole');

$_->stop for ($src, $dst);
done_testing();
