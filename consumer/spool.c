/*
 * spool.c
 *		Append-only byte stores for a batch (its COPY lines, its events'
 *		JSON): in memory up to --batch-memory megabytes, past that in an
 *		anonymous file in $TMPDIR (default /tmp).  A default batch fits in
 *		memory and costs no system call; a huge source transaction costs
 *		disk, not memory.  (Files alone went through the kernel twice,
 *		written and then read back for the COPY: a tenth of the consumer's
 *		CPU.)
 *
 *		Bytes are addressed by their offset since the last reset: the first
 *		ones are in memory, the rest in the file.  One thread uses a spool
 *		at a time (the stream fills it, then its apply thread reads it).
 */
#include "postgres_fe.h"

#include <unistd.h>

#include "consumer.h"

#define SPOOL_FILE_BUFFER	(1024 * 1024)

struct Spool
{
	char	   *mem;
	size_t		memlen;			/* bytes [0, memlen) are in mem */
	size_t		memcap;
	bool		full;			/* later bytes go to the file */
	FILE	   *file;			/* bytes [memlen, memlen + filelen), made when needed */
	char	   *filebuf;		/* its stdio buffer */
	size_t		filelen;
	bool		dirty;			/* written since the last read of the file */
	size_t		fpos;			/* the file stream's position */
	size_t		rpos;			/* where spool_read goes on */
};

Spool *
spool_new(void)
{
	return pg_malloc0(sizeof(Spool));
}

void
spool_free(Spool *s)
{
	if (s == NULL)
		return;
	if (s->file)
		fclose(s->file);
	free(s->filebuf);			/* after fclose, which may still write from it */
	free(s->mem);
	free(s);
}

/*
 * An anonymous file: removed at once, so that nothing is left behind,
 * whatever way the consumer ends.
 */
static bool
open_file(Spool *s)
{
	const char *dir = getenv("TMPDIR");
	char		path[MAXPGPATH];
	int			fd;

	snprintf(path, sizeof(path), "%s/pgcdc_consumer.XXXXXX", dir && *dir ? dir : "/tmp");
	if ((fd = mkstemp(path)) < 0)
		return false;
	unlink(path);
	if ((s->file = fdopen(fd, "w+")) == NULL)
	{
		close(fd);
		return false;
	}
	/* glibc would use 4 kB: a write() for every ten events */
	s->filebuf = pg_malloc(SPOOL_FILE_BUFFER);
	setvbuf(s->file, s->filebuf, _IOFBF, SPOOL_FILE_BUFFER);
	return true;
}

bool
spool_write(Spool *s, const void *data, size_t len)
{
	size_t		limit = (size_t) opts.batch_memory_mb * 1024 * 1024;

	if (!s->full && s->memlen + len <= limit)
	{
		if (s->memlen + len > s->memcap)
		{
			s->memcap = Min(Max(s->memcap * 2, Max(s->memlen + len, 65536)), limit);
			s->mem = pg_realloc(s->mem, s->memcap);
		}
		memcpy(s->mem + s->memlen, data, len);
		s->memlen += len;
		return true;
	}
	s->full = true;
	if (s->file == NULL && !open_file(s))
		return false;
	if (s->fpos != s->filelen)
	{
		if (fseeko(s->file, (off_t) s->filelen, SEEK_SET) != 0)
			return false;
		s->fpos = s->filelen;
	}
	if (fwrite(data, 1, len, s->file) != len)
		return false;
	s->filelen += len;
	s->fpos = s->filelen;
	s->dirty = true;
	return true;
}

size_t
spool_size(const Spool *s)
{
	return s->memlen + s->filelen;
}

/* Forget everything (the memory is kept for the next batch). */
bool
spool_reset(Spool *s)
{
	s->memlen = 0;
	s->full = false;
	s->rpos = 0;
	if (s->filelen > 0)
	{
		s->filelen = 0;
		s->fpos = 0;
		s->dirty = false;
		fflush(s->file);
		rewind(s->file);
		return ftruncate(fileno(s->file), 0) == 0;
	}
	return true;
}

/*
 * Bytes [off, off + len): a pointer into the memory when they are all
 * there, else copied into buf (len bytes).  NULL past the end or on a
 * read error.
 */
const char *
spool_get(Spool *s, size_t off, size_t len, char *buf)
{
	size_t		inmem;

	if (off + len > spool_size(s))
		return NULL;
	if (off + len <= s->memlen)
		return s->mem + off;
	inmem = off < s->memlen ? s->memlen - off : 0;
	memcpy(buf, s->mem + off, inmem);
	off = off + inmem - s->memlen;	/* now in the file */
	if (s->dirty)
	{
		if (fflush(s->file) != 0)
			return NULL;
		s->dirty = false;
	}
	/* no seek when reading on: glibc's drops the stream's buffer */
	if (s->fpos != off)
	{
		if (fseeko(s->file, (off_t) off, SEEK_SET) != 0)
			return NULL;
		s->fpos = off;
	}
	if (fread(buf + inmem, 1, len - inmem, s->file) != len - inmem)
		return NULL;
	s->fpos += len - inmem;
	return buf;
}

/* Sequential reading, from the start. */
void
spool_rewind(Spool *s)
{
	s->rpos = 0;
}

/* The next len bytes (as spool_get); NULL at the end. */
const char *
spool_read(Spool *s, size_t len, char *buf)
{
	const char *p = spool_get(s, s->rpos, len, buf);

	if (p != NULL)
		s->rpos += len;
	return p;
}

/* Step over the next len bytes. */
bool
spool_skip(Spool *s, size_t len)
{
	if (s->rpos + len > spool_size(s))
		return false;
	s->rpos += len;
	return true;
}

/* Has sequential reading reached the end?  (Not if a read failed.) */
bool
spool_at_end(const Spool *s)
{
	return s->rpos == spool_size(s);
}

/* Bytes [off, off + len) as a string of their own (malloc'd), or NULL. */
char *
spool_copy(Spool *s, size_t off, size_t len)
{
	char	   *buf = pg_malloc(len + 1);
	const char *p = spool_get(s, off, len, buf);

	if (p == NULL)
	{
		free(buf);
		return NULL;
	}
	if (p != buf)
		memcpy(buf, p, len);
	buf[len] = '\0';
	return buf;
}
