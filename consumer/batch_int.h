/*
 * batch_int.h
 *		What the parts of a batch share: batch.c fills it, staging.c copies
 *		it into a target session, target_sessions.c runs the apply threads
 *		in the two target sessions.  Private to those three files.
 */
#ifndef PGCDC_BATCH_INT_H
#define PGCDC_BATCH_INT_H

#include <pthread.h>

#include "consumer.h"

/* A line of a batch: its header in the batch's header file, its text in the line file. */
typedef struct SpillHeader
{
	uint32_t	len;
	int32_t		map;
	int64_t		off;			/* where its text is in the line file */
	int64_t		raw_off;		/* the event's JSON in the job's raw file (not append) */
	uint32_t	raw_len;
} SpillHeader;

/* Which of a map's lines a COPY sends. */
typedef enum LineSelect
{
	LINES_LIVE,					/* all but the moot ones (a map with rules: all) */
	LINES_NOT_BORN,				/* those less the born keys' (born.c sends them) */
	LINES_BORN					/* the born keys' */
} LineSelect;

/* Lines of map `map` to COPY: those `which` selects, or if v, v[0..n). */
typedef struct LineSet
{
	int			map;
	LineSelect	which;
	const SpillHeader *v;
	long		n;
} LineSet;

/* How copy_lines sends a line. */
typedef enum LineShape
{
	LINE_AS_IS,
	LINE_NO_TS,					/* less its commit time */
	LINE_BORN					/* as a row of the mirror itself */
} LineShape;

/*
 * A target session and the job it runs.  A job goes to the lane of the job
 * before if that one has ended (its session is warm: its temp tables, plans
 * and buffers), else to the other.  With one session (--apply-sessions 1,
 * or the second could not be opened) both lanes use it, and a job starts
 * only after the one before has ended.
 */
typedef struct Lane
{
	struct Batch *b;
	int			job;			/* the jobs[] slot it runs */
	PGconn	   *conn;
	bool		tables_ready;	/* its session's temp tables exist */
	bool		copying;		/* a COPY is open in it */
	bool		has_origin;		/* its session uses the pipeline's replication origin */
	bool	   *has_rules;		/* per map, as its job was staged */
	bool	   *born_later;		/* per map, its born keys' lines wait for born.c */
	PQExpBuffer row;			/* a line read back */
	PQExpBuffer shaped;			/* ... as it is sent */
	bool		inflight;		/* a thread runs the job (main thread's view) */
	bool		done;			/* ... and has ended (set by it) */
	uint64_t	seq;			/* the job's number: it applies after job seq - 1 ended */
	pthread_t	thread;
} Lane;

struct Batch
{
	Pipeline   *p;
	bool		open;			/* a batch is filling */
	bool		skipping;		/* current source transaction is at/before the checkpoint */
	ApplyJob	jobs[2];		/* jobs[fill] fills; the other may be applying */
	Lane		lanes[2];
	Lane	   *lane_of[2];		/* the lane of jobs[k] */
	int			fill;
	int			done_pipe[2];	/* each apply thread writes a byte when it ends */
	/* jobs end in the order they started (each waits for the one before) */
	pthread_mutex_t mu;
	pthread_cond_t ended_cv;
	uint64_t	started;		/* jobs started */
	uint64_t	ended;			/* jobs ended (under mu) */
	bool		broken;			/* one of them failed: later ones apply nothing (under mu) */
	/* per job, as jobs[]: */
	Spool	   *heads[2];		/* its lines' headers */
	Spool	   *spill[2];		/* its lines: COPY rows */
	Compactor  *compact[2];		/* its mirror keys */
	PQExpBuffer line;			/* the COPY line being built */
	PQExpBuffer tmp;			/* a field being built */
	PQExpBuffer key;			/* a compaction key being built */
};

/* Both lanes in one session: --apply-sessions 1, or no second connection. */
static inline bool
one_session(const Batch *b)
{
	return b->lanes[0].conn == b->lanes[1].conn;
}

/* staging.c */
extern bool send_spill(Batch *b, int k);
extern bool stage_lines(Batch *b, int k, const LineSet *set);
extern int	copy_in_savepoint(Batch *b, int k, const char *name, const char *sql, const LineSet *set,
							  LineShape shape, const char *now, SqlError *e);

/* born.c */
extern bool born_wanted(Batch *b, int k, int i);
extern bool born_row(PQExpBuffer row, const char *line, size_t len, const char *now);
extern bool send_born_lines(Batch *b, int k);

#endif							/* PGCDC_BATCH_INT_H */
