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

/* One line per message, written at once: the apply thread logs too. */
void
log_msg(int level, const char *fmt,...)
{
	va_list		ap;
	struct timeval tv;
	struct tm	tm;
	char		ts[32];
	char		line[4096];
	int			n;
	int			save_errno = errno; /* for %m */

	if (level > LOG_INFO + opts.verbose)
		return;
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%d %H:%M:%S", &tm);
	n = snprintf(line, sizeof(line), "%s.%03d UTC pgcdc_consumer[%d] %s: ", ts, (int) (tv.tv_usec / 1000),
				 (int) getpid(), level == LOG_ERROR ? "ERROR" : level == LOG_WARNING ? "WARNING" : level == LOG_INFO ? "LOG" : "DEBUG");
	errno = save_errno;
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
	va_end(ap);
	strcat(line, "\n");
	fputs(line, stderr);
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
	static __thread char buf[1024];	/* the apply thread reports errors too */
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
	char	   *p = buf;

	/* "%X/%X" by hand: once per staged event, and sprintf showed in profiles */
	for (int half = 1; half >= 0; half--)
	{
		uint32_t	v = (uint32_t) (lsn >> (32 * half));
		int			shift = 28;

		while (shift > 0 && (v >> shift) == 0)
			shift -= 4;
		for (; shift >= 0; shift -= 4)
			*p++ = "0123456789ABCDEF"[(v >> shift) & 0xF];
		if (half == 1)
			*p++ = '/';
	}
	*p = '\0';
	return buf;
}

bool
parse_lsn(const char *s, Lsn *lsn)
{
	uint64_t	part[2] = {0, 0};
	int			i;

	/* "%X/%X" by hand: it is read twice per event, and sscanf showed in profiles */
	if (s == NULL)
		return false;
	for (i = 0; i < 2; i++)
	{
		int			digits = 0;

		for (;; s++, digits++)
		{
			char		c = *s;
			int			d = c >= '0' && c <= '9' ? c - '0' :
				c >= 'A' && c <= 'F' ? c - 'A' + 10 :
				c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;

			if (d < 0)
				break;
			part[i] = part[i] * 16 + d;
		}
		if (digits == 0 || digits > 8 || (i == 0 && *s++ != '/'))
			return false;
	}
	*lsn = (part[0] << 32) | part[1];
	return true;
}

int64_t
now_us(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return (int64_t) tv.tv_sec * 1000000 + tv.tv_usec;
}
