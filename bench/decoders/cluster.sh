# bench/decoders/cluster.sh — sourced by bench/decoders/run and
# bench/decoders/memory: start_cluster starts a temporary cluster for the
# benchmarks, stopped and removed on exit (kept with KEEP=1), and defines
#   bindir tmp data port conn   as (run as the server's user)   sql (psql)   calc (awk arithmetic)
# The server refuses to run as root: when started by root it runs as
# PGCDC_BENCH_USER (default postgres).  wal2json is added to the output-plugin
# whitelist because it is one of the benchmark's anchors.

start_cluster() {
  PG_CONFIG=${PG_CONFIG:-pg_config}
  bindir=$("$PG_CONFIG" --bindir)
  pkglibdir=$("$PG_CONFIG" --pkglibdir)

  # The server refuses to run as root: run it as an unprivileged user.
  if [ "$(id -u)" -eq 0 ]; then
    runas=${PGCDC_BENCH_USER:-postgres}
    as() { runuser -u "$runas" -- "$@"; }
  else
    runas=$(id -un)
    as() { "$@"; }
  fi

  tmp=$(mktemp -d /tmp/pgcdc-bench.XXXXXX)
  data=$tmp/data out=$tmp/out
  mkdir -p "$out"
  chown "$runas" "$tmp"
  cleanup() {  # trap on EXIT
    local rc=$?
    jobs -p | xargs -r kill 2>/dev/null || true
    [ -f "$data/postmaster.pid" ] && as "$bindir/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
    exit $rc
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM

  # A free port.  The server listens on a Unix socket in $tmp only, so the port
  # just has to be unused by a server sharing a socket directory; stay clear of
  # TCP listeners anyway.
  port=
  for p in $(shuf -i 20000-60000 -n 50); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
  done
  [ -n "$port" ] || { echo "no free port" >&2; exit 1; }

  as "$bindir/initdb" -D "$data" -U postgres -A trust -E UTF8 --no-locale --no-sync >"$tmp/initdb.log" 2>&1 \
    || { cat "$tmp/initdb.log"; exit 1; }
  cat >>"$data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$tmp'
port = $port
wal_level = logical
output_plugin_libraries = 'pgoutput, test_decoding, pgcdc, wal2json'
max_replication_slots = 64
max_wal_senders = 16
shared_buffers = 256MB
max_wal_size = 20GB
min_wal_size = 1GB
checkpoint_timeout = 1h
autovacuum = off
# logical_decoding_work_mem stays at its default (64MB).
CONF
  as "$bindir/pg_ctl" -D "$data" -l "$tmp/server.log" -w start >/dev/null \
    || { cat "$tmp/server.log"; exit 1; }

  calc() { awk "BEGIN { printf \"%.6f\\n\", $1 }"; }

  conn="host=$tmp port=$port user=postgres"
  sql() { "$bindir/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$conn dbname=${DB:-bench}" "$@"; }
}
