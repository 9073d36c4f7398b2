/*
 * consumer.h
 *		pgcdc_consumer: shared types and the interfaces between its parts.
 *
 *	pgcdc_consumer.c  options, signals, the retry loop, one cleanup path
 *	stream.c          replication connection: slot, START_REPLICATION, feedback
 *	event.c           the few top-level fields of a pgcdc event it needs
 *	target.c          the target: pipeline, table maps, lock, checkpoint, DDL
 *	apply.c           batches: staging, set-based apply, quarantine
 *	checkpoint.c      pgcdc.checkpoint: read at start, moved with each batch
 *	snapshot.c        the initial copy, consistent with the slot: one child per table
 *	snapshot_table.c  one table's copy; rows the target refuses found and quarantined
 *	metrics.c         Prometheus text metrics over HTTP
 *	log.c             logging
 */
#ifndef PGCDC_CONSUMER_H
#define PGCDC_CONSUMER_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "libpq-fe.h"
#include "pqexpbuffer.h"

typedef uint64_t Lsn;

#define InvalidLsn ((Lsn) 0)

/* Exit statuses (SPEC section 3). */
#define EXIT_DONE	0
#define EXIT_ERROR	1
#define EXIT_USAGE	2
/* run_once's other outcomes: retry after a backoff; paused, look again later;
 * start over at once (the source's tables or the maps changed: nothing failed) */
#define RUN_RETRY	(-1)
#define RUN_PAUSED	(-2)
#define RUN_AGAIN	(-3)

typedef enum SnapshotMode
{
	SNAPSHOT_INITIAL,
	SNAPSHOT_NEVER
} SnapshotMode;

typedef struct ConsumerOptions
{
	const char *source;
	const char *target;
	const char *pipeline;
	SnapshotMode snapshot;
	int			snapshot_jobs;
	long		batch_size;		/* events */
	int			batch_ms;
	bool		idle_flush;		/* a batch also goes when the source pauses */
	int			apply_sessions; /* target sessions batches take turns in (target_sessions.c) */
	int			batch_memory_mb;	/* per spool (spool.c) */
	int			status_interval;	/* seconds */
	int			heartbeat;		/* seconds, 0 = off */
	bool		exit_when_caught_up;
	int			metrics_port;	/* 0 = off */
	int			max_backoff;	/* seconds */
	int			verbose;
} ConsumerOptions;

/* A value's raw JSON text inside an event. */
typedef struct JsonSpan
{
	const char *ptr;
	size_t		len;
} JsonSpan;

/*
 * The fields of an event's row object, found as event_parse passes over it,
 * so that row_values need not scan it again.  (A row has at most
 * MaxTupleAttributeNumber columns.)
 */
#define ROW_FIELDS_MAX	1664
typedef struct RowFields
{
	const char *obj;			/* the object they are of */
	bool		complete;		/* all of its fields are here */
	int			n;
	struct
	{
		const char *name;		/* between the quotes, as in the JSON */
		uint32_t	namelen;
		bool		escaped;	/* the name has a \ escape */
		JsonSpan	value;
	}			f[ROW_FIELDS_MAX];
} RowFields;

/* One row of pgcdc.table_map, with what the consumer derives from it. */
typedef enum MapKind
{
	MAP_MIRROR,
	MAP_SCD2,
	MAP_APPEND
} MapKind;

typedef struct TableMap
{
	char	   *source_table;	/* canonical "schema"."table", as the source names it now */
	char	   *source_schema;
	char	   *source_name;
	unsigned int source_oid;	/* to notice a rename */
	char	   *map_table;		/* as table_map names it: differs while a rename is followed */
	int			nold;			/* ... and then the names events carry until the stream passes */
	char	  **old_schemas;	/* the renames (one per rename seen, oldest first) */
	char	  **old_names;
	Lsn			renamed_until;	/* the source's position when the rename was seen */
	Lsn			dropped_until;	/* dropped at the source, seen at this position: its changes
								 * up to it are applied, then the consumer stops */
	char	   *target;			/* canonical quoted name */
	char	   *mode;			/* mirror | scd2 | append */
	MapKind		kind;			/* the mode, read once (compared per event) */
	char	   *key_columns;	/* text[] literal, or NULL: the source's identity */
	char	   *track_columns;	/* text[] literal or NULL */
	char	   *ignore_columns; /* text[] literal or NULL */
	bool		soft_delete;
	char	   *data_columns;	/* SQL list of quoted data columns */
	int			ncols;			/* the data columns one by one, in target order */
	char	  **colnames;
	bool	   *coljson;		/* json or jsonb: values pass as raw JSON text */
	JsonSpan   *values;			/* the row being staged (row_values) */
	int			nkeys;			/* key columns among the data columns (0: unknown) */
	int		   *keyidx;			/* ... their indexes */
	char	   *data_types;		/* SQL list: quoted column and its target type */
	int			nsrc;			/* the source table's columns when loaded */
	char	  **srcnames;
	char	   *srccols;		/* and their names and types, to notice a change */
	char	   *src_names;		/* the names and types as text[] literals: a map of a */
	char	   *src_types;		/* dropped table keeps them through a start over */
	bool		new_column;		/* an event had a column not among them */
	bool		created;		/* the consumer made the target (it adapts it) */
	bool		copy_now;		/* made now, after the pipeline's snapshot: copy it */
	bool		copy_pending;	/* made so, and its copy has not committed yet */
	Lsn			copied_at;		/* so copied at this position: older events are in it */
	bool	   *colwatch;		/* NOT NULL in a target we made: its absence means a drop */
	bool		watch_any;
	char		changed_column[NAMEDATALEN];	/* the column new_column is about */
} TableMap;

typedef struct Pipeline
{
	char	   *name;
	char	   *slot_name;
	bool		paused;
	char	   *decoder_options;	/* extra decoder options from pipeline.options */
	char	   *digest;			/* of its row and table maps, to see them change */
	char	   *origin;			/* replication origin of the target sessions, or NULL */
	int			nmaps;
	TableMap   *maps;
	/* the checkpoint: the last source transaction applied */
	Lsn			ckpt_commit_lsn;
	Lsn			ckpt_end_lsn;
	bool		has_checkpoint;
} Pipeline;

/* An event's fields the consumer routes and orders by. */
typedef struct EventInfo
{
	char		op;
	Lsn			commit_lsn;
	Lsn			end_lsn;		/* C only */
	long		seq;
	const char *schema;			/* into a scratch buffer; NULL if absent */
	const char *table;
	const char *prefix;			/* M only */
	const char *ts;				/* commit timestamp; NULL if null */
	JsonSpan	new_row;		/* the raw JSON of these values; ptr NULL if absent */
	JsonSpan	key;
	JsonSpan	old;
	JsonSpan	unchanged_toast;
	const RowFields *fields;	/* of the row a change stages (new; D: old, else key) */
} EventInfo;

/* Counters shown by metrics and logs. */
typedef struct Stats
{
	uint64_t	events;
	uint64_t	transactions;
	uint64_t	batches;
	uint64_t	quarantined;
	uint64_t	skipped;		/* at or before the checkpoint */
	uint64_t	reconnects;
	Lsn			received_lsn;
	Lsn			applied_lsn;
	Lsn			source_lsn;		/* source WAL position as last seen */
	double		lag_seconds;
	int64_t		last_commit_ts_us;	/* unix microseconds of the last applied commit */
} Stats;

extern ConsumerOptions opts;
extern Stats stats;
extern volatile sig_atomic_t stop_requested;

/* log.c */
#define LOG_WARNING	(-1)
#define LOG_ERROR	0
#define LOG_INFO	1
#define LOG_DEBUG	2
extern void log_msg(int level, const char *fmt,...) pg_attribute_printf(2, 3);
extern void log_hint(const char *fmt,...) pg_attribute_printf(1, 2);
extern char *conn_error(PGconn *conn);
extern const char *conn_describe(PGconn *conn);
extern char *format_lsn(Lsn lsn, char *buf);
extern bool parse_lsn(const char *s, Lsn *lsn);
extern int64_t now_us(void);

/* event.c */
extern bool event_parse(const char *json, size_t len, EventInfo *ev, RowFields *fields,
						char *scratch, size_t scratchlen);
extern bool row_values(TableMap *m, JsonSpan obj, const RowFields *fields, bool whole);
extern bool row_fields(PQExpBuffer out, TableMap *m);
extern void copy_text(PQExpBuffer out, const char *v, size_t len);
extern bool array_literal(PQExpBuffer out, JsonSpan arr);

/* target.c */
typedef struct SqlError
{
	char		code[6];
	char		message[1024];
	char		detail[1024];
} SqlError;
/* per thread: the apply thread runs statements while the stream goes on */
extern __thread SqlError last_sql_error;	/* of the last statement that failed */
extern __thread bool quiet_sql_errors;	/* failures expected: log them at DEBUG */

extern bool sql_error_is_transient(const SqlError *e);
extern int	target_pipeline_changed(PGconn *conn, const Pipeline *p);
extern int	source_table_gone(PGconn *source, Pipeline *p);
extern void append_array_element(PQExpBuffer buf, const char *s, bool first);
/* what source_tables_look saw */
typedef struct SourceLook
{
	Lsn			checked_at;		/* the source's WAL position then */
	int			moved;			/* a map whose table was renamed or dropped, else -1 */
	char	   *schema;			/* ... its new name (NULLs if dropped) */
	char	   *name;
	char	   *table;
	int			columns;		/* a map whose table's columns changed, else -1 */
} SourceLook;
extern bool source_tables_look(PGconn *source, const Pipeline *p, bool columns, SourceLook *look);
extern void target_note_new_column(const char *source_table, const char *column);
extern bool target_column_noted(const char *source_table, const char *column);
extern bool target_copy_done(PGconn *conn, const TableMap *m, Lsn copied_at);
extern bool target_copy_given_up(PGconn *conn, const TableMap *m);
extern bool target_read_marks(PGconn *conn, TableMap *m);
extern void keep_sql_error(PGconn *conn, const PGresult *res);
extern PGconn *target_connect(const char *conninfo);
extern bool target_lock_pipeline(PGconn *conn, const char *pipeline, int session);
extern bool target_setup_origin(PGconn *conn, const char *pipeline, char **origin);
extern bool target_load_pipeline(PGconn *conn, PGconn *source, Pipeline *p);
extern bool target_prepare_tables(PGconn *conn, PGconn *source, Pipeline *p);
extern bool target_forget_snapshot_quarantine(PGconn *conn, Pipeline *p);
extern void pipeline_free(Pipeline *p);
extern PGresult *exec_ok(PGconn *conn, const char *sql, int nparams, const char *const *params);
extern char *source_identity(PGconn *source, const char *table, bool *failed);
extern PGresult *exec_ok_progress(PGconn *conn, const char *sql, int nparams,
								  const char *const *params, const char *what);
extern bool exec_cmd(PGconn *conn, const char *sql);
extern bool exec_savepoint(PGconn *conn, const char *verb, const char *name);

/* source_moves.c */
typedef struct SourceDrop		/* a source table dropped: what its maps need */
{
	char	   *table;
	Lsn			until;			/* the stream's position when the drop was seen */
	char	   *key_columns;
	char	   *names;			/* the table's columns and types, as text[] literals */
	char	   *types;
	char	   *srccols;
	bool		announce;		/* read from the target: say so when a map takes it */
} SourceDrop;
extern void target_note_rename(const char *from, const char *schema, const char *name,
							   const char *table, Lsn until, unsigned int oid);
extern int	moves_chase(PGconn *source, Pipeline *p);
extern bool target_follow_rename(PGconn *conn, const Pipeline *p, const TableMap *m);
extern void target_note_drop(const TableMap *m, Lsn until);
extern const SourceDrop *moves_dropped(const TableMap *m);
extern void moves_apply(TableMap *m);
extern bool moves_load(PGconn *target, PGconn *source, const char *pipeline);
extern bool moves_save(PGconn *target, const Pipeline *p);
extern char *moves_text(void);

/* checkpoint.c */
extern bool checkpoint_load(PGconn *conn, Pipeline *p);
extern bool checkpoint_advance(PGconn *conn, Pipeline *p, Lsn commit_lsn, Lsn end_lsn,
							   const char *commit_ts, long xacts, long events, long quarantined,
							   Lsn source_lsn, const char *source_moves, double *lag_seconds);
extern bool checkpoint_set(PGconn *conn, Pipeline *p, Lsn lsn, const char *commit_ts);
extern void checkpoint_note_source(PGconn *target, PGconn *source, Pipeline *p);

/* stream.c */
typedef struct Stream Stream;
extern bool source_check(PGconn *source, Pipeline *p, bool *slot_exists);
extern Stream *stream_open(const char *conninfo);
extern PGconn *stream_conn(Stream *s);
extern bool stream_create_slot(Stream *s, const char *slot, bool temporary, bool export_snapshot,
							   Lsn *consistent_point, char **snapshot_name);
extern bool stream_drop_slot(PGconn *source, const char *slot);
extern bool stream_start(Stream *s, Pipeline *p, Lsn start);
extern int	stream_pending_changes(PGconn *source, const char *slot, const char *schema, const char *name);
extern bool emit_marker(PGconn *source, const char *pipeline, const char *kind, Lsn *lsn);
extern int	stream_run(Stream *s, PGconn *target, PGconn *target2, PGconn *source, Pipeline *p);
extern void stream_close(Stream *s);

/* spool.c */
typedef struct Spool Spool;
extern Spool *spool_new(void);
extern void spool_free(Spool *s);
extern bool spool_write(Spool *s, const void *data, size_t len);
extern size_t spool_size(const Spool *s);
extern bool spool_reset(Spool *s);
extern const char *spool_get(Spool *s, size_t off, size_t len, char *buf);
extern void spool_rewind(Spool *s);
extern const char *spool_read(Spool *s, size_t len, char *buf);
extern bool spool_skip(Spool *s, size_t len);
extern bool spool_at_end(const Spool *s);
extern char *spool_copy(Spool *s, size_t off, size_t len);

/*
 * One batch as the apply thread sees it: whole source transactions staged
 * in the target session's pgcdc_events (its transaction open, the COPY
 * ended), with their counts; and what applying it gave.
 */
typedef struct ApplyJob
{
	PGconn	   *conn;
	Pipeline   *p;				/* read only while the job runs */
	const bool *has_rules;		/* per map, as the batch was staged */
	long		events;
	long		xacts;
	long		lines;			/* rows of pgcdc_events: an event feeds one per map */
	long		per_op[4];		/* I U D T */
	long	   *per_map;		/* events per table map */
	long	   *staged;			/* rows per map in its staging table */
	Lsn			first_lsn;
	Lsn			last_commit_lsn;
	Lsn			last_end_lsn;
	char		last_ts[64];
	int64_t		started_us;
	Spool	   *raw;			/* event JSON not kept in pgcdc_events (raw_off, raw_len) */
	Lsn			source_lsn;		/* the source's position when the job started */
	char	   *source_moves;	/* renames and drops being followed then (source_moves.c) */
	long		moot;			/* rows not sent: replaced by a later event on the key,
								 * or a key inserted and deleted in the batch */
	long		refused;		/* rows the staging COPY refused: quarantined */
	/* results */
	bool		ok;
	long		quarantined;
	double		lag_seconds;
	SqlError	error;
} ApplyJob;

/* apply.c */
extern bool apply_job(ApplyJob *job);
extern long append_rules(PGconn *conn, const Pipeline *p, const TableMap *m, const char *staged,
						 const char *lsn, const char *ts, const char *lo, const char *hi);
extern void record_failed_batch(ApplyJob *job, const SqlError *e);

/* compact.c */
typedef struct Compactor Compactor;
extern Compactor *compact_new(int nmaps);
extern void compact_reset(Compactor *c);
extern void compact_barrier(Compactor *c);
extern void compact_line(Compactor *c, int map, const char *key, size_t len, long line, char op,
						 bool kills);
extern bool compact_dead(Compactor *c, long line);
extern bool compact_born(Compactor *c, long line);
extern long compact_born_in(Compactor *c, int map);
extern void compact_free(Compactor *c);

/* batch.c */
typedef struct Batch Batch;
extern Batch *batch_new(PGconn *target, PGconn *target2, Pipeline *p);
extern bool batch_begin_xact(Batch *b, const EventInfo *begin);
extern bool batch_add_event(Batch *b, const EventInfo *ev, const char *json, size_t len);
extern bool batch_end_xact(Batch *b, const EventInfo *commit);
extern long batch_events(Batch *b);
extern bool batch_open(Batch *b);
extern bool batch_pending(Batch *b);
extern bool batch_applying(Batch *b);
extern int	batch_wait_fd(Batch *b);
extern bool batch_poll(Batch *b, Lsn *applied_end_lsn);
extern bool batch_wait(Batch *b, Lsn *applied_end_lsn);
extern int64_t batch_started_us(Batch *b);
extern bool batch_flush(Batch *b, Lsn *applied_end_lsn);
extern void batch_abort(Batch *b);
extern void batch_free(Batch *b);

/* snapshot_table.c */
#define SNAPSHOT_CHILD_TRANSIENT 3	/* a child's exit status: failed for a reason a retry may not meet */
extern volatile sig_atomic_t snapshot_child_stop;
extern PGcancel *volatile snapshot_child_cancel[2];
extern int	snapshot_table(const char *source_conninfo, const char *target_conninfo, Pipeline *p, int i,
						   const char *snapshot_name, Lsn lsn, const char *snapshot_ts);

/* snapshot.c */
extern char *snapshot_source_time(PGconn *source);
extern bool snapshot_run(const char *source_conninfo, PGconn *target, Pipeline *p,
						 const char *snapshot_name, Lsn consistent_point, const char *snapshot_ts,
						 bool *transient);
extern bool snapshot_added_maps(const char *source_conninfo, PGconn *source, PGconn *target, Pipeline *p);

/* metrics.c */
extern bool metrics_listen(int port);
extern void metrics_poll(void);
extern int	metrics_fd(void);
extern void metrics_close(void);

#endif							/* PGCDC_CONSUMER_H */
