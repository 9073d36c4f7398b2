/*
 * metrics.c
 *		Prometheus text metrics on 127.0.0.1:PORT (any path answers; /metrics
 *		is the one to scrape).  One listening socket polled from the main
 *		loop: a scrape is answered in full and the connection closed.
 */
#include "postgres_fe.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "consumer.h"

static int	listen_fd = -1;

bool
metrics_listen(int port)
{
	struct sockaddr_in addr;
	int			one = 1;

	listen_fd = socket(AF_INET, SOCK_STREAM, 0);
	if (listen_fd < 0)
	{
		log_msg(LOG_ERROR, "could not create the metrics socket: %m");
		return false;
	}
	setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_port = htons(port);
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(listen_fd, (struct sockaddr *) &addr, sizeof(addr)) < 0 || listen(listen_fd, 8) < 0)
	{
		log_msg(LOG_ERROR, "could not listen for metrics on 127.0.0.1:%d: %m", port);
		close(listen_fd);
		listen_fd = -1;
		return false;
	}
	fcntl(listen_fd, F_SETFL, O_NONBLOCK);
	log_msg(LOG_INFO, "metrics on http://127.0.0.1:%d/metrics", port);
	return true;
}

int
metrics_fd(void)
{
	return listen_fd;
}

void
metrics_close(void)
{
	if (listen_fd >= 0)
		close(listen_fd);
	listen_fd = -1;
}

static void
metric(PQExpBuffer b, const char *name, const char *type, const char *help, double value)
{
	appendPQExpBuffer(b, "# HELP %s %s\n# TYPE %s %s\n%s{pipeline=\"", name, help, name, type, name);
	/* a label value escapes backslash, double quote and newline */
	for (const char *c = opts.pipeline; *c; c++)
	{
		if (*c == '\\' || *c == '"')
			appendPQExpBufferChar(b, '\\');
		if (*c == '\n')
			appendPQExpBufferStr(b, "\\n");
		else
			appendPQExpBufferChar(b, *c);
	}
	appendPQExpBuffer(b, "\"} %.17g\n", value);
}

void
metrics_poll(void)
{
	int			fd;
	char		req[2048];
	PQExpBuffer body,
				resp;
	double		lag_bytes;

	if (listen_fd < 0 || (fd = accept(listen_fd, NULL, NULL)) < 0)
		return;
	/* the request line is in the first segment: GET /metrics is all we serve */
	{
		struct timeval tv = {0, 200000};
		ssize_t		n;
		static const char not_found[] = "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n"
			"Content-Length: 24\r\nConnection: close\r\n\r\nmetrics are at /metrics\n";

		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		if ((n = recv(fd, req, sizeof(req) - 1, 0)) < 0)
		{
			close(fd);
			return;
		}
		req[n] = '\0';
		if (strncmp(req, "GET /metrics", 12) != 0 || (req[12] != ' ' && req[12] != '?'))
		{
			if (send(fd, not_found, sizeof(not_found) - 1, MSG_NOSIGNAL) < 0)
				log_msg(LOG_DEBUG, "could not answer a metrics request: %m");
			close(fd);
			return;
		}
	}
	lag_bytes = stats.source_lsn > stats.applied_lsn ? (double) (stats.source_lsn - stats.applied_lsn) : 0;
	body = createPQExpBuffer();
	metric(body, "pgcdc_events_total", "counter", "Change events applied or quarantined.", stats.events);
	metric(body, "pgcdc_transactions_total", "counter", "Source transactions applied.", stats.transactions);
	metric(body, "pgcdc_batches_total", "counter", "Target transactions committed.", stats.batches);
	metric(body, "pgcdc_quarantined_total", "counter", "Events sent to pgcdc.quarantine.", stats.quarantined);
	metric(body, "pgcdc_skipped_transactions_total", "counter",
		   "Transactions received again at or before the checkpoint, skipped.", stats.skipped);
	metric(body, "pgcdc_reconnects_total", "counter", "Reconnections after a failure.", stats.reconnects);
	metric(body, "pgcdc_lag_bytes", "gauge", "Source WAL not yet applied to the target.", lag_bytes);
	metric(body, "pgcdc_lag_seconds", "gauge",
		   "Commit-to-apply delay of the last applied transaction; 0 when caught up.", stats.lag_seconds);
	metric(body, "pgcdc_applied_lsn", "gauge", "End LSN of the last applied source transaction.",
		   (double) stats.applied_lsn);
	resp = createPQExpBuffer();
	appendPQExpBuffer(resp, "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
					  "Content-Length: %zu\r\nConnection: close\r\n\r\n%s", body->len, body->data);
	if (send(fd, resp->data, resp->len, MSG_NOSIGNAL) < 0)
		log_msg(LOG_DEBUG, "could not answer a metrics request: %m");
	close(fd);
	destroyPQExpBuffer(body);
	destroyPQExpBuffer(resp);
}
