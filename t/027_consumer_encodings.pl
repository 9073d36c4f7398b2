# A LATIN1 source database with non-ASCII table and column names and values,
# applied to a UTF-8 target: names match (the decoder's \u escapes and the
# consumer's UTF-8 sessions), values arrive intact in mirror and scd2, json
# equal as JSON (its non-ASCII characters come as \u escapes).
use strict;
use warnings;
use utf8;
use lib 't';
use ConsumerTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $src = new_node('source', no_extension => 1);
my $dst = new_node('target');
my $log = "$PostgreSQL::Test::Utils::log_path/consumer_encodings.log";

$src->safe_psql('postgres',
	"CREATE DATABASE latin ENCODING 'LATIN1' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'");
my $latin = $src->connstr('latin');
my $sql = sub {
	my ($node, $db, $q) = @_;
	local $ENV{PGCLIENTENCODING} = 'UTF8';
	return $node->safe_psql($db, $q);
};
$sql->($src, 'latin', q{
CREATE TABLE "café" (id int PRIMARY KEY, "naïve" text, j json);
INSERT INTO "café" VALUES (1, 'déjà vu "q" \ ñ', '{"k":  "é"}');
});
$sql->($dst, 'postgres', q{
SELECT pgcdc.create_pipeline('lat');
SELECT pgcdc.add_table('lat', '"café"', 'public."café_m"', 'mirror');
SELECT pgcdc.add_table('lat', '"café"', 'public."café_h"', 'scd2');
});
my $cmd = consumer_cmd($latin, $dst, 'lat', '--exit-when-caught-up');
my ($rc, $err) = run_consumer($cmd, $log);
is($rc, 0, 'snapshot of a LATIN1 table') or diag($err);

$sql->($src, 'latin', q{
INSERT INTO "café" VALUES (2, 'ü ß', '["ö"]');
UPDATE "café" SET "naïve" = 'çà' WHERE id = 1;
UPDATE "café" SET j = '{"é": "ü"}' WHERE id = 2;
});
($rc, $err) = run_consumer($cmd, $log);
is($rc, 0, 'streaming from a LATIN1 database') or diag($err);

# json text keeps its non-ASCII characters as \u escapes (README): compare as JSON
my $q = 'SELECT string_agg(id || \'|\' || "naïve" || \'|\' || j::jsonb::text, \' / \' ORDER BY id) FROM ';
is($sql->($dst, 'postgres', $q . '"café_m"'), $sql->($src, 'latin', $q . '"café"'),
	'mirror equals the LATIN1 source, names and values (json compared as JSON)');
is($sql->($dst, 'postgres', 'SELECT count(*) FROM "café_h" WHERE id = 1'), '2',
	'scd2: the update of the non-ASCII column opened a version');

$src->stop;
$dst->stop;
done_testing();
