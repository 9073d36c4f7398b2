/*
 * pgcdc_consumer.c
 *		Apply a pgcdc pipeline's change stream to its targets exactly once.
 *
 *		The shape follows pg_recvlogical: getopt_long and usage(), signal
 *		handlers that only set a flag, and one cleanup path.  Around the
 *		stream sits a retry loop with exponential backoff; errors that a
 *		retry cannot fix (no pipeline, a lost slot, wrong server settings,
 *		another consumer on the pipeline) end the program with status 1.
 */
#include "postgres_fe.h"

#include <getopt.h>
#include <time.h>

#include "consumer.h"


ConsumerOptions opts = {
	.snapshot = SNAPSHOT_INITIAL,
	.snapshot_jobs = 2,
	.batch_size = 10000,
	.batch_ms = 200,
	.idle_flush = true,
	.apply_sessions = 2,
	.batch_memory_mb = 8,
	.status_interval = 10,
	.heartbeat = 0,
	.max_backoff = 60,
};
Stats		stats;
volatile sig_atomic_t stop_requested = 0;
static bool was_paused = false;

static void
usage(void)
{
	printf("pgcdc_consumer applies a pgcdc pipeline's changes to its targets, exactly once.\n\n"
		   "Usage:\n"
		   "  pgcdc_consumer --source CONNINFO --target CONNINFO --pipeline NAME [OPTION]...\n\n"
		   "Options:\n"
		   "      --source=CONNINFO      source database (libpq connection string)\n"
		   "      --target=CONNINFO      target database with CREATE EXTENSION pgcdc\n"
		   "      --pipeline=NAME        row of pgcdc.pipeline in the target\n"
		   "      --snapshot=initial|never  copy existing rows of a new slot first (default: initial)\n"
		   "      --snapshot-jobs=N      tables copied at once by the snapshot (default: 2)\n"
		   "      --batch-size=N         events per target transaction, whole source transactions (default: 10000)\n"
		   "      --batch-ms=MS          longest wait before a batch is applied (default: 200)\n"
		   "      --idle-flush=on|off    when the source pauses and the target is free, apply a batch\n"
		   "                             after a tenth of --batch-ms (default: on)\n"
		   "      --apply-sessions=N     target sessions batches alternate between: with 2, a batch's\n"
		   "                             COPY runs while the one before is applied (default: 2)\n"
		   "      --batch-memory=MB      memory for each of a batch's rows, their headers and its events'\n"
		   "                             JSON; more goes to files in $TMPDIR (default: 8; at most 6 x MB\n"
		   "                             in all)\n"
		   "      --status-interval=S    feedback to the source at least this often (default: 10)\n"
		   "      --heartbeat=S          when nothing is captured for S seconds, emit a message on the\n"
		   "                             source so the slot advances (default: 0, off)\n"
		   "      --exit-when-caught-up  exit 0 once everything committed before the start is applied\n"
		   "      --metrics-port=PORT    Prometheus metrics on http://127.0.0.1:PORT/metrics\n"
		   "      --max-backoff=S        longest wait between reconnection attempts (default: 60)\n"
		   "  -v, --verbose              more output (per batch)\n"
		   "  -V, --version              print the version and exit\n"
		   "  -?, --help                 show this help and exit\n\n"
		   "Exit status: 0 done, 1 error, 2 bad usage.\n");
}

static void
handle_stop(int sig)
{
	stop_requested = 1;
}

static long
parse_int_option(const char *name, const char *arg, long min, long max)
{
	char	   *end;
	long		v;

	errno = 0;
	v = strtol(arg, &end, 10);
	if (errno != 0 || *end != '\0' || end == arg || v < min || v > max)
	{
		fprintf(stderr, "pgcdc_consumer: invalid value \"%s\" for --%s: must be an integer from %ld to %ld\n",
				arg, name, min, max);
		fprintf(stderr, "Try \"pgcdc_consumer --help\" for more information.\n");
		exit(EXIT_USAGE);
	}
	return v;
}

/* An option that takes one of two words: true for the first. */
static bool
parse_pair_option(const char *name, const char *arg, const char *first, const char *second)
{
	if (strcmp(arg, first) == 0)
		return true;
	if (strcmp(arg, second) != 0)
	{
		fprintf(stderr, "pgcdc_consumer: invalid value \"%s\" for --%s: use %s or %s\n",
				arg, name, first, second);
		exit(EXIT_USAGE);
	}
	return false;
}

/*
 * A failure is worth a retry when a connection broke or the server said
 * "later" (see sql_error_is_transient), else it is final.
 */
static int
classify(PGconn *a, PGconn *b)
{
	if ((a && PQstatus(a) == CONNECTION_BAD) || (b && PQstatus(b) == CONNECTION_BAD))
		return RUN_RETRY;
	if (last_sql_error.code[0] && sql_error_is_transient(&last_sql_error))
		return RUN_RETRY;
	return EXIT_ERROR;
}

/*
 * Whether both servers were reached once.  Until then a connection that
 * fails is an error to report, not to retry (as pg_recvlogical does): a
 * wrong host, database, role or password does not fix itself.
 */
static bool connected_once = false;

static int
connect_failed(const char *which)
{
	if (connected_once)
		return RUN_RETRY;
	log_hint("Check --%s. Connections lost after the first one are retried with backoff.", which);
	return EXIT_ERROR;
}

/*
 * Whether a source table of the pipeline was renamed or dropped since this
 * start looked it up by name (a later query of it failed): then it starts
 * over, and the next start sees how, and says what to do.
 */
static bool
moved_while_starting(PGconn *source, Pipeline *p)
{
	if (p->nmaps == 0 || PQstatus(source) != CONNECTION_OK || source_table_gone(source, p) < 0)
		return false;
	log_msg(LOG_INFO, "a source table of pipeline \"%s\" was renamed or dropped while starting: starting over",
			p->name);
	return true;
}

/* A start that failed: as classify, but 42P01 on a source table that moved starts over. */
static int
start_failed(PGconn *target, PGconn *source, Pipeline *p)
{
	int			rc = classify(target, source);

	if (rc == EXIT_ERROR && strcmp(last_sql_error.code, "42P01") == 0 && moved_while_starting(source, p))
		rc = RUN_AGAIN;
	return rc;
}

static int
run_once(void)
{
	PGconn	   *target = NULL;
	PGconn	   *target2 = NULL;
	PGconn	   *source = NULL;
	Stream	   *stream = NULL;
	Pipeline	p = {.name = (char *) opts.pipeline};
	bool		slot_exists = false;
	int			rc = RUN_RETRY;

	memset(&last_sql_error, 0, sizeof(last_sql_error));
	if ((target = target_connect(opts.target)) == NULL)
	{
		rc = connect_failed("target");
		goto done;
	}
	if (!target_lock_pipeline(target, opts.pipeline, 1))
	{
		rc = stop_requested ? EXIT_DONE : classify(target, NULL);
		goto done;
	}
	/*
	 * The second apply session (target_sessions.c), locked before the checkpoint is
	 * read and the replication origin taken: a killed consumer's second
	 * session may still be committing, holding the origin.  Without it (a
	 * connection limit, say) batches take turns in the first.
	 */
	if (opts.apply_sessions > 1 && (target2 = target_connect(opts.target)) == NULL)
		log_msg(LOG_INFO, "applying in one target session: each batch's COPY waits for the batch before");
	else if (target2 != NULL && !target_lock_pipeline(target2, opts.pipeline, 2))
	{
		/* (its session ends within a second of its client: try again) */
		rc = stop_requested ? EXIT_DONE : RUN_RETRY;
		goto done;
	}
	if (!target_setup_origin(target, opts.pipeline, &p.origin))
	{
		rc = stop_requested ? EXIT_DONE : classify(target, NULL);
		goto done;
	}
	if ((source = target_connect(opts.source)) == NULL)
	{
		rc = connect_failed("source");
		goto done;
	}
	connected_once = true;
	log_msg(LOG_INFO, "pipeline \"%s\": source %s, target %s", opts.pipeline,
			conn_describe(source), conn_describe(target));

	if (!target_load_pipeline(target, source, &p))
	{
		rc = start_failed(target, source, &p);
		goto done;
	}
	if (p.paused && opts.exit_when_caught_up)
	{
		/* nothing gets applied: "caught up" would be a lie */
		log_msg(LOG_ERROR, "pipeline \"%s\" is paused: nothing was applied", p.name);
		log_hint("Resume it with pgcdc.resume_pipeline('%s').", p.name);
		rc = EXIT_ERROR;
		goto done;
	}
	if (p.paused)
	{
		/* said once, not at every look (every 5 s) */
		if (!was_paused)
			log_msg(LOG_INFO, "pipeline \"%s\" is paused; waiting (pgcdc.resume_pipeline resumes it)", p.name);
		was_paused = true;
		checkpoint_note_source(target, source, &p);
		rc = RUN_PAUSED;
		goto done;
	}
	if (was_paused)
		log_msg(LOG_INFO, "pipeline \"%s\" was resumed", p.name);
	was_paused = false;
	if (!source_check(source, &p, &slot_exists) || !target_prepare_tables(target, source, &p))
	{
		rc = start_failed(target, source, &p);
		goto done;
	}
	if ((stream = stream_open(opts.source)) == NULL)
		goto done;

	/*
	 * A slot whose changes never reached the target (no checkpoint) is ours
	 * to recreate: an interrupted snapshot starts over.
	 */
	if (slot_exists && !p.has_checkpoint && opts.snapshot == SNAPSHOT_INITIAL)
	{
		log_msg(LOG_INFO, "slot \"%s\" has no checkpoint in the target: taking the snapshot again",
				p.slot_name);
		if (!stream_drop_slot(source, p.slot_name) || !target_forget_snapshot_quarantine(target, &p))
		{
			rc = classify(target, source);
			goto done;
		}
		slot_exists = false;
	}
	if (!slot_exists)
	{
		Lsn			consistent = InvalidLsn;
		char	   *snapshot_name = NULL;
		char	   *snapshot_ts = NULL;
		bool		transient = false;
		bool		ok;

		if (opts.snapshot == SNAPSHOT_INITIAL && (snapshot_ts = snapshot_source_time(source)) == NULL)
		{
			rc = classify(target, source);
			goto done;
		}
		if (!stream_create_slot(stream, p.slot_name, false, opts.snapshot == SNAPSHOT_INITIAL,
								&consistent, &snapshot_name))
		{
			free(snapshot_ts);
			rc = classify(target, PQstatus(source) == CONNECTION_BAD ? source : NULL);
			goto done;
		}
		ok = opts.snapshot != SNAPSHOT_INITIAL ||
			snapshot_run(opts.source, target, &p, snapshot_name, consistent, snapshot_ts, &transient);
		free(snapshot_name);
		free(snapshot_ts);
		/* (a table renamed or dropped meanwhile: its copy failed, 42P01 in a child) */
		if (!ok && !transient && !stop_requested && moved_while_starting(source, &p))
			rc = RUN_AGAIN;
		else if (!ok && !transient && !stop_requested)
		{
			/* taking it again would meet the same rows: no retry loop */
			log_msg(LOG_ERROR, "the initial snapshot of pipeline \"%s\" failed on a table's rows", p.name);
			log_hint("The error is above. Fix those rows or the table map (e.g. its key_columns), then start again.");
			rc = EXIT_ERROR;
		}
		if (!ok)
			goto done;
	}
	else if (!snapshot_added_maps(opts.source, source, target, &p))
	{
		rc = classify(target, source);
		if (rc == EXIT_ERROR && moved_while_starting(source, &p))
			rc = RUN_AGAIN;
		goto done;
	}

	if (!stream_start(stream, &p, p.has_checkpoint ? p.ckpt_end_lsn : InvalidLsn))
	{
		rc = classify(target, PQstatus(source) == CONNECTION_BAD ? source : stream_conn(stream));
		goto done;
	}
	rc = stream_run(stream, target, target2, source, &p);

done:
	stream_close(stream);
	PQfinish(source);
	PQfinish(target2);
	PQfinish(target);
	pipeline_free(&p);
	return rc;
}

/* A connection string libpq cannot parse is bad usage, not a reason to retry. */
static void
check_conninfo(const char *which, const char *conninfo)
{
	char	   *err = NULL;
	PQconninfoOption *parsed = PQconninfoParse(conninfo, &err);

	if (parsed == NULL)
	{
		/* libpq's message ends with a newline; the conninfo may hold a password */
		fprintf(stderr, "pgcdc_consumer: invalid --%s: %s", which, err ? err : "out of memory\n");
		fprintf(stderr, "Try \"pgcdc_consumer --help\" for more information.\n");
		exit(EXIT_USAGE);
	}
	PQconninfoFree(parsed);
}

/* Sleep, but wake for a stop request and keep answering metrics. */
static void
pause_seconds(int seconds)
{
	for (int i = 0; i < seconds * 10 && !stop_requested; i++)
	{
		struct timespec ts = {0, 100 * 1000 * 1000};

		metrics_poll();
		nanosleep(&ts, NULL);
	}
}

/*
 * Blank passwords in our own argv, which ps and /proc/PID/cmdline show for
 * as long as we run: "password=..." in a conninfo, and "user:...@" in a URI.
 */
static void
hide_passwords(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
	{
		char	   *p = argv[i];
		char	   *q;
		const char *ends = strstr(argv[i], "://") ? "&#" : " ";	/* URI parameter, or keyword value */

		while ((q = strstr(p, "password")) != NULL)
		{
			q += strlen("password");
			while (*q == ' ')
				q++;
			if (*q == '=')
			{
				for (q++; *q == ' '; q++)
					;
				if (*q == '\'')
				{
					/* a quoted value: up to the closing quote (\' and \\ escape) */
					for (q++; *q != '\0' && *q != '\''; q++)
					{
						if (*q == '\\' && q[1] != '\0')
							*q++ = 'x';
						*q = 'x';
					}
				}
				else
					for (; *q != '\0' && strchr(ends, *q) == NULL; q++)
						*q = 'x';
			}
			p = q;
		}
		if ((q = strstr(argv[i], "://")) != NULL)
		{
			char	   *at = strchr(q + 3, '@');
			char	   *colon = strchr(q + 3, ':');

			if (at != NULL && colon != NULL && colon < at && strcspn(q + 3, "/?") > (size_t) (at - q - 3))
				for (q = colon + 1; q < at; q++)
					*q = 'x';
		}
	}
}

int
main(int argc, char **argv)
{
	static struct option long_options[] = {
		{"source", required_argument, NULL, 's'},
		{"target", required_argument, NULL, 't'},
		{"pipeline", required_argument, NULL, 'p'},
		{"snapshot", required_argument, NULL, 1},
		{"snapshot-jobs", required_argument, NULL, 2},
		{"batch-size", required_argument, NULL, 3},
		{"batch-ms", required_argument, NULL, 4},
		{"status-interval", required_argument, NULL, 5},
		{"heartbeat", required_argument, NULL, 6},
		{"exit-when-caught-up", no_argument, NULL, 7},
		{"metrics-port", required_argument, NULL, 8},
		{"max-backoff", required_argument, NULL, 9},
		{"idle-flush", required_argument, NULL, 11},
		{"apply-sessions", required_argument, NULL, 12},
		{"batch-memory", required_argument, NULL, 13},
		{"verbose", no_argument, NULL, 'v'},
		{"version", no_argument, NULL, 'V'},
		{"help", no_argument, NULL, 10},
		{NULL, 0, NULL, 0}
	};
	int			c;
	int			rc;
	int			delay = 1;
	int			quick = 0;		/* planned start overs in a row, each soon after the last */

	if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-?") == 0))
	{
		usage();
		exit(EXIT_DONE);
	}
	while ((c = getopt_long(argc, argv, "vV?", long_options, NULL)) != -1)
	{
		switch (c)
		{
			case 's':
				opts.source = optarg;
				break;
			case 't':
				opts.target = optarg;
				break;
			case 'p':
				opts.pipeline = optarg;
				break;
			case 1:
				opts.snapshot = parse_pair_option("snapshot", optarg, "initial", "never") ?
					SNAPSHOT_INITIAL : SNAPSHOT_NEVER;
				break;
			case 2:
				opts.snapshot_jobs = parse_int_option("snapshot-jobs", optarg, 1, 64);
				break;
			case 3:
				opts.batch_size = parse_int_option("batch-size", optarg, 1, 100000000);
				break;
			case 4:
				opts.batch_ms = parse_int_option("batch-ms", optarg, 0, 3600000);
				break;
			case 5:
				opts.status_interval = parse_int_option("status-interval", optarg, 1, 3600);
				break;
			case 6:
				opts.heartbeat = parse_int_option("heartbeat", optarg, 0, 86400);
				break;
			case 7:
				opts.exit_when_caught_up = true;
				break;
			case 8:
				opts.metrics_port = parse_int_option("metrics-port", optarg, 1, 65535);
				break;
			case 9:
				opts.max_backoff = parse_int_option("max-backoff", optarg, 1, 3600);
				break;
			case 11:
				opts.idle_flush = parse_pair_option("idle-flush", optarg, "on", "off");
				break;
			case 12:
				opts.apply_sessions = parse_int_option("apply-sessions", optarg, 1, 2);
				break;
			case 13:
				opts.batch_memory_mb = parse_int_option("batch-memory", optarg, 0, 4096);
				break;
			case 'v':
				opts.verbose++;
				break;
			case 'V':
				printf("pgcdc_consumer (pgcdc) %s\n", PGCDC_VERSION);
				exit(EXIT_DONE);
			case 10:
				usage();
				exit(EXIT_DONE);
			case '?':
				/* -? asks for help; getopt says '?' for an unknown option too */
				if (strcmp(argv[optind - 1], "-?") == 0)
				{
					usage();
					exit(EXIT_DONE);
				}
				/* FALLTHROUGH */
			default:
				fprintf(stderr, "Try \"pgcdc_consumer --help\" for more information.\n");
				exit(EXIT_USAGE);
		}
	}
	if (optind < argc)
	{
		fprintf(stderr, "pgcdc_consumer: too many command-line arguments (first is \"%s\")\n", argv[optind]);
		fprintf(stderr, "Try \"pgcdc_consumer --help\" for more information.\n");
		exit(EXIT_USAGE);
	}
	if (opts.source == NULL || opts.target == NULL || opts.pipeline == NULL)
	{
		fprintf(stderr, "pgcdc_consumer: --source, --target and --pipeline are required\n");
		fprintf(stderr, "Try \"pgcdc_consumer --help\" for more information.\n");
		exit(EXIT_USAGE);
	}
	check_conninfo("source", opts.source);
	check_conninfo("target", opts.target);
	opts.source = pg_strdup(opts.source);
	opts.target = pg_strdup(opts.target);
	hide_passwords(argc, argv);

	pqsignal(SIGINT, handle_stop);
	pqsignal(SIGTERM, handle_stop);
	pqsignal(SIGPIPE, SIG_IGN);
	if (opts.metrics_port > 0 && !metrics_listen(opts.metrics_port))
		exit(EXIT_ERROR);

	for (;;)
	{
		int64_t		started = now_us();

		rc = run_once();
		if (rc == EXIT_DONE || rc == EXIT_ERROR)
			break;
		if (stop_requested)
		{
			rc = EXIT_DONE;
			break;
		}
		if (rc == RUN_PAUSED)
		{
			pause_seconds(5);
			continue;
		}
		/*
		 * A planned start over (a rename to follow, maps changed) goes at
		 * once; one that comes back within seconds, again and again, waits
		 * as a retry does.
		 */
		if (rc == RUN_AGAIN)
		{
			quick = now_us() - started < 5 * INT64CONST(1000000) ? quick + 1 : 0;
			if (quick <= 3)
				continue;
		}
		/* a connection that worked for a while starts the backoff over */
		if (now_us() - started > 60 * INT64CONST(1000000))
			delay = 1;
		log_msg(LOG_INFO, "retrying in %d s", delay);
		stats.reconnects++;
		pause_seconds(delay);
		delay = Min(delay * 2, opts.max_backoff);
	}
	if (stop_requested)
		log_msg(LOG_INFO, "stopped");
	metrics_close();
	return rc;
}
