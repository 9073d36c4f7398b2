/*
 * pgcdc_compat.h
 *		Every PostgreSQL-version difference pgcdc depends on, in one place.
 *
 * The code is written against PostgreSQL 15; the guards below are what 14,
 * 16 and 17 need so that the rest of the sources stay version-free.
 */
#ifndef PGCDC_COMPAT_H
#define PGCDC_COMPAT_H

#include "postgres.h"
#include "replication/reorderbuffer.h"

#if PG_VERSION_NUM < 140000
#error "pgcdc requires PostgreSQL 14 or later"
#endif

/* Commit timestamp of a decoded transaction (a union member since 15). */
#if PG_VERSION_NUM >= 150000
#define PGCDC_TXN_COMMIT_TIME(txn) ((txn)->xact_time.commit_time)
#else
#define PGCDC_TXN_COMMIT_TIME(txn) ((txn)->commit_time)
#endif

/* Top-level transaction of a (sub)transaction. */
#if PG_VERSION_NUM >= 160000
#define PGCDC_TOPLEVEL_XID(txn) (rbtxn_get_toptxn(txn)->xid)
#else
#define PGCDC_TOPLEVEL_XID(txn) ((txn)->toptxn ? (txn)->toptxn->xid : (txn)->xid)
#endif

/* Tuples of a change: a ReorderBufferTupleBuf until 17, a HeapTuple since. */
#if PG_VERSION_NUM >= 170000
#define PGCDC_CHANGE_NEWTUPLE(change) ((change)->data.tp.newtuple)
#define PGCDC_CHANGE_OLDTUPLE(change) ((change)->data.tp.oldtuple)
#else
#define PGCDC_CHANGE_NEWTUPLE(change) \
	((change)->data.tp.newtuple ? &(change)->data.tp.newtuple->tuple : NULL)
#define PGCDC_CHANGE_OLDTUPLE(change) \
	((change)->data.tp.oldtuple ? &(change)->data.tp.oldtuple->tuple : NULL)
#endif

/* FOR TABLES IN SCHEMA publications exist since 15. */
#if PG_VERSION_NUM >= 150000
#define PGCDC_HAVE_SCHEMA_PUBLICATIONS 1
#endif

#endif							/* PGCDC_COMPAT_H */
