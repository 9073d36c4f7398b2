# Helpers shared by the t/02*_consumer_*.pl tests: clusters set up for
# pgcdc, pgcdc_consumer runs (to completion, or in the background to be
# killed), and comparisons of targets with their sources.
package ConsumerTest;

use strict;
use warnings;
use Exporter 'import';
use IO::Socket::INET;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

our @EXPORT = qw(new_node consumer_cmd run_consumer start_consumer stop_consumer
  kill9_consumer slurp_log same_rows scd2_check append_check wait_for_row wait_for_log
  audit_sql versions_check workload_sql start_workload stop_workload acct_pipeline_sql acct_checks
  http_get slow_applies session_batches);

# Make each statement that changes $table on $node take 80 ms (a statement
# trigger): the next batch is complete while one is applied, and goes to
# the consumer's other target session.
sub slow_applies
{
	my ($node, $table) = @_;
	$node->safe_psql('postgres', qq{
CREATE FUNCTION slow_apply_$table() RETURNS trigger LANGUAGE plpgsql
  AS \$\$ BEGIN PERFORM pg_sleep(0.08); RETURN NULL; END \$\$;
CREATE TRIGGER slow_apply AFTER INSERT OR UPDATE OR DELETE ON $table
  FOR EACH STATEMENT EXECUTE FUNCTION slow_apply_$table();
});
}

# How many batches a -v consumer log says it applied in target session 1
# and in session 2.
sub session_batches
{
	my ($log) = @_;
	my $first = () = $log =~ /^.* batch: .*\(target session 1\)$/mg;
	my $second = () = $log =~ /^.* batch: .*\(target session 2\)$/mg;
	return ($first, $second);
}

# A cluster that can be a source and a target: logical WAL, the plugin
# whitelist, the extension installed in "postgres".
sub new_node
{
	my ($name, %args) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(allows_streaming => 'logical');
	$node->append_conf('postgresql.conf', qq{
output_plugin_libraries = 'pgoutput, test_decoding, pgcdc'
max_replication_slots = 10
max_wal_senders = 10
shared_buffers = 32MB
autovacuum = off
fsync = off
log_min_messages = warning
} . ($args{conf} // ''));
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION pgcdc') unless $args{no_extension};
	return $node;
}

my $binary;

sub consumer_cmd
{
	my ($source, $target, $pipeline, @extra) = @_;
	# installed next to the server's programs, which the test PATH starts with
	$binary //= ref $source ? $source->installed_command('pgcdc_consumer') : 'pgcdc_consumer';
	return [
		$binary,
		'--source' => ref $source ? $source->connstr('postgres') : $source,
		'--target' => ref $target ? $target->connstr('postgres') : $target,
		'--pipeline' => $pipeline,
		'--max-backoff' => 2,
		@extra
	];
}

# Run to completion (normally with --exit-when-caught-up); the consumer's
# stderr goes to $log as well.  Returns (exit status, stderr of this run).
sub run_consumer
{
	my ($cmd, $log, $timeout) = @_;
	my ($out, $err) = ('', '');
	my $t = IPC::Run::timeout($timeout // 90);
	my $h = IPC::Run::start($cmd, '>', \$out, '2>', \$err, $t);
	eval { $h->finish; };
	my $timed_out = $@;
	if ($timed_out)
	{
		$h->kill_kill;
		$err .= "\n(test: timed out: $timed_out)\n";
	}
	append_log($log, $err);
	# a run that had to be stopped did not finish by itself: never a success
	return (-1, $err) if $timed_out;
	return (($h->full_result(0) // -1) >> 8, $err);
}

sub append_log
{
	my ($log, $text) = @_;
	open my $fh, '>>', $log or die "$log: $!";
	print $fh $text;
	close $fh;
}

# In the background, its stderr appended to $log.
sub start_consumer
{
	my ($cmd, $log) = @_;
	return IPC::Run::start($cmd, '>>', $log, '2>>', $log);
}

# SIGTERM and wait: the clean shutdown.  Returns the exit status.
sub stop_consumer
{
	my ($h) = @_;
	$h->signal('TERM');
	$h->finish;
	return $h->full_result(0) >> 8;
}

# SIGKILL: no chance to clean up anything.
sub kill9_consumer
{
	my ($h) = @_;
	$h->signal('KILL');
	eval { $h->finish; };
	return $h->full_result(0);
}

sub slurp_log
{
	my ($log) = @_;
	return -f $log ? slurp_file($log) : '';
}

# md5 and count of a query's rows in text form, ordered by the given columns.
sub digest
{
	my ($node, $cols, $from, $order) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, '|' ORDER BY $order)), '-') "
		  . "FROM (SELECT $cols FROM $from) t");
}

# A few rows, long values cut short, for diagnostics.
sub sample
{
	my ($node, $cols, $from, $order) = @_;
	return $node->safe_psql('postgres',
		"SELECT left(t::text, 150) FROM (SELECT $cols FROM $from ORDER BY $order LIMIT 20) t");
}

# Rows of the source table equal the target's (columns $cols).
sub same_rows
{
	my ($src, $stable, $dst, $dfrom, $cols, $order, $name) = @_;
	my $a = digest($src, $cols, $stable, $order);
	my $b = digest($dst, $cols, $dfrom, $order);
	is($b, $a, $name) or diag(
		"source:\n" . sample($src, $cols, $stable, $order) . "\ntarget:\n" . sample($dst, $cols, $dfrom, $order));
}

# SCD2 history invariants: versions 1..n per key without gaps, intervals
# half-open and non-overlapping, contiguous unless a delete closed one, at
# most one current row, the current row last and open-ended.
sub scd2_check
{
	my ($node, $hist, $key, $name) = @_;
	my $bad = $node->safe_psql('postgres', qq{
WITH v AS (
  SELECT $key AS k, _version, _valid_from, _valid_to, _is_current,
         lead(_valid_from) OVER w AS next_from, lead(_version) OVER w AS next_version,
         row_number() OVER w AS rn, count(*) OVER (PARTITION BY $key) AS n
  FROM $hist WINDOW w AS (PARTITION BY $key ORDER BY _version))
SELECT count(*) FILTER (WHERE _version <> rn) || ' misnumbered, '
    || count(*) FILTER (WHERE _valid_to <= _valid_from) || ' empty, '
    || count(*) FILTER (WHERE next_from < _valid_to) || ' overlapping, '
    || count(*) FILTER (WHERE _is_current AND (rn <> n OR _valid_to <> 'infinity')) || ' bad current, '
    || count(*) FILTER (WHERE NOT _is_current AND _valid_to = 'infinity') || ' open non-current'
FROM v});
	is($bad, '0 misnumbered, 0 empty, 0 overlapping, 0 bad current, 0 open non-current', $name);
}

# An append target holds each source event once: no duplicate positions.
sub append_check
{
	my ($node, $target, $expected, $name) = @_;
	my $got = $node->safe_psql('postgres',
		"SELECT count(*) || ' events, ' || count(DISTINCT (_source_lsn, _source_seq)) || ' distinct' "
		  . "FROM $target WHERE _op <> 'R'");
	is($got, "$expected events, $expected distinct", $name);
}

# Wait until a query on the node returns 't'.
sub wait_for_row
{
	my ($node, $query, $seconds) = @_;
	for (1 .. ($seconds // 60) * 10)
	{
		return 1 if $node->safe_psql('postgres', $query) eq 't';
		usleep(100_000);
	}
	return 0;
}

# Wait (up to $seconds, default 60) until the consumer log $log, from byte
# $from on (default: all of it), has a match of $re.
sub wait_for_log
{
	my ($log, $re, $from, $seconds) = @_;
	for (1 .. ($seconds // 60) * 10)
	{
		return 1 if substr(slurp_log($log), $from // 0) =~ $re;
		usleep(100_000);
	}
	return 0;
}

# A source-side audit of every row change of $table (key column "id"), by
# a trigger: what the targets must end up with, independent of the consumer.
sub audit_sql
{
	my ($table) = @_;
	return qq{
CREATE TABLE ${table}_audit (id bigserial PRIMARY KEY, txid bigint NOT NULL DEFAULT txid_current(),
  op text NOT NULL, old_key int, new_key int);
CREATE FUNCTION ${table}_audit() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
  IF TG_OP = 'INSERT' THEN INSERT INTO ${table}_audit (op, new_key) VALUES ('I', NEW.id);
  ELSIF TG_OP = 'UPDATE' THEN INSERT INTO ${table}_audit (op, old_key, new_key) VALUES ('U', OLD.id, NEW.id);
  ELSIF TG_OP = 'DELETE' THEN INSERT INTO ${table}_audit (op, old_key) VALUES ('D', OLD.id);
  ELSE INSERT INTO ${table}_audit (op) VALUES ('T');
  END IF;
  RETURN NULL;
END \$\$;
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON $table
  FOR EACH ROW EXECUTE FUNCTION ${table}_audit();
CREATE TRIGGER audit_truncate AFTER TRUNCATE ON $table
  FOR EACH STATEMENT EXECUTE FUNCTION ${table}_audit();
};
}

# Versions per key in the history equal what the audit says: per key and
# source transaction, the last change opens a version when it leaves a row
# with that key (insert, update, key update to it), none when it removes
# one.  (Every update of the workloads changes a tracked column.)
sub versions_check
{
	my ($src, $table, $dst, $hist, $name, $audit) = @_;
	$audit //= "${table}_audit";
	my $want = $src->safe_psql('postgres', qq{
WITH c AS (
  SELECT a.id, a.txid, k.key, k.opens
  FROM $audit a
  CROSS JOIN LATERAL (VALUES (a.new_key, true), (a.old_key, false)) k(key, opens)
  WHERE k.key IS NOT NULL AND NOT (NOT k.opens AND k.key IS NOT DISTINCT FROM a.new_key)),
last AS (SELECT DISTINCT ON (key, txid) key, opens FROM c ORDER BY key, txid, id DESC)
SELECT coalesce(string_agg(key || ':' || n, ' ' ORDER BY key), '')
FROM (SELECT key, count(*) n FROM last WHERE opens GROUP BY key) x});
	my $got = $dst->safe_psql('postgres',
		"SELECT coalesce(string_agg(id || ':' || n, ' ' ORDER BY id), '') "
		  . "FROM (SELECT id, count(*) n FROM $hist GROUP BY id) x");
	is($got, $want, $name) or diag(first_differences($got, $want));
}

# "key:count" lists: the keys whose counts differ, got vs wanted.
sub first_differences
{
	my ($got, $want) = @_;
	my %g = map { split /:/ } split / /, $got;
	my %w = map { split /:/ } split / /, $want;
	my %keys = (%g, %w);
	my @diff = grep { ($g{$_} // 0) != ($w{$_} // 0) } sort { $a <=> $b } keys %keys;
	return scalar(@diff) . ' keys differ; first ones (key got/wanted): '
	  . join(' ', map { "$_:" . ($g{$_} // 0) . '/' . ($w{$_} // 0) } @diff[0 .. ($#diff < 9 ? $#diff : 9)]);
}

# Table acct (with its audit) and a procedure that changes it until
# ctl.stop: transactions of one to five distinct keys; absent keys are
# inserted, present ones updated (a tracked column always changes),
# deleted, or moved to key + 1000000.
sub workload_sql
{
	my (%args) = @_;
	my $rows = $args{rows} // 200;
	my $keys = $args{keys} // 400;
	return q{
CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL, note text, pad text);
} . audit_sql('acct') . qq{
CREATE TABLE ctl (stop bool NOT NULL);
INSERT INTO ctl VALUES (false);
INSERT INTO acct SELECT g, 0, 'initial', repeat('x', g % 500) FROM generate_series(1, $rows) g;
CREATE FUNCTION workload_keys() RETURNS int LANGUAGE sql AS 'SELECT $keys';
} . q{
CREATE PROCEDURE workload() LANGUAGE plpgsql AS $$
DECLARE
  k int;
  r float8;
BEGIN
  LOOP
    FOR k IN SELECT DISTINCT 1 + (random() * (workload_keys() - 1))::int
             FROM generate_series(0, (random() * 4)::int) LOOP
      r := random();
      IF NOT EXISTS (SELECT 1 FROM acct WHERE id = k) THEN
        INSERT INTO acct VALUES (k, 0, md5(r::text), CASE WHEN r < 0.1 THEN repeat(md5(k::text), 100) END);
      ELSIF r < 0.2 THEN
        DELETE FROM acct WHERE id = k;
      ELSIF r < 0.25 AND NOT EXISTS (SELECT 1 FROM acct WHERE id = k + 1000000) THEN
        UPDATE acct SET id = k + 1000000, v = v + 1 WHERE id = k;
      ELSE
        UPDATE acct SET v = v + 1, note = md5(r::text) WHERE id = k;
      END IF;
    END LOOP;
    COMMIT;
    EXIT WHEN (SELECT stop FROM ctl);
    PERFORM pg_sleep(0.002);
  END LOOP;
END $$;
};
}

sub start_workload
{
	my ($node) = @_;
	$node->safe_psql('postgres', 'UPDATE ctl SET stop = false');
	return IPC::Run::start(
		[ $node->installed_command('psql'), '-X', '-q', '-d', $node->connstr('postgres'), '-c', 'CALL workload()' ],
		'>', \my $out, '2>', \my $err);
}

# Ask the workload to stop after its transaction; returns psql's status.
sub stop_workload
{
	my ($node, $h) = @_;
	$node->safe_psql('postgres', 'UPDATE ctl SET stop = true');
	$h->finish;
	return $h->result(0);
}

# Pipeline $name: acct into a mirror, an scd2 history and an append log,
# and its audit table into an append log of its own.
sub acct_pipeline_sql
{
	my ($name) = @_;
	return qq{
SELECT pgcdc.create_pipeline('$name');
SELECT pgcdc.add_table('$name', 'public.acct', 'public.acct_mirror', 'mirror');
SELECT pgcdc.add_table('$name', 'public.acct', 'public.acct_hist', 'scd2');
SELECT pgcdc.add_table('$name', 'public.acct', 'public.acct_log', 'append');
SELECT pgcdc.add_table('$name', 'public.acct_audit', 'public.audit_log', 'append');
};
}

# The targets of acct_pipeline_sql against the source, wherever the
# snapshot fell: the captured audit (insert only) says which changes the
# snapshot holds ('R' rows) and which were streamed ('I' rows).  Returns
# (audit rows in the snapshot, streamed).
sub acct_checks
{
	my ($src, $dst) = @_;
	my $audit = $src->safe_psql('postgres', 'SELECT count(*) FROM acct_audit');
	is( $dst->safe_psql('postgres',
			"SELECT count(*) || ' ' || count(DISTINCT (_new->>'id')::bigint) FROM audit_log WHERE _op IN ('R', 'I')"),
		"$audit $audit", 'each source change is in the audit log exactly once, snapshot or streamed');

	my $cols = 'id, v, note, pad';
	same_rows($src, 'acct', $dst, 'acct_mirror', $cols, 'id', 'mirror equals source');
	same_rows($src, 'acct', $dst, 'acct_hist WHERE _is_current', $cols, 'id', 'current scd2 versions equal source');
	scd2_check($dst, 'acct_hist', 'id', 'scd2 intervals are well formed');
	versions_check($dst, 'acct', $dst, 'acct_hist',
		'scd2: one version per key in the snapshot, one per streamed change, none twice', q{
(SELECT (_new->>'id')::bigint AS id, (_new->>'txid')::bigint AS txid, _new->>'op' AS op,
        (_new->>'old_key')::int AS old_key, (_new->>'new_key')::int AS new_key
   FROM audit_log WHERE _op = 'I'
 UNION ALL
 SELECT 0, 0, 'I', NULL, (_new->>'id')::int FROM acct_log WHERE _op = 'R')});

	my ($in_snapshot, $streamed) = split /\|/, $dst->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE _op = 'R'), count(*) FILTER (WHERE _op = 'I') FROM audit_log");
	append_check($dst, 'acct_log', $streamed, 'append: every streamed change exactly once');
	is( $dst->safe_psql('postgres',
			"SELECT md5(string_agg(_op || (_new->>'id'), ',' ORDER BY _source_lsn, _source_seq)) FROM ("
			  . "SELECT _op, _source_lsn, _source_seq, coalesce(_new, _old, _key) AS _new FROM acct_log WHERE _op <> 'R') l"),
		$dst->safe_psql('postgres',
			"SELECT md5(string_agg((_new->>'op') || coalesce(_new->>'new_key', _new->>'old_key'), ',' "
			  . "ORDER BY (_new->>'id')::bigint)) FROM audit_log WHERE _op = 'I'"),
		'append: the streamed events in source order');
	is($dst->safe_psql('postgres', 'SELECT count(*) FROM pgcdc.quarantine'), '0', 'nothing was quarantined');
	return ($in_snapshot, $streamed);
}

# A tiny HTTP client for the metrics endpoint: the whole response.
sub http_get
{
	my ($port, $path) = @_;
	my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp', Timeout => 10)
	  or return "connect failed: $!";
	print $sock "GET $path HTTP/1.0\r\nHost: localhost\r\n\r\n";
	local $/;
	my $resp = <$sock>;
	close $sock;
	return $resp // '';
}

1;
