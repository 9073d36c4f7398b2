/*
 * compact.c
 *		Per-batch compaction for mirror maps: of several events on one key
 *		in a batch, only the last changes a mirror, so the earlier ones need
 *		not reach the target at all.  The batch remembers, per (map, key),
 *		its latest line, and marks the line it replaces as dead.
 *
 *		A key whose first event in the batch is an insert was not in the
 *		source before the batch, so not in the mirror either: if the batch
 *		ends it deleted, none of its events need reach the target; if not,
 *		its last one is an insert into the mirror, nothing to merge (the
 *		key is "born" in the batch: compact_born).
 *
 *		Keys are compared as the decoder wrote them (the key columns' JSON
 *		text): equal text is an equal key; two spellings of one value (1.0
 *		and 1.00) are just not compacted.  Memory is bounded: past
 *		COMPACT_MAX_KEYS keys in one batch, new keys are not remembered.
 */
#include "postgres_fe.h"

#include "consumer.h"

#define COMPACT_MAX_KEYS	(1 << 19)

typedef struct Slot
{
	uint64_t	hash;
	uint32_t	gen;			/* empty unless the compactor's generation */
	long		line;			/* the key's live line, -1 if none */
	bool		born;			/* inserted in this generation, each later
								 * line replacing the one before */
	size_t		off;			/* key bytes in the arena */
	size_t		len;
	int			map;
} Slot;

struct Compactor
{
	Slot	   *slots;
	size_t		nslots;			/* a power of two */
	size_t		used;
	uint32_t	gen;
	PQExpBuffer arena;
	uint64_t   *dead;			/* one bit per line */
	size_t		ndead;			/* words */
	bool		barrier;		/* the batch had one: keys before it are forgotten */
	uint64_t   *born;			/* one bit per line: the last of a born key */
	size_t		nborn;			/* words */
	long	   *born_in;		/* lines set there, per map */
	int			nmaps;
};

Compactor *
compact_new(int nmaps)
{
	Compactor  *c = pg_malloc0(sizeof(Compactor));

	c->nmaps = nmaps;
	c->born_in = pg_malloc0(sizeof(long) * Max(nmaps, 1));

	c->nslots = 1024;
	c->slots = pg_malloc0(sizeof(Slot) * c->nslots);
	c->gen = 1;
	c->arena = createPQExpBuffer();
	compact_reset(c);
	return c;
}

void
compact_free(Compactor *c)
{
	if (c == NULL)
		return;
	free(c->slots);
	free(c->dead);
	free(c->born);
	free(c->born_in);
	destroyPQExpBuffer(c->arena);
	free(c);
}

static void
forget(Compactor *c)
{
	if (++c->gen == 0)
	{
		memset(c->slots, 0, sizeof(Slot) * c->nslots);
		c->gen = 1;
	}
	c->used = 0;
	resetPQExpBuffer(c->arena);
}

/* Forget every key: a truncate or a key change. */
void
compact_barrier(Compactor *c)
{
	forget(c);
	c->barrier = true;
}

/* A new batch. */
void
compact_reset(Compactor *c)
{
	forget(c);
	c->barrier = false;
	if (c->dead)
		memset(c->dead, 0, sizeof(uint64_t) * c->ndead);
	if (c->born)
		memset(c->born, 0, sizeof(uint64_t) * c->nborn);
	memset(c->born_in, 0, sizeof(long) * Max(c->nmaps, 1));
}

/* FNV-1a, with the map mixed in */
static uint64_t
key_hash(int map, const char *key, size_t len)
{
	uint64_t	h = 14695981039346656037ULL ^ (uint64_t) map;

	for (size_t i = 0; i < len; i++)
		h = (h ^ (unsigned char) key[i]) * 1099511628211ULL;
	return h;
}

static Slot *
find(Compactor *c, uint64_t h, int map, const char *key, size_t len)
{
	size_t		i = h & (c->nslots - 1);

	for (;; i = (i + 1) & (c->nslots - 1))
	{
		Slot	   *s = &c->slots[i];

		if (s->gen != c->gen ||
			(s->hash == h && s->map == map && s->len == len &&
			 memcmp(c->arena->data + s->off, key, len) == 0))
			return s;
	}
}

static void
grow(Compactor *c)
{
	Slot	   *old = c->slots;
	size_t		n = c->nslots;

	c->nslots *= 2;
	c->slots = pg_malloc0(sizeof(Slot) * c->nslots);
	for (size_t i = 0; i < n; i++)
	{
		if (old[i].gen == c->gen)
		{
			size_t		j = old[i].hash & (c->nslots - 1);

			while (c->slots[j].gen == c->gen)
				j = (j + 1) & (c->nslots - 1);
			c->slots[j] = old[i];
		}
	}
	free(old);
}

/* Set bit `line` of *bits (*nwords words, grown as needed). */
static void
set_bit(uint64_t **bits, size_t *nwords, long line)
{
	size_t		w = (size_t) line / 64;

	if (w >= *nwords)
	{
		size_t		n = Max(w + 1, *nwords * 2);

		*bits = pg_realloc(*bits, sizeof(uint64_t) * n);
		memset(*bits + *nwords, 0, sizeof(uint64_t) * (n - *nwords));
		*nwords = n;
	}
	(*bits)[w] |= UINT64_C(1) << (line % 64);
}

static bool
bit_set(const uint64_t *bits, size_t nwords, long line)
{
	size_t		w = (size_t) line / 64;

	return w < nwords && (bits[w] & (UINT64_C(1) << (line % 64))) != 0;
}

static void
set_dead(Compactor *c, long line)
{
	set_bit(&c->dead, &c->ndead, line);
}

/* Slot s's line is (on) or is no longer (!on) a born key's last. */
static void
note_born(Compactor *c, const Slot *s, bool on)
{
	if (s->map < 0 || s->map >= c->nmaps)
		return;
	if (on)
	{
		set_bit(&c->born, &c->nborn, s->line);
		c->born_in[s->map]++;
	}
	else
	{
		c->born[s->line / 64] &= ~(UINT64_C(1) << (s->line % 64));
		c->born_in[s->map]--;
	}
}

/*
 * Line `line` of map `map`, an event `op` on key, is the key's latest.
 * kills: it replaces the key's previous line (not so for an event with
 * unchanged TOAST columns, whose values the apply takes from that line, nor
 * for a soft delete).
 */
void
compact_line(Compactor *c, int map, const char *key, size_t len, long line, char op, bool kills)
{
	uint64_t	h = key_hash(map, key, len);
	Slot	   *s = find(c, h, map, key, len);

	if (s->gen == c->gen)
	{
		if (s->born && s->line >= 0)
			note_born(c, s, false);
		if (s->line < 0)
			s->born = op == 'I';	/* deleted earlier in the batch */
		else if (kills)
			set_dead(c, s->line);
		else
			s->born = false;
		if (op == 'D' && s->born && kills)
		{
			/* inserted and deleted within the batch: the target never had it */
			set_dead(c, line);
			s->line = -1;
			return;
		}
		s->line = line;
		if (s->born)
			note_born(c, s, true);
		return;
	}
	if (c->used >= COMPACT_MAX_KEYS)
		return;
	s->hash = h;
	s->gen = c->gen;
	s->map = map;
	s->line = line;
	s->born = op == 'I';
	s->off = c->arena->len;
	s->len = len;
	appendBinaryPQExpBuffer(c->arena, key, len);
	if (s->born)
		note_born(c, s, true);
	if (++c->used * 2 > c->nslots)
		grow(c);
}

bool
compact_dead(Compactor *c, long line)
{
	return bit_set(c->dead, c->ndead, line);
}

/*
 * Line `line` is the last of a key born in the batch.  None is after a
 * barrier: a truncate or key change applied after such a line could undo
 * it, and keys before it are forgotten.
 */
bool
compact_born(Compactor *c, long line)
{
	return !c->barrier && bit_set(c->born, c->nborn, line);
}

/* How many such lines map `map` has. */
long
compact_born_in(Compactor *c, int map)
{
	return !c->barrier && map >= 0 && map < c->nmaps ? c->born_in[map] : 0;
}
