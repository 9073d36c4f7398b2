# Targets that exist before the pipeline starts: a plain mirror table, a
# plain table used as an scd2 history, and an append table without system
# columns.  The consumer adds what each mode needs; the scd2 table's rows
# become current versions valid since ever, and history continues from them.
use strict;
use warnings;
use lib 't';
use ConsumerTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $src = new_node('source', no_extension => 1);
my $dst = new_node('target');
my $log = "$PostgreSQL::Test::Utils::log_path/consumer_existing.log";

$src->safe_psql('postgres', q{
CREATE TABLE c (id int PRIMARY KEY, name text, city text);
INSERT INTO c VALUES (1, 'a', 'x'), (2, 'b', 'y');
});
$dst->safe_psql('postgres', q{
CREATE TABLE c_mirror (id int PRIMARY KEY, name text, city text);
CREATE TABLE c_hist (id int PRIMARY KEY, name text UNIQUE, city text);
INSERT INTO c_hist VALUES (1, 'a', 'x'), (2, 'b', 'y');
CREATE TABLE c_log (note text);
SELECT pgcdc.create_pipeline('p');
SELECT pgcdc.add_table('p', 'public.c', 'public.c_mirror', 'mirror', soft_delete => true);
SELECT pgcdc.add_table('p', 'public.c', 'public.c_hist', 'scd2', key_columns => '{id}');
SELECT pgcdc.add_table('p', 'public.c', 'public.c_log', 'append');
});

my $cmd = consumer_cmd($src, $dst, 'p', '--snapshot', 'never', '--exit-when-caught-up');
my ($rc, $err) = run_consumer($cmd, $log);
is($rc, 0, 'first run completes the targets') or diag($err);
like($err, qr/added the scd2 system columns to target public\.c_hist/, 'the log says what was added');
like($err, qr/target public\.c_hist: dropping its unique constraints and indexes/,
	'and that the plain table\'s unique constraints go');
is($dst->safe_psql('postgres', q{
SELECT string_agg(pg_get_indexdef(indexrelid), '; ' ORDER BY indexrelid) FROM pg_index
 WHERE indrelid = 'c_hist'::regclass}),
	'CREATE UNIQUE INDEX c_hist_id_idx ON public.c_hist USING btree (id) WHERE _is_current; '
	  . 'CREATE UNIQUE INDEX c_hist_id__valid_from_idx ON public.c_hist USING btree (id, _valid_from)',
	'the primary key and the unique constraint became the history indexes');

is($dst->safe_psql('postgres', q{
SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
 WHERE attrelid = 'c_mirror'::regclass AND attnum > 0 AND NOT attisdropped}),
	'id,name,city,_source_lsn,_source_seq,_synced_at,_is_deleted', 'mirror system columns added');
is($dst->safe_psql('postgres', q{
SELECT count(*) FROM pg_attribute
 WHERE attrelid = 'c_log'::regclass AND attname IN ('_op', '_source_lsn', '_source_seq', '_xid',
   '_commit_ts', '_key', '_new', '_old', '_received_at')}), '9', 'append system columns added');
is($dst->safe_psql('postgres', q{
SELECT string_agg(id || ':' || _version || ':' || _is_current || ':' || _valid_from, ' ' ORDER BY id) FROM c_hist}),
	'1:1:true:-infinity 2:1:true:-infinity', 'existing rows are current versions valid since ever');

$src->safe_psql('postgres', q{
UPDATE c SET city = 'z' WHERE id = 1;
DELETE FROM c WHERE id = 2;
INSERT INTO c VALUES (3, 'c', 'w');
});
($rc, $err) = run_consumer($cmd, $log);
is($rc, 0, 'streaming run') or diag($err);
is($dst->safe_psql('postgres', q{
SELECT string_agg(id || ':' || city || ':' || _version || ':' || _is_current, ' ' ORDER BY id, _version) FROM c_hist}),
	'1:x:1:false 1:z:2:true 2:y:1:false 3:w:1:true', 'history continues from the existing rows');
scd2_check($dst, 'c_hist', 'id', 'history invariants hold');
# a second current version of a key is impossible: the index was created
my ($ret, $out, $stderr) = $dst->psql('postgres',
	"INSERT INTO c_hist (id, name, city, _valid_from, _valid_to, _is_current, _is_deleted, _version) "
	  . "VALUES (1, 'dup', 'dup', now(), 'infinity', true, false, 9)");
like($stderr, qr/duplicate key value violates unique constraint/, 'one current version per key is enforced');
is($dst->safe_psql('postgres', q{SELECT string_agg(id || ':' || city || ':' || _is_deleted, ' ' ORDER BY id) FROM c_mirror}),
	'1:z:false 3:w:false', 'mirror rows from the stream (row 2 was never in it)');
append_check($dst, 'c_log', 3, 'append has the three events');

$src->stop;
$dst->stop;
done_testing();
