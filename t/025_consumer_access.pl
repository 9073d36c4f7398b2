# Who may run the consumer and how it says no: one consumer per pipeline;
# a non-superuser with REPLICATION + SELECT on the source (over TLS with
# sslmode=verify-full, certificates made here with openssl) and a target
# role that owns its targets with the grants documented in the README; a
# wrong CA refused; passwords never logged; metrics over HTTP.
use strict;
use warnings;
use lib 't';
use ConsumerTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $log = "$PostgreSQL::Test::Utils::log_path/consumer_access.log";
my $dir = PostgreSQL::Test::Utils::tempdir();
my $src_pw = 'Src-secret-8d1f';
my $dst_pw = 'Tgt-secret-27c4';

# Certificates: a CA, a server certificate for localhost and 127.0.0.1
# signed by it, and an unrelated CA.
sub openssl
{
	my @cmd = ('openssl', @_);
	my ($out, $err);
	IPC::Run::run(\@cmd, '>', \$out, '2>', \$err) or die "openssl @_: $err";
}
openssl('req', '-new', '-x509', '-days', '2', '-nodes', '-subj', '/CN=pgcdc test CA',
	'-keyout', "$dir/ca.key", '-out', "$dir/ca.crt");
openssl('req', '-new', '-nodes', '-subj', '/CN=localhost', '-keyout', "$dir/server.key", '-out', "$dir/server.csr");
append_to_file("$dir/san.ext", "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
openssl('x509', '-req', '-in', "$dir/server.csr", '-CA', "$dir/ca.crt", '-CAkey', "$dir/ca.key",
	'-CAcreateserial', '-days', '2', '-extfile', "$dir/san.ext", '-out', "$dir/server.crt");
openssl('req', '-new', '-x509', '-days', '2', '-nodes', '-subj', '/CN=some other CA',
	'-keyout', "$dir/other.key", '-out', "$dir/other.crt");
chmod 0600, "$dir/server.key";

my $src = new_node('source', no_extension => 1, conf => qq{
listen_addresses = '127.0.0.1'
ssl = on
ssl_cert_file = '$dir/server.crt'
ssl_key_file = '$dir/server.key'
password_encryption = 'scram-sha-256'
});
my $dst = new_node('target', conf => qq{
listen_addresses = '127.0.0.1'
password_encryption = 'scram-sha-256'
});

# The non-superusers authenticate with passwords over TCP; the source
# only over TLS.
sub hba_first
{
	my ($node, $lines) = @_;
	my $file = $node->data_dir . '/pg_hba.conf';
	my $old = slurp_file($file);
	open my $fh, '>', $file or die $!;
	print $fh $lines . $old;
	close $fh;
	$node->reload;
}
hba_first($src, "hostssl all cdc_src 127.0.0.1/32 scram-sha-256\n"
	  . "hostssl replication cdc_src 127.0.0.1/32 scram-sha-256\nhost all cdc_src 127.0.0.1/32 reject\n");
hba_first($dst, "host all cdc_tgt 127.0.0.1/32 scram-sha-256\n");

$src->safe_psql('postgres', qq{
CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL, note text);
INSERT INTO acct SELECT g, g, 'row ' || g FROM generate_series(1, 100) g;
CREATE ROLE cdc_src LOGIN REPLICATION PASSWORD '$src_pw';
GRANT SELECT ON acct TO cdc_src;
});

# The target role: owns a schema for its targets, and may use the
# pipeline's control rows.  This is the documented minimum.
$dst->safe_psql('postgres', qq{
CREATE ROLE cdc_tgt LOGIN PASSWORD '$dst_pw';
CREATE SCHEMA mart AUTHORIZATION cdc_tgt;
GRANT SELECT ON pgcdc.pipeline, pgcdc.table_map, pgcdc.rule TO cdc_tgt;
GRANT SELECT, INSERT, UPDATE ON pgcdc.checkpoint TO cdc_tgt;
GRANT INSERT ON pgcdc.batch TO cdc_tgt;
GRANT SELECT, INSERT, UPDATE ON pgcdc.quarantine TO cdc_tgt;
GRANT SELECT, INSERT, UPDATE ON pgcdc.mirror_tombstone TO cdc_tgt;
SELECT pgcdc.create_pipeline('p');
-- (key_columns given here; t/023 pipeline q covers maps that use the source's identity)
SELECT pgcdc.add_table('p', 'public.acct', 'mart.acct', 'mirror', key_columns => '{id}');
SELECT pgcdc.add_table('p', 'public.acct', 'mart.acct_hist', 'scd2', key_columns => '{id}');
SELECT pgcdc.add_table('p', 'public.acct', 'mart.acct_log', 'append');
});

my $src_conn = sprintf('host=localhost hostaddr=127.0.0.1 port=%d dbname=postgres user=cdc_src password=%s '
	  . 'sslmode=verify-full sslrootcert=%s', $src->port, $src_pw, "$dir/ca.crt");
my $dst_conn = sprintf('host=127.0.0.1 port=%d dbname=postgres user=cdc_tgt password=%s', $dst->port, $dst_pw);
my $metrics_port = PostgreSQL::Test::Cluster::get_free_port();

# --- A non-superuser over TLS, streaming, with metrics.
my $first = start_consumer(
	consumer_cmd($src_conn, $dst_conn, 'p', '--metrics-port', $metrics_port, '--batch-ms', 50), $log);
ok(wait_for_row($dst, 'SELECT count(*) > 0 FROM pgcdc.checkpoint'), 'a non-superuser pair takes the snapshot');
$src->safe_psql('postgres', "UPDATE acct SET v = v + 1 WHERE id <= 10; DELETE FROM acct WHERE id = 100;");
ok(wait_for_row($dst, 'SELECT NOT EXISTS (SELECT 1 FROM mart.acct WHERE id = 100)'), 'and streams');
# ps and /proc show a process's arguments to every local user
my $cmdline = slurp_file('/proc/' . $first->{KIDS}[0]{PID} . '/cmdline');
like($cmdline, qr/user=cdc_src password=x+ /, 'the running consumer blanked the passwords in its arguments');
unlike($cmdline, qr/\Q$src_pw\E|\Q$dst_pw\E/, 'neither password is in its command line');
is( $src->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE s.ssl) || '/' || count(*) FROM pg_stat_activity a "
		  . "JOIN pg_stat_ssl s USING (pid) WHERE a.usename = 'cdc_src'"),
	'2/2', 'both source connections (SQL and replication) use TLS');
is($dst->safe_psql('postgres', "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'mart.acct'::regclass"),
	'cdc_tgt', 'the target role owns the targets it created');

my $metrics = http_get($metrics_port, '/metrics');
like($metrics, qr{^HTTP/1\.[01] 200}, 'metrics answer 200');
like($metrics, qr/^pgcdc_events_total\{pipeline="p"\} (\d+)$/m, 'events counter');
like($metrics, qr/^# TYPE pgcdc_lag_bytes gauge$/m, 'lag gauge with its type');
like($metrics, qr/^pgcdc_batches_total\{pipeline="p"\} [1-9]/m, 'batches counted');
like(http_get($metrics_port, '/'), qr{^HTTP/1\.[01] 404}, 'any other path is 404');

# --- A second consumer on the same pipeline is refused.
my ($rc, $err) = run_consumer(consumer_cmd($src_conn, $dst_conn, 'p', '--exit-when-caught-up'), $log, 30);
is($rc, 1, 'a second consumer on the pipeline exits 1');
like($err, qr/pipeline "p" is already being run by another pgcdc_consumer \(target backend pid \d+\)/,
	'and says why');
like($err, qr/HINT:  Only one consumer may run a pipeline at a time/, 'with a hint');
is(stop_consumer($first), 0, 'the first consumer stops cleanly');

# The quarantine paths (a rule, a constraint of the target role's own).
$dst->safe_psql('postgres', q{
SELECT pgcdc.add_rule('p', 'public.acct', 'v_not_negative', 'v >= 0');
SET ROLE cdc_tgt;
ALTER TABLE mart.acct ADD CONSTRAINT short_note CHECK (length(note) < 20);
});
$src->safe_psql('postgres', q{
INSERT INTO acct VALUES (101, 1, 'after');
INSERT INTO acct VALUES (102, -1, 'fails the rule');
INSERT INTO acct VALUES (103, 3, 'fails the constraint of the mirror');
});
($rc, $err) = run_consumer(consumer_cmd($src_conn, $dst_conn, 'p', '--exit-when-caught-up'), $log);
is($rc, 0, 'the non-superuser catches up') or diag($err);
is( $dst->safe_psql('postgres',
		"SELECT string_agg(target || ' ' || (event->'new'->>'id') || ' ' || error_code, ', ' ORDER BY target, id) "
		  . "FROM pgcdc.quarantine"),
	'mart.acct 102 23514, mart.acct 103 23514, mart.acct_hist 102 23514, mart.acct_log 102 23514',
	'the non-superuser quarantines events (the rule holds for the append log too)');
$dst->safe_psql('postgres', q{
SELECT pgcdc.drop_rule('p', 'public.acct', 'v_not_negative');
ALTER TABLE mart.acct DROP CONSTRAINT short_note;
});
is($dst->safe_psql('postgres', 'SELECT applied || \'/\' || failed FROM pgcdc.quarantine_replay()'), '4/0',
	'and a replay fixes them')
  or diag($dst->safe_psql('postgres', 'SELECT id, target, status, error_code, error_message FROM pgcdc.quarantine'));
same_rows($src, 'acct', $dst, 'mart.acct', 'id, v, note', 'id', 'mirror equals source');
same_rows($src, 'acct', $dst, 'mart.acct_hist WHERE _is_current', 'id, v, note', 'id', 'scd2 equals source');

# --- A source table renamed while the non-superuser runs: it follows the
# table until the stream has passed the rename; then, not allowed to change
# pgcdc.table_map, it stops and says what to run, and once that is run it
# goes on with nothing lost.
my $at = length(slurp_log($log));
my $ren = start_consumer(consumer_cmd($src_conn, $dst_conn, 'p', '--batch-ms', 50), $log);
# (streaming, not merely connected: a rename before its start would be one
# made while it was stopped)
ok(wait_for_log($log, qr/streaming from slot/, $at, 30), 'running again');
$src->safe_psql('postgres', "INSERT INTO acct VALUES (201, 201, 'before'); ALTER TABLE acct RENAME TO account; "
	  . "INSERT INTO account VALUES (202, 202, 'after')");
wait_for_log($log, qr/HINT:  Its changes are applied/, $at);
$ren->finish;
is($ren->full_result(0) >> 8, 1, 'a rename it may not follow in pgcdc.table_map: status 1');
like(
	substr(slurp_log($log), $at),
	qr/ERROR: could not rename the maps of source table public\.acct of pipeline "p" to public\.account\nHINT:  Its changes are applied up to and past its rename\. As the owner of pgcdc\.table_map, run SELECT pgcdc\.rename_source_table\('p', 'public\.acct', 'public\.account'\);/,
	'and it says what to run');
$dst->safe_psql('postgres', "SELECT pgcdc.rename_source_table('p', 'public.acct', 'public.account')");
$src->safe_psql('postgres', "INSERT INTO account VALUES (203, 203, 'later')");
($rc, $err) = run_consumer(consumer_cmd($src_conn, $dst_conn, 'p', '--exit-when-caught-up'), $log);
is($rc, 0, 'run, the consumer goes on') or diag($err);
is($dst->safe_psql('postgres', 'SELECT string_agg(id::text, \',\' ORDER BY id) FROM mart.acct WHERE id > 200'),
	'201,202,203', 'the rows from before, around and after the rename are all there');
is($dst->safe_psql('postgres', 'SELECT count(*) FROM mart.acct_log WHERE _source_lsn IS NOT NULL AND (_new->>\'id\')::int > 200'),
	'3', 'and the event log has each once');
# (the old name back, for what follows: while stopped, caught up)
$src->safe_psql('postgres', 'ALTER TABLE account RENAME TO acct');
$dst->safe_psql('postgres', "SELECT pgcdc.rename_source_table('p', 'public.account', 'public.acct')");

# --- A CA that did not sign the server certificate is refused.
(my $wrong = $src_conn) =~ s/ca\.crt/other.crt/;
($rc, $err) = run_consumer(consumer_cmd($wrong, $dst_conn, 'p', '--exit-when-caught-up'), $log, 30);
is($rc, 1, 'a wrong CA on the first connection exits 1');
like($err, qr/could not connect: .*certificate verify failed.*\nHINT:  Check --source\./,
	'with the SSL error and a hint');

# --- A first connection that fails is final; a bad connection string is bad usage.
($rc, $err) = run_consumer(consumer_cmd($src, $dst->connstr('nosuchdb'), 'p', '--exit-when-caught-up'), $log, 30);
is($rc, 1, 'a target database that does not exist exits 1');
like($err, qr/database "nosuchdb" does not exist.*\nHINT:  Check --target\./, 'and says so');
($rc, $err) = run_consumer(consumer_cmd($src, 'bogusopt=1', 'p', '--exit-when-caught-up'), $log, 30);
is($rc, 2, 'a connection string libpq cannot parse exits 2');
like($err, qr/invalid --target: invalid connection option "bogusopt"/, 'naming the option');

# --- A paused pipeline: --exit-when-caught-up cannot catch up.
$dst->safe_psql('postgres', "SELECT pgcdc.pause_pipeline('p')");
($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'p', '--exit-when-caught-up'), $log, 30);
is($rc, 1, 'a paused pipeline with --exit-when-caught-up exits 1');
like($err, qr/pipeline "p" is paused: nothing was applied\nHINT:  Resume it with pgcdc.resume_pipeline/,
	'and says why');
$dst->safe_psql('postgres', "SELECT pgcdc.resume_pipeline('p')");

# --- Errors that a retry cannot fix: one line, a hint, status 1.
($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'nope', '--exit-when-caught-up'), $log);
is($rc, 1, 'a missing pipeline exits 1');
like($err, qr/ERROR: pipeline "nope" does not exist in the target\nHINT:  Create it with SELECT pgcdc.create_pipeline/,
	'a missing pipeline is one line and a hint');

$dst->safe_psql('postgres', 'CREATE DATABASE bare');
($rc, $err) = run_consumer(consumer_cmd($src, $dst->connstr('bare'), 'p', '--exit-when-caught-up'), $log);
is($rc, 1, 'a target without the extension exits 1');
like($err, qr/relation "pgcdc.pipeline" does not exist.*\nHINT:  Is the pgcdc extension installed/,
	'and hints at CREATE EXTENSION');

# A partitioned source table: its changes come under the partitions' names.
$src->safe_psql('postgres', q{
CREATE TABLE parted (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100);
});
$dst->safe_psql('postgres', q{
SELECT pgcdc.create_pipeline('part');
SELECT pgcdc.add_table('part', 'public.parted', 'public.parted_mirror');
});
($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'part', '--exit-when-caught-up'), $log, 30);
is($rc, 1, 'a partitioned source table exits 1');
like($err, qr/source table public\.parted is partitioned: its changes are decoded under its partitions' names\nHINT:  Map each partition/,
	'and says to map the partitions');

# --heartbeat: with only uncaptured tables written, the slot still advances.
my $batch_rows = $dst->safe_psql('postgres', 'SELECT count(*) FROM pgcdc.batch');
my $ckpt_before = $dst->safe_psql('postgres', "SELECT end_lsn FROM pgcdc.checkpoint WHERE pipeline = 'p'");
my $hb = start_consumer(consumer_cmd($src, $dst, 'p', '--heartbeat', 1, '--status-interval', 1), $log);
$src->safe_psql('postgres', 'CREATE TABLE other AS SELECT g FROM generate_series(1, 10000) g');
my $written = $src->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');
ok( wait_for_row($src,
		"SELECT confirmed_flush_lsn >= '$written' FROM pg_replication_slots WHERE slot_name = 'pgcdc_p'", 30),
	'--heartbeat moves the slot past WAL of uncaptured tables');
is(stop_consumer($hb), 0, 'the heartbeat run stops cleanly');
cmp_ok($dst->safe_psql('postgres', "SELECT end_lsn FROM pgcdc.checkpoint WHERE pipeline = 'p'"), 'ne', $ckpt_before,
	'heartbeats move the checkpoint');
is($dst->safe_psql('postgres', 'SELECT count(*) FROM pgcdc.batch'), $batch_rows,
	'but write no batch log rows: they applied nothing');

$src->safe_psql('postgres', "SELECT pg_drop_replication_slot('pgcdc_p')");
($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'p', '--exit-when-caught-up'), $log);
is($rc, 1, 'a slot that vanished under a checkpoint exits 1');
like($err, qr/replication slot "pgcdc_p" of pipeline "p" does not exist, but the target has applied changes up to [0-9A-F]+\/[0-9A-F]+\nHINT:  /,
	'and says what was lost');

# A decoder option the source rejects (pipeline.options): final, not retried.
$dst->safe_psql('postgres',
	"SELECT pgcdc.create_pipeline('badopt', options => '{\"actions\": \"insert,bogus\"}'); "
	  . "SELECT pgcdc.add_table('badopt', 'public.acct', 'public.acct_badopt')");
($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'badopt', '--exit-when-caught-up', '--snapshot', 'never'), $log, 30);
is($rc, 1, 'a rejected decoder option exits 1');
like($err, qr/could not start replication from slot "pgcdc_badopt": .*\nHINT:  The decoder rejected an option; check pgcdc.pipeline.options/,
	'and points at the pipeline options');

# A slot the source invalidated (max_slot_wal_keep_size).
$src->append_conf('postgresql.conf', "max_slot_wal_keep_size = 1MB\nmin_wal_size = 32MB\nmax_wal_size = 32MB\n");
$src->restart;
$dst->safe_psql('postgres', "SELECT pgcdc.create_pipeline('lost'); SELECT pgcdc.add_table('lost', 'public.acct', 'public.acct_lost')");
($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'lost', '--exit-when-caught-up'), $log);
is($rc, 0, 'pipeline "lost" starts') or diag($err);
for (1 .. 5)
{
	$src->safe_psql('postgres', "INSERT INTO acct SELECT 1000 + g, g FROM generate_series(1, 10) g "
		  . "ON CONFLICT (id) DO UPDATE SET v = acct.v + 1; SELECT pg_switch_wal();");
}
$src->safe_psql('postgres', 'CHECKPOINT');
is($src->safe_psql('postgres', "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'pgcdc_lost'"),
	'lost', 'the source invalidated the slot');
($rc, $err) = run_consumer(consumer_cmd($src, $dst, 'lost', '--exit-when-caught-up'), $log);
is($rc, 1, 'an invalidated slot exits 1');
like($err, qr/replication slot "pgcdc_lost" was invalidated: the source removed WAL it still needed\nHINT:  /,
	'and says so with a hint');

# Server settings.
my $plain = new_node('plain', no_extension => 1);
$plain->append_conf('postgresql.conf', "wal_level = replica\n");
$plain->restart;
$plain->safe_psql('postgres', 'CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL, note text)');
($rc, $err) = run_consumer(consumer_cmd($plain, $dst, 'p', '--exit-when-caught-up'), $log);
is($rc, 1, 'wal_level = replica exits 1');
like($err, qr/ERROR: source server has wal_level = replica, logical decoding needs logical\nHINT:  Set wal_level = logical/,
	'wal_level: one line and a hint');
$plain->append_conf('postgresql.conf', "wal_level = logical\noutput_plugin_libraries = 'pgoutput'\n");
$plain->restart;
($rc, $err) = run_consumer(consumer_cmd($plain, $dst, 'p', '--exit-when-caught-up'), $log);
is($rc, 1, 'pgcdc missing from output_plugin_libraries exits 1');
like($err, qr/ERROR: source server does not allow pgcdc as an output plugin \(output_plugin_libraries = 'pgoutput'\)\nHINT:  /,
	'output_plugin_libraries: one line and a hint');

# --- Usage.
for my $bad ([], [ '--source', 'x' ], [ '--batch-size', 'many' ], [ '--snapshot', 'sometimes' ], [ '--idle-flush', 'maybe' ], [ '--bogus' ],
	[ '--source', 'x', '--target', 'y', '--pipeline', 'p', 'extra' ])
{
	my ($out, $e);
	IPC::Run::run([ consumer_cmd($src, $dst, 'p')->[0], @$bad ], '>', \$out, '2>', \$e);
	is($? >> 8, 2, "bad usage (@$bad) exits 2");
	like($e, qr/pgcdc_consumer|Try/, "bad usage (@$bad) says something");
}
my ($out, $e);
IPC::Run::run([ consumer_cmd($src, $dst, 'p')->[0], '--help' ], '>', \$out, '2>', \$e);
is($? >> 8, 0, '--help exits 0');
like($out, qr/--exit-when-caught-up/, '--help lists the options');
IPC::Run::run([ consumer_cmd($src, $dst, 'p')->[0], '--version' ], '>', \$out, '2>', \$e);
like($out, qr/^pgcdc_consumer \(pgcdc\) \d+\.\d+/, '--version');

# --- No password in any log line of this whole test.
my $all = slurp_log($log);
unlike($all, qr/\Q$src_pw\E|\Q$dst_pw\E/, 'passwords never appear in the logs');
like($all, qr/as cdc_src/, 'the log names the user, not the password');

# A wrong password: the error names the user, not the password.
(my $badpw = $dst_conn) =~ s/\Q$dst_pw\E/Wrong-pw-1234/;
($rc, my $badpw_log) = run_consumer(consumer_cmd($src_conn, $badpw, 'p', '--exit-when-caught-up'), "$log.badpw", 30);
is($rc, 1, 'a wrong password on the first connection exits 1');
like($badpw_log, qr/password authentication failed for user "cdc_tgt"/, 'a wrong password is reported');
unlike($badpw_log, qr/Wrong-pw-1234|\Q$src_pw\E/, 'without the password');

$_->stop for ($src, $dst, $plain);
done_testing();
