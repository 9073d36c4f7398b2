# Source changes that commit while a consumer is starting (over), at the
# worst moment: the consumer is run under gdb, stopped at a breakpoint
# between two of its looks at the source, and the change is made there.
#
# A table followed through a rename, renamed again while the start over
# looks, is followed (a CI run once saw the consumer stop there with "does
# not exist", by timing alone); one renamed while a first start looks, or
# while its initial snapshot starts, makes it start over and stop with the
# usual error and hint.
use strict;
use warnings;
use lib 't';
use ConsumerTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my ($gdb) = grep { -x $_ } map { "$_/gdb" } split /:/, $ENV{PATH};
# (scripts/install-deps installs it: a test run without it is not a pass)
BAIL_OUT('gdb is missing: run scripts/install-deps') unless $gdb;
# A machine that forbids ptrace (some containers) cannot run this test at
# all: it is skipped there, and scripts/test says so.
plan skip_all => 'gdb cannot run a program here (ptrace not permitted)'
  unless `'$gdb' -q -batch -ex run -ex 'quit \$_exitcode' --args /bin/sh -c 'exit 7' 2>&1; echo "status \$?"`
  =~ /status 7$/m;

my $src = new_node('source', no_extension => 1);
my $dst = new_node('target');
my $log = "$PostgreSQL::Test::Utils::log_path/consumer_start_race.log";


# The consumer under gdb, stopped at the start of function $break from its
# ($skip + 1)th call on; there, if table $from exists at the source, it is
# renamed to $to (and the log says so).  gdb ends with the consumer, with
# its exit status.
my $psql = $src->installed_command('psql');
my $conn = $src->connstr('postgres');

sub consumer_under_gdb
{
	my ($pipeline, $break, $skip, $from, $to) = @_;
	my $cmdfile = "$PostgreSQL::Test::Utils::tmp_check/start_race_$pipeline.gdb";
	open my $fh, '>', $cmdfile or die "$cmdfile: $!";
	print $fh <<"GDB";
set pagination off
set confirm off
handle SIGTERM nostop noprint pass
handle SIGINT nostop noprint pass
handle SIGPIPE nostop noprint pass
break $break
ignore 1 $skip
commands 1
  silent
  shell if [ -n "\$('$psql' -XAtq -d '$conn' -c "SELECT to_regclass('$from')")" ]; then '$psql' -XAtq -d '$conn' -c 'ALTER TABLE $from RENAME TO $to' && echo 'test: $from renamed to $to at the consumer breakpoint' >> '$log'; fi
  continue
end
run
quit \$_exitcode
GDB
	close $fh;
	return start_consumer(
		[ $gdb, '-q', '-batch', '-x', $cmdfile, '--args', @{ consumer_cmd($src, $dst, $pipeline, '--batch-ms', 50) } ],
		$log);
}

# SIGTERM to the consumer itself, started after $at in the log (gdb ends with it)
sub stop_under_gdb
{
	my ($h, $at) = @_;
	my ($pid) = substr(slurp_log($log), $at) =~ /pgcdc_consumer\[(\d+)\] LOG: pipeline/;
	kill 'TERM', $pid;
	$h->finish;
	return ($pid, $h->full_result(0) >> 8);
}

# Table $t at the source (filled by $fill, SQL), and pipeline $pipeline
# mapping it to ${t}_mirror; returns where the log ends now.
sub new_pipeline
{
	my ($pipeline, $t, $fill) = @_;
	$src->safe_psql('postgres', "CREATE TABLE $t (id int PRIMARY KEY, v int); $fill");
	$dst->safe_psql('postgres',
		"SELECT pgcdc.create_pipeline('$pipeline'); SELECT pgcdc.add_table('$pipeline', 'public.$t', 'public.${t}_mirror')");
	return length(slurp_log($log));
}

# A table followed through a rename ($t to ${t}_tmp) renamed again (to
# ${t}_final) at the consumer's breakpoint in the start over: the changes
# made under each name arrive, and the map takes the final one.  Returns
# the log from the start.
sub renamed_twice_while_starting
{
	my ($pipeline, $t, $break, $when) = @_;
	my $at = new_pipeline($pipeline, $t, '');
	# (the breakpoint's first call is the first start's)
	my $h = consumer_under_gdb($pipeline, $break, 1, "${t}_tmp", "${t}_final");
	ok(wait_for_log($log, qr/pipeline "$pipeline".*streaming from slot/s), "$pipeline: streaming (under gdb)");
	$src->safe_psql('postgres',
		"INSERT INTO $t VALUES (1, 1); ALTER TABLE $t RENAME TO ${t}_tmp; INSERT INTO ${t}_tmp VALUES (2, 2)");
	ok(wait_for_log($log, qr/source table public\.$t of pipeline "$pipeline" was renamed to public\.${t}_tmp: following it/),
		"$pipeline: the first rename is followed");
	ok(wait_for_log($log, qr/test: ${t}_tmp renamed to ${t}_final at the consumer breakpoint/),
		"$pipeline: the second rename was made while the start over $when");
	ok( wait_for_log(
			$log, qr/source table public\.${t}_tmp of pipeline "$pipeline" was renamed to public\.${t}_final: following it/),
		"$pipeline: the consumer found the table under its newest name, by OID");
	$src->safe_psql('postgres', "INSERT INTO ${t}_final VALUES (3, 3)");
	ok(wait_for_row($dst, "SELECT string_agg(id || ':' || v, ' ' ORDER BY id) = '1:1 2:2 3:3' FROM ${t}_mirror"),
		"$pipeline: the changes made under each of the three names are applied");
	ok( wait_for_log(
			$log, qr/the stream has passed the rename of source table public\.$t: pipeline "$pipeline" now maps public\.${t}_final\n/),
		"$pipeline: and the map follows to the final name");
	my ($pid, $status) = stop_under_gdb($h, $at);
	is($status, 0, "$pipeline: stopped by SIGTERM with status 0");
	like(slurp_log($log), qr/pgcdc_consumer\[$pid\] LOG: stopped\n/, "$pipeline: cleanly");
	is($dst->safe_psql('postgres', "SELECT source_table FROM pgcdc.table_map WHERE pipeline = '$pipeline'"),
		"public.${t}_final", "$pipeline: the map names the final name");
	return substr(slurp_log($log), $at);
}

# At source_table_gone, the start's check that every mapped name exists
# (after it found the table by OID under ${t}_tmp): it looks by OID again.
my $tail = renamed_twice_while_starting('p', 'w', 'source_table_gone', 'checked the names');
unlike($tail, qr/ERROR/, 'p: no error on the way');

# One look later, at source_identity, the read of the table's key: that
# query fails (42P01) and the consumer starts over once more, and follows.
$tail = renamed_twice_while_starting('r', 'v', 'source_identity', 'read the key');
like($tail, qr/LOG: a source table of pipeline "r" was renamed or dropped while starting: starting over\n/,
	'r: it started over once more');
unlike($tail, qr/ERROR: (?!relation "public\.v_tmp" does not exist)/, 'r: no other error on the way');

# A table renamed while a first start looks (no slot yet, nothing
# followed), at the breakpoint $break: the query that meets the old name
# fails (42P01) and the consumer starts over, which finds the name gone and
# stops (status 1) saying what to run; nothing was streamed under the old
# name, so mapping the new one loses nothing, and the rows are copied.
sub renamed_while_first_start
{
	my ($pipeline, $t, $break, $when) = @_;
	my $at = new_pipeline($pipeline, $t, "INSERT INTO $t VALUES (1, 1)");
	my $h = consumer_under_gdb($pipeline, $break, 0, $t, "${t}2");
	$h->finish;
	my $tail = substr(slurp_log($log), $at);
	is($h->full_result(0) >> 8, 1, "$pipeline: renamed while $when: the consumer stops with status 1");
	like(
		$tail,
		qr/test: $t renamed to ${t}2 at the consumer breakpoint\n.*LOG: a source table of pipeline "$pipeline" was renamed or dropped while starting: starting over\n.*ERROR: source table public\.$t of pipeline "$pipeline" does not exist\nHINT: .*pgcdc\.rename_source_table\('$pipeline', 'public\.$t', 'schema\.new_name'\)/s,
		"$pipeline: after starting over once, and says how to map the new name") or diag($tail);
	$dst->safe_psql('postgres', "SELECT pgcdc.rename_source_table('$pipeline', 'public.$t', 'public.${t}2')");
	$src->safe_psql('postgres', "INSERT INTO ${t}2 VALUES (2, 2)");
	my ($rc, $err) = run_consumer(consumer_cmd($src, $dst, $pipeline, '--exit-when-caught-up'), $log, 60);
	is($rc, 0, "$pipeline: with the new name mapped, it runs") or diag($err);
	is($dst->safe_psql('postgres', "SELECT string_agg(id || ':' || v, ' ' ORDER BY id) FROM ${t}_mirror"),
		'1:1 2:2', "$pipeline: the rows copied at the start and the change after it are applied");
	return $tail;
}

# after the names were checked, before the table's columns were read
renamed_while_first_start('q', 'y', 'target_prepare_tables', 'starting');

# after the slot was made, before the initial snapshot copied the table (a
# child's COPY fails): not "the initial snapshot failed on a table's rows"
$tail = renamed_while_first_start('s', 'x', 'snapshot_run', 'its initial snapshot was starting');
like($tail, qr/ERROR: relation "public\.x" does not exist/, 's: the copy met the rename');
unlike($tail, qr/failed on a table's rows/, 's: not taken for bad rows');

done_testing();
