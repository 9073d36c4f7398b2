/*
 * log.c
 *		Logging for pgcdc_consumer: one line per message, timestamped, to
 *		stderr.  Connection strings never reach the log (conn_describe
 *		prints host, port, database and user only), so passwords do not
 *		either.
 */
#include "postgres_fe.h"

#include <stdarg.h>
#include <sys/time.h>
#include <time.h>

#include "consumer.h"

static void
log_prefix(int level)
{
	struct timeval tv;
	struct tm	tm;
	char		buf[32];

	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", &tm);
	fprintf(stderr, "%s.%03d UTC pgcdc_consumer[%d] %s: ", buf, (int) (tv.tv_usec / 1000),
			(int) getpid(), level == LOG_ERROR ? "ERROR" : level == LOG_INFO ? "LOG" : "DEBUG");
}

void
log_msg(int level, const char *fmt,...)
{
	va_list		ap;

	if (level > LOG_INFO + opts.verbose)
		return;
	log_prefix(level);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	fflush(stderr);
}

void
log_hint(const char *fmt,...)
{
	va_list		ap;

	fprintf(stderr, "HINT:  ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	fflush(stderr);
}

/* The connection's last error as one line (libpq's ends in a newline). */
char *
conn_error(PGconn *conn)
{
	static char buf[1024];
	size_t		n;

	snprintf(buf, sizeof(buf), "%s", conn ? PQerrorMessage(conn) : "no connection");
	n = strlen(buf);
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	for (size_t i = 0; i < n; i++)
		if (buf[i] == '\n')
			buf[i] = ' ';
	return buf;
}

/*
 * host:port/db as user, for logs: never the password or other secrets.
 * Two static buffers, so that one message can describe two connections.
 */
const char *
conn_describe(PGconn *conn)
{
	static char bufs[2][512];
	static int	which = 0;
	char	   *buf = bufs[which ^= 1];
	const char *host = PQhost(conn);

	snprintf(buf, sizeof(bufs[0]), "%s:%s/%s as %s",
			 host && *host ? host : "local", PQport(conn), PQdb(conn), PQuser(conn));
	return buf;
}

char *
format_lsn(Lsn lsn, char *buf)
{
	sprintf(buf, "%X/%X", (unsigned) (lsn >> 32), (unsigned) lsn);
	return buf;
}

bool
parse_lsn(const char *s, Lsn *lsn)
{
	unsigned	hi,
				lo;

	if (s == NULL || sscanf(s, "%X/%X", &hi, &lo) != 2)
		return false;
	*lsn = ((Lsn) hi << 32) | lo;
	return true;
}

int64_t
now_us(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return (int64_t) tv.tv_sec * 1000000 + tv.tv_usec;
}
