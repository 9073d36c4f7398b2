# Poison events: a target-only CHECK constraint and a data-quality rule
# (pgcdc.add_rule) make some events fail.  They are quarantined with their
# SQLSTATE, the rest of the batch and later batches are applied, and after
# the cause is fixed pgcdc.quarantine_replay brings the targets to the
# source's state.
use strict;
use warnings;
use lib 't';
use ConsumerTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $src = new_node('source', no_extension => 1);
my $dst = new_node('target');
my $log = "$PostgreSQL::Test::Utils::log_path/consumer_quarantine.log";

$src->safe_psql('postgres', q{
CREATE TABLE orders (id int PRIMARY KEY, amount numeric(10,2), qty int, note text);
INSERT INTO orders VALUES (100, 1, 1, 'before');
});
# The mirror exists already and is stricter than the source.
$dst->safe_psql('postgres', q{
CREATE TABLE orders_mirror (id int PRIMARY KEY, amount numeric(10,2) CONSTRAINT amount_nonneg CHECK (amount >= 0),
  qty int, note text);
SELECT pgcdc.create_pipeline('p');
SELECT pgcdc.add_table('p', 'public.orders', 'public.orders_mirror', 'mirror', key_columns => '{id}');
SELECT pgcdc.add_table('p', 'public.orders', 'public.orders_hist', 'scd2', key_columns => '{id}');
SELECT pgcdc.add_table('p', 'public.orders', 'public.orders_log', 'append');
SELECT pgcdc.add_rule('p', 'public.orders', 'qty_positive', 'qty > 0');
});
my $cmd = consumer_cmd($src, $dst, 'p', '--exit-when-caught-up');
my ($rc, $err) = run_consumer($cmd, $log);
is($rc, 0, 'snapshot run') or diag($err);

$src->safe_psql('postgres', q{
INSERT INTO orders VALUES (1, 10, 1, 'good');
INSERT INTO orders VALUES (2, -5, 1, 'negative amount');
INSERT INTO orders VALUES (3, 7, 0, 'zero qty');
BEGIN;
UPDATE orders SET amount = 11 WHERE id = 1;
INSERT INTO orders VALUES (4, 4, 4, 'same transaction as a good update');
COMMIT;
UPDATE orders SET note = 'still negative' WHERE id = 2;
INSERT INTO orders VALUES (5, 5, 5, 'after');
});
($rc, $err) = run_consumer($cmd, $log);
is($rc, 0, 'the consumer does not stop on poison events') or diag($err);
like($err, qr/quarantined I event [0-9A-F]+\/[0-9A-F]+:1 of public\.orders for public\.orders_mirror: new row for relation "orders_mirror" violates check constraint "amount_nonneg" \(SQLSTATE 23514\)/,
	'the log names the event, the target and the error');

is( $dst->safe_psql('postgres', q{
SELECT string_agg(format('%s %s %s %s', target, op, event->'new'->>'id', error_code), E'\n'
                  ORDER BY target, commit_lsn, seq)
FROM pgcdc.quarantine WHERE status = 'open'}),
	join("\n",
		'public.orders_hist I 3 ' . rule_code(),
		'public.orders_log I 3 ' . rule_code(),
		'public.orders_mirror I 2 23514',
		'public.orders_mirror I 3 ' . rule_code(),
		'public.orders_mirror U 2 23514'),
	'constraint and rule violations are quarantined per target with their SQLSTATE');
like($dst->safe_psql('postgres', "SELECT error_message FROM pgcdc.quarantine WHERE target = 'public.orders_hist'"),
	qr/qty_positive/, 'a rule violation names the rule');
is( $dst->safe_psql('postgres',
		"SELECT string_agg(DISTINCT k, ',' ORDER BY k) FROM pgcdc.quarantine, jsonb_object_keys(event->'new') k"),
	'amount,id,note,qty', 'quarantined events hold the source row\'s columns, nothing of the staging');

is($dst->safe_psql('postgres', 'SELECT string_agg(id::text, \',\' ORDER BY id) FROM orders_mirror'),
	'1,4,5,100', 'good events before, beside and after the poison ones are applied');
is($dst->safe_psql('postgres', 'SELECT amount FROM orders_mirror WHERE id = 1'), '11.00',
	'the good update in the batch is applied');
is($dst->safe_psql('postgres', "SELECT string_agg(_new->>'id', ',' ORDER BY _source_lsn, _source_seq) FROM orders_log WHERE _op <> 'R'"),
	'1,2,1,4,2,5', 'the append log has every event but the one that fails the rule (it has no constraint)');
like($dst->safe_psql('postgres', "SELECT event->'types'->>'qty' FROM pgcdc.quarantine WHERE target = 'public.orders_log'"),
	qr/^integer$/, 'the quarantined event of the log keeps the source\'s column types, for the replay\'s rule check');
is( $dst->safe_psql('postgres',
		"SELECT count(*) FROM pgcdc.batch WHERE status = 'partial' AND quarantined > 0"),
	'1', 'the batch is recorded as partial');
is($dst->safe_psql('postgres', 'SELECT quarantined FROM pgcdc.checkpoint'), '5',
	'the checkpoint counts the quarantined events');

# More changes flow while the quarantine is open; key 2, whose insert and
# update are quarantined, is deleted at the source (the replay must not
# bring it back).
$src->safe_psql('postgres',
	"UPDATE orders SET amount = 12 WHERE id = 1; DELETE FROM orders WHERE id = 5; DELETE FROM orders WHERE id = 2;");
($rc, $err) = run_consumer($cmd, $log);
is($rc, 0, 'later run') or diag($err);
is($dst->safe_psql('postgres', 'SELECT string_agg(id || \':\' || amount, \',\' ORDER BY id) FROM orders_mirror'),
	'1:12.00,4:4.00,100:1.00', 'later events keep flowing');
is( $dst->safe_psql('postgres',
		"SELECT string_agg(key::text, ' ' ORDER BY key::text) FROM pgcdc.mirror_tombstone WHERE target = 'public.orders_mirror'"),
	'{"id": 2} {"id": 5}', 'deletes while the target has quarantined events leave tombstones');

# Fix the causes, replay.
$dst->safe_psql('postgres', q{
ALTER TABLE orders_mirror DROP CONSTRAINT amount_nonneg;
SELECT pgcdc.drop_rule('p', 'public.orders', 'qty_positive');
});
is($dst->safe_psql('postgres', 'SELECT applied || \' applied, \' || failed || \' failed\' FROM pgcdc.quarantine_replay()'),
	'5 applied, 0 failed', 'quarantine_replay applies every open event after the fix')
  or diag($dst->safe_psql('postgres',
	"SELECT id, target, op, status, attempts, error_code, error_message FROM pgcdc.quarantine ORDER BY id"));
is($dst->safe_psql('postgres', "SELECT count(*) FROM pgcdc.quarantine WHERE status = 'replayed' AND resolved_at IS NOT NULL"),
	'5', 'replayed events are closed');
is($dst->safe_psql('postgres', "SELECT count(*) FROM orders_log WHERE _op = 'I' AND _new->>'id' = '3'"), '1',
	'the log gets the replayed event');

my $cols = 'id, amount, qty, note';
same_rows($src, 'orders', $dst, 'orders_mirror', $cols, 'id',
	'mirror equals source after the replay (the deleted key 2 stays deleted)');
is($dst->safe_psql('postgres', 'SELECT count(*) FROM pgcdc.mirror_tombstone'), '0',
	'no tombstone is left once nothing is open');
same_rows($src, 'orders', $dst, 'orders_hist WHERE _is_current', $cols, 'id',
	'current scd2 versions equal source after the replay');
scd2_check($dst, 'orders_hist', 'id', 'scd2 intervals after the replay');

# Replaying again changes nothing.
is($dst->safe_psql('postgres', 'SELECT applied + failed FROM pgcdc.quarantine_replay()'), '0',
	'nothing is left to replay');
($rc, $err) = run_consumer($cmd, $log);
is($rc, 0, 'a run after the replay') or diag($err);
same_rows($src, 'orders', $dst, 'orders_mirror', $cols, 'id', 'mirror still equals source');

# A rule-quarantined event of a map without key_columns (the source's
# replica identity, which only the consumer knows) replays too.
$dst->safe_psql('postgres', q{
SELECT pgcdc.create_pipeline('q');
SELECT pgcdc.add_table('q', 'public.orders', 'public.orders_q', 'mirror');
SELECT pgcdc.add_table('q', 'public.orders', 'public.orders_q_log', 'append');
SELECT pgcdc.add_rule('q', 'public.orders', 'qty_positive', 'qty > 0');
});
my $qcmd = consumer_cmd($src, $dst, 'q', '--exit-when-caught-up');
($rc, $err) = run_consumer($qcmd, $log);
is($rc, 0, 'pipeline q: snapshot') or diag($err);
$src->safe_psql('postgres', "INSERT INTO orders VALUES (6, 6, -6, 'rule')");
($rc, $err) = run_consumer($qcmd, $log);
is($rc, 0, 'pipeline q: streaming') or diag($err);
is( $dst->safe_psql('postgres',
		"SELECT string_agg(target || ' ' || (event->'new'->>'id'), ', ' ORDER BY target, id) FROM pgcdc.quarantine WHERE pipeline = 'q' AND status = 'open'"),
	'public.orders_q 3, public.orders_q 6, public.orders_q_log 3, public.orders_q_log 6',
	'pipeline q: rows 3 (in the snapshot) and 6 (streamed) fail the rule, for the mirror and for the log');
is($dst->safe_psql('postgres', "SELECT count(*) FROM orders_q_log WHERE _new->>'id' IN ('3', '6')"), '0',
	'pipeline q: the log has neither');
is($dst->safe_psql('postgres', "SELECT applied || '/' || failed FROM pgcdc.quarantine_replay(pipeline => 'q')"),
	'0/4', 'pipeline q: before the fix, the replay fails again, for the log too');
$dst->safe_psql('postgres', "SELECT pgcdc.drop_rule('q', 'public.orders', 'qty_positive')");
is($dst->safe_psql('postgres', "SELECT applied || '/' || failed FROM pgcdc.quarantine_replay(pipeline => 'q')"),
	'4/0', 'pipeline q: the replay applies rows 3 and 6');
is( $dst->safe_psql('postgres',
		"SELECT string_agg(_op || (_new->>'id'), ',' ORDER BY _new->>'id') FROM orders_q_log WHERE _new->>'id' IN ('3', '6')"),
	'I3,I6', 'pipeline q: and the log gets both');
same_rows($src, 'orders', $dst, 'orders_q', $cols, 'id', 'pipeline q: mirror equals source after the replay');

# An append log's rule that errors on one row (division by zero) and fails
# for another, in the initial copy (rows 3 and 6) and streamed in one source
# transaction with a good one: each is quarantined with its own SQLSTATE,
# the others are logged.
$dst->safe_psql('postgres', q{
SELECT pgcdc.create_pipeline('s');
SELECT pgcdc.add_table('s', 'public.orders', 'public.orders_s_log', 'append');
SELECT pgcdc.add_rule('s', 'public.orders', 'hundred_per_qty', '100 / qty > 0');
});
is($src->safe_psql('postgres', 'SELECT qty FROM orders WHERE id IN (3, 6) ORDER BY id'), "0\n-6",
	'pipeline s: rows 3 and 6 will err and fail');
my $n_src = $src->safe_psql('postgres', 'SELECT count(*) FROM orders');
my $bcmd = consumer_cmd($src, $dst, 's', '--exit-when-caught-up');
($rc, $err) = run_consumer($bcmd, $log);
is($rc, 0, 'pipeline s: the initial copy') or diag($err);
$src->safe_psql('postgres',
	"BEGIN; INSERT INTO orders VALUES (7, 7, 5, 'good'), (8, 8, 0, 'errs'), (9, 9, -1, 'fails'); COMMIT;");
($rc, $err) = run_consumer($bcmd, $log);
is($rc, 0, 'pipeline s: streaming') or diag($err);
is( $dst->safe_psql('postgres',
		"SELECT string_agg((event->'new'->>'id') || ' ' || error_code, ', ' ORDER BY (event->'new'->>'id')::int) "
		  . "FROM pgcdc.quarantine WHERE pipeline = 's'"),
	'3 22012, 6 23514, 8 22012, 9 23514',
	'pipeline s: the erring and the failing rows are quarantined, each with its SQLSTATE');
is( $dst->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE _op = 'R') || ' ' || string_agg(_new->>'id', ',') FILTER (WHERE _op <> 'R') "
		  . "|| ' ' || count(*) FILTER (WHERE _new->>'id' IN ('3', '6', '8', '9')) FROM orders_s_log"),
	($n_src - 2) . ' 7 0', 'pipeline s: the other copied rows and the good event are logged');

# A snapshot taken again (its checkpoint is gone, as when the consumer dies
# before the last table is in) does not leave its rule failures open twice.
$dst->safe_psql('postgres', q{
SELECT pgcdc.create_pipeline('r');
SELECT pgcdc.add_table('r', 'public.orders', 'public.orders_r', 'mirror');
SELECT pgcdc.add_rule('r', 'public.orders', 'qty_at_least_one', 'qty >= 1');
});
my $rcmd = consumer_cmd($src, $dst, 'r', '--exit-when-caught-up');
($rc, $err) = run_consumer($rcmd, $log);
is($rc, 0, 'pipeline r: snapshot') or diag($err);
my $failing = $src->safe_psql('postgres', 'SELECT count(*) FROM orders WHERE qty < 1');
cmp_ok($failing, '>', 0, 'pipeline r: some source rows fail the rule');
is($dst->safe_psql('postgres', "SELECT count(*) FROM pgcdc.quarantine WHERE pipeline = 'r' AND status = 'open'"),
	$failing, 'pipeline r: the snapshot quarantines the rows that fail the rule');
$dst->safe_psql('postgres', "DELETE FROM pgcdc.checkpoint WHERE pipeline = 'r'");
($rc, $err) = run_consumer($rcmd, $log);
is($rc, 0, 'pipeline r: the snapshot is taken again') or diag($err);
like($err, qr/closed $failing quarantined events of the interrupted snapshot/, 'pipeline r: the log says what was closed');
is( $dst->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE status = 'open') || ' open, ' || count(*) FILTER (WHERE status = 'discarded') "
		  . "|| ' discarded' FROM pgcdc.quarantine WHERE pipeline = 'r'"),
	"$failing open, $failing discarded", 'pipeline r: the first attempt\'s events are closed, not doubled');

# Values the target's types refuse at staging (a narrower varchar, a domain
# CHECK): those events are quarantined with the SQLSTATE, the rest applied.
$src->safe_psql('postgres', q{
CREATE TABLE tags (id int PRIMARY KEY, code text, score int);
INSERT INTO tags VALUES (1, 'ok', 1);
});
$dst->safe_psql('postgres', q{
CREATE DOMAIN small_score AS int CHECK (VALUE < 100);
CREATE TABLE tags_mirror (id int PRIMARY KEY, code varchar(5), score small_score);
SELECT pgcdc.create_pipeline('t');
SELECT pgcdc.add_table('t', 'public.tags', 'public.tags_mirror', 'mirror');
SELECT pgcdc.add_table('t', 'public.tags', 'public.tags_hist', 'scd2');
});
my $tcmd = consumer_cmd($src, $dst, 't', '--exit-when-caught-up');
($rc, $err) = run_consumer($tcmd, $log);
is($rc, 0, 'pipeline t: snapshot') or diag($err);
$src->safe_psql('postgres', q{
BEGIN;
INSERT INTO tags SELECT g, 'c' || g, g FROM generate_series(2, 40) g;
INSERT INTO tags VALUES (41, 'much too long', 1), (42, 'fine', 500);
COMMIT;
UPDATE tags SET score = 2 WHERE id = 2;
});
($rc, $err) = run_consumer($tcmd, $log);
is($rc, 0, 'pipeline t: values the target refuses do not stop the pipeline') or diag($err);
is( $dst->safe_psql('postgres',
		"SELECT string_agg(target || ':' || error_code, ',' ORDER BY target, error_code) FROM pgcdc.quarantine "
		  . "WHERE pipeline = 't' AND status = 'open'"),
	'public.tags_mirror:22001,public.tags_mirror:23514',
	'pipeline t: the refused events are quarantined with their SQLSTATEs (the history has no such types)');
is($dst->safe_psql('postgres', q{SELECT count(*) || '/' || sum(score) FROM tags_mirror}),
	$src->safe_psql('postgres', q{SELECT count(*) || '/' || sum(score) FROM tags WHERE id NOT IN (41, 42)}),
	'pipeline t: every other event, and the later transaction, applied');
is($dst->safe_psql('postgres', "SELECT count(*) FROM pgcdc.batch WHERE pipeline = 't' AND status = 'partial' AND quarantined = 2"),
	'1', 'pipeline t: the batch with the refused events is partial, counting them');
# One event failing a target CHECK in a large transaction: found by halves,
# the other 1,999 applied.
$dst->safe_psql('postgres', 'ALTER TABLE tags_mirror ADD CONSTRAINT id_not_1500 CHECK (id <> 1500)');
$src->safe_psql('postgres', q{INSERT INTO tags SELECT g, 'b', 1 FROM generate_series(1001, 3000) g});
($rc, $err) = run_consumer($tcmd, $log);
is($rc, 0, 'pipeline t: a large transaction with one failing event') or diag($err);
is( $dst->safe_psql('postgres',
		"SELECT count(*) FROM tags_mirror WHERE id > 1000"),
	'1999', 'pipeline t: all its other events applied');
is( $dst->safe_psql('postgres',
		"SELECT error_code || ':' || (event->'new'->>'id') FROM pgcdc.quarantine WHERE pipeline = 't' AND error_code = '23514' "
		  . "AND error_message LIKE '%id_not_1500%'"),
	'23514:1500', 'pipeline t: and that one quarantined');
$dst->safe_psql('postgres', 'ALTER TABLE tags_mirror DROP CONSTRAINT id_not_1500');
$dst->safe_psql('postgres', 'ALTER TABLE tags_mirror ALTER code TYPE text, ALTER score TYPE int');
is($dst->safe_psql('postgres', "SELECT applied || '/' || failed FROM pgcdc.quarantine_replay(pipeline => 't')"),
	'3/0', 'pipeline t: replayed after the target was widened and the constraint dropped');
same_rows($src, 'tags', $dst, 'tags_mirror', 'id, code, score', 'id', 'pipeline t: mirror equals source');

# Poison events while batches overlap in the two target sessions: one
# source transaction per batch (--batch-size 1), and a statement trigger
# that makes each apply of the mirror take 80 ms, so that every next batch
# is staged in the other session meanwhile.  Rows 5, 10, 15, 20 fail the
# rule (for all three targets), rows 7 and 14 the mirror's CHECK; each is
# quarantined where it fails and everything else is applied.
$src->safe_psql('postgres', 'CREATE TABLE widgets (id int PRIMARY KEY, qty int, amount numeric)');
$dst->safe_psql('postgres', q{
CREATE TABLE widgets_m (id int PRIMARY KEY, qty int, amount numeric CONSTRAINT amount_nonneg CHECK (amount >= 0));
SELECT pgcdc.create_pipeline('o');
SELECT pgcdc.add_table('o', 'public.widgets', 'public.widgets_m', 'mirror');
SELECT pgcdc.add_table('o', 'public.widgets', 'public.widgets_h', 'scd2');
SELECT pgcdc.add_table('o', 'public.widgets', 'public.widgets_l', 'append');
SELECT pgcdc.add_rule('o', 'public.widgets', 'qty_positive', 'qty > 0');
});
slow_applies($dst, 'widgets_m');
my $ocmd = consumer_cmd($src, $dst, 'o', '--exit-when-caught-up', '--batch-size', 1, '-v');
($rc, $err) = run_consumer($ocmd, $log);
is($rc, 0, 'pipeline o: snapshot') or diag($err);
$src->safe_psql('postgres',
	"INSERT INTO widgets VALUES ($_, " . ($_ % 5 == 0 ? 0 : 1) . ', ' . ($_ % 7 == 0 ? -1 : $_) . ')')
  for 1 .. 20;
($rc, $err) = run_consumer($ocmd, $log);
is($rc, 0, 'pipeline o: streaming, one batch per source transaction') or diag($err);
my (undef, $second) = session_batches($err);
cmp_ok($second, '>=', 3, "pipeline o: batches were applied in the second target session ($second)");
is( $dst->safe_psql('postgres',
		"SELECT string_agg(target || ' ' || (event->'new'->>'id') || ' ' || error_code, ', ' "
		  . "ORDER BY target, (event->'new'->>'id')::int) FROM pgcdc.quarantine WHERE pipeline = 'o' AND status = 'open'"),
	join(', ',
		(map { "public.widgets_h $_ " . rule_code() } 5, 10, 15, 20),
		(map { "public.widgets_l $_ " . rule_code() } 5, 10, 15, 20),
		(map { "public.widgets_m $_ " . ($_ % 5 == 0 ? rule_code() : '23514') } 5, 7, 10, 14, 15, 20)),
	'pipeline o: each poison event is quarantined where it fails, with its SQLSTATE');
same_rows($src, 'widgets WHERE id NOT IN (5, 7, 10, 14, 15, 20)', $dst, 'widgets_m', 'id, qty, amount', 'id',
	'pipeline o: the mirror has every other row');
same_rows($src, 'widgets WHERE id % 5 <> 0', $dst, 'widgets_h WHERE _is_current', 'id, qty, amount', 'id',
	'pipeline o: the history has a version of every row that passes the rule');
is($dst->safe_psql('postgres', "SELECT string_agg(_new->>'id', ',' ORDER BY _source_lsn) FROM widgets_l WHERE _op = 'I'"),
	join(',', grep { $_ % 5 != 0 } 1 .. 20), 'pipeline o: the log has every event that passes the rule, in order');

# A batch larger than --batch-memory: its rows and its events' JSON go on
# in files in $TMPDIR.  A value refused at staging and an event failing at
# apply, both past the first megabyte, are read back from there and
# quarantined; everything else is applied.
$src->safe_psql('postgres', 'CREATE TABLE bulk (id int PRIMARY KEY, code text, pad text)');
$dst->safe_psql('postgres', q{
CREATE TABLE bulk_mirror (id int PRIMARY KEY, code varchar(8), pad text CONSTRAINT not_19500 CHECK (pad <> 'x19500'));
SELECT pgcdc.create_pipeline('big');
SELECT pgcdc.add_table('big', 'public.bulk', 'public.bulk_mirror', 'mirror');
});
my $bigcmd = consumer_cmd($src, $dst, 'big', '--exit-when-caught-up', '--batch-memory', '1');
($rc, $err) = run_consumer($bigcmd, $log);
is($rc, 0, 'pipeline big: snapshot') or diag($err);
$src->safe_psql('postgres', q{
INSERT INTO bulk SELECT g, CASE WHEN g = 19000 THEN 'much too long' ELSE 'c' || g END,
       CASE WHEN g = 19500 THEN 'x19500' ELSE repeat('x', 100) END
  FROM generate_series(1, 20000) g;
});
($rc, $err) = run_consumer($bigcmd, $log);
is($rc, 0, 'pipeline big: a 20,000-row transaction with --batch-memory 1') or diag($err);
is( $dst->safe_psql('postgres',
		"SELECT string_agg(error_code || ':' || (event->'new'->>'id'), ',' ORDER BY error_code) "
		  . "FROM pgcdc.quarantine WHERE pipeline = 'big'"),
	'22001:19000,23514:19500', 'pipeline big: the refused and the failing event are quarantined, read back from the files');
same_rows($src, 'bulk WHERE id NOT IN (19000, 19500)', $dst, 'bulk_mirror', 'id, code, pad', 'id',
	'pipeline big: every other row is applied');

# The SQLSTATE a rule violation is quarantined with (the extension's choice).
sub rule_code
{
	return $dst->safe_psql('postgres',
		"SELECT min(error_code) FROM pgcdc.quarantine WHERE error_message LIKE '%qty_positive%'") || 'none';
}

$src->stop;
$dst->stop;
done_testing();
