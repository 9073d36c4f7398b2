# The pgcdc output plugin through a walsender (pg_recvlogical), the path
# replication clients use: one event per line, options given with -o,
# settings pinned against the connection's own, errors, the plugin
# whitelist, and memory that stays flat on a large transaction.
use strict;
use warnings;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('primary');
$node->init(allows_streaming => 'logical');
$node->append_conf('postgresql.conf', q{
output_plugin_libraries = 'pgoutput, test_decoding, pgcdc'
shared_buffers = 16MB
logical_decoding_work_mem = 1MB
autovacuum = off
});
$node->start;

my $connstr = $node->connstr('postgres');
my $recvlogical = $node->installed_command('pg_recvlogical');

$node->safe_psql('postgres', q{
CREATE TABLE items (id int PRIMARY KEY, price numeric(10,2), at timestamptz, note text);
});
my ($rc, $out, $err) = run_recvlogical('--create-slot', '-S', 'ws', '-P', 'pgcdc');
is($rc, 0, 'pg_recvlogical creates a pgcdc slot') or diag($err);
($rc, $out, $err) = run_recvlogical('--create-slot', '-S', 'wsp', '-P', 'pgcdc');

$node->safe_psql('postgres', q{
BEGIN;
INSERT INTO items VALUES (1, 9.99, '2026-01-02 03:04:05+00', 'first'), (2, 0.5, NULL, E'two\nlines');
UPDATE items SET price = 10 WHERE id = 1;
DELETE FROM items WHERE id = 2;
COMMIT;
});
my $endpos = $node->lsn('insert');

# Options as replication options: a boolean without a value means true.
# The connection asks for other date and time settings; output is pinned.
{
	local $ENV{PGOPTIONS} = '-c DateStyle=SQL,DMY -c TimeZone=Asia/Kolkata -c extra_float_digits=-5';
	($rc, $out, $err) = run_recvlogical('--start', '-S', 'ws', '--no-loop', '--endpos', $endpos,
		'-f', '-', '-o', 'include-types', '-o', 'numeric-as-string=true');
}
is($rc, 0, 'pg_recvlogical streams to endpos') or diag($err);
my @lines = grep { length } split /\n/, $out;
my @events = map { decode_json($_) } @lines;
is(scalar(@lines), 6, 'one line per event: B, I, I, U, D, C');
is(join('', map { $_->{op} } @events), 'BIIUDC', 'events in commit order');
ok((grep { $_ =~ /^\{"op":"[BIUDC]","xid":\d+,"commit_lsn":"[0-9A-F]+\/[0-9A-F]+",/ } @lines) == 6,
	'op first, then xid and commit_lsn');
is($events[1]{new}{at}, '2026-01-02 03:04:05+00', 'timestamptz in UTC ISO whatever the connection says');
is($events[1]{new}{price}, '9.99', 'numeric-as-string quotes numbers');
is($events[1]{types}{price}, 'numeric(10,2)', 'include-types without a value is on');
is($events[2]{new}{note}, "two\nlines", 'newline escaped inside a string, event on one line');
is($events[5]{changes}, 4, 'commit counts the events');
ok(defined $events[5]{end_lsn}, 'commit carries end_lsn');

# pack-bytes: the events share CopyData messages, one per line; pg_recvlogical
# ends each message with a newline, so it writes exactly the same lines.
{
	local $ENV{PGOPTIONS} = '-c DateStyle=SQL,DMY -c TimeZone=Asia/Kolkata -c extra_float_digits=-5';
	my ($prc, $pout, $perr) = run_recvlogical('--start', '-S', 'wsp', '--no-loop', '--endpos', $endpos,
		'-f', '-', '-o', 'include-types', '-o', 'numeric-as-string=true', '-o', 'pack-bytes=65536');
	is($prc, 0, 'pg_recvlogical streams packed events') or diag($perr);
	is($pout, $out, 'packed events are the same lines as one event per message');
}

# A bad option fails the stream with the option's name; nothing is consumed.
($rc, $out, $err) = run_recvlogical('--start', '-S', 'ws', '--no-loop', '--endpos', $endpos,
	'-f', '-', '-o', 'tables=public');
isnt($rc, 0, 'bad table pattern fails the stream');
like($err, qr/invalid table pattern "public" in pgcdc option "tables"/, 'error names the option');
($rc, $out, $err) = run_recvlogical('--start', '-S', 'ws', '--no-loop', '--endpos', $endpos,
	'-f', '-', '-o', 'colour=blue');
like($err, qr/unrecognized pgcdc option "colour"/, 'unknown option is an error');

# The output plugin whitelist of 15.19+: without pgcdc in it, no slot.
my $strict = PostgreSQL::Test::Cluster->new('strict');
$strict->init(allows_streaming => 'logical');
$strict->start;
my ($ret, $stdout, $stderr) = $strict->psql('postgres',
	q{SELECT pg_create_logical_replication_slot('s', 'pgcdc')});
like($stderr, qr/library "pgcdc" may not be used as an output plugin/,
	'without output_plugin_libraries the plugin is refused');
$strict->stop;

# Memory: one transaction far larger than logical_decoding_work_mem (1MB
# here).  If events were buffered per transaction the walsender would need
# more than the whole output (~150MB); it must stay near its baseline, also
# with the largest pack-bytes (events share messages of up to 1MB).
$node->safe_psql('postgres', q{
CREATE TABLE big (id int PRIMARY KEY, pad text);
});
($rc, $out, $err) = run_recvlogical('--create-slot', '-S', 'mem', '-P', 'pgcdc');
$node->safe_psql('postgres', q{
INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 1000000) g;
});
my $memend = $node->lsn('insert');
my $outfile = $node->basedir . '/big.jsonl';
my $h = IPC::Run::start([ $recvlogical, '--dbname', $connstr, '--start', '-S', 'mem',
	'--no-loop', '-f', $outfile, '-F', '1', '-o', 'include-transaction=false', '-o', 'pack-bytes=1048576' ],
	'>', \my $sout, '2>', \my $serr);
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_replication_slots WHERE slot_name = 'mem' AND active})
  or die 'walsender did not start';
my $pid = $node->safe_psql('postgres',
	q{SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'mem'});
$node->poll_query_until('postgres',
	qq{SELECT confirmed_flush_lsn >= '$memend' FROM pg_replication_slots WHERE slot_name = 'mem'}, 't')
  or die 'decoding did not finish';
my $hwm_kb = peak_rss_kb($pid);
$h->kill_kill;
my $bytes = -s $outfile;
my $lines = 0;
open(my $fh, '<', $outfile) or die;
$lines++ while <$fh>;
close $fh;
is($lines, 1000000, 'a million-row transaction decoded completely');
cmp_ok($bytes, '>', 150 * 1024 * 1024, 'its output is larger than 150MB');
cmp_ok($hwm_kb, '<', 96 * 1024, "walsender peak RSS stays under 96MB (was ${hwm_kb}kB)");
note "walsender VmHWM ${hwm_kb}kB for $bytes bytes of output";

$node->stop;
done_testing();

sub run_recvlogical
{
	my @args = @_;
	my ($o, $e) = ('', '');
	IPC::Run::run([ $recvlogical, '--dbname', $connstr, @args ], '>', \$o, '2>', \$e,
		IPC::Run::timeout(180));
	return ($? >> 8, $o, $e);
}

sub peak_rss_kb
{
	my ($p) = @_;
	open(my $st, '<', "/proc/$p/status") or return -1;
	while (<$st>)
	{
		return $1 if /^VmHWM:\s+(\d+)\s+kB/;
	}
	return -1;
}
