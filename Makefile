# pgcdc: one PGXS build for pgcdc.so (the output plugin in decoder/ and the
# SQL-callable code in extension/), plus the consumer program in consumer/.

EXTENSION   = pgcdc
# pgcdc.control is the one source of the version; META.json is checked against it.
EXTVERSION := $(shell sed -n "s/^default_version[[:space:]]*=[[:space:]]*'\([^']*\)'.*/\1/p" pgcdc.control)

MODULE_big  = pgcdc
OBJS       := $(patsubst %.c,%.o,$(sort $(wildcard decoder/*.c extension/*.c)))
# The install script is built from its parts in extension/sql/ (as pgvector
# builds its own); upgrade scripts pgcdc--X--Y.sql are written by hand.
EXTSQL     := extension/pgcdc--$(EXTVERSION).sql
DATA_built  = $(EXTSQL)
DATA       := $(filter-out $(EXTSQL),$(sort $(wildcard extension/pgcdc--*.sql)))
PGFILEDESC  = "pgcdc - change data capture for PostgreSQL"
PG_CPPFLAGS = -I$(CURDIR)/include -DPGCDC_VERSION='"$(EXTVERSION)"'

# Every suite runs against a temporary instance it starts itself.
REGRESS        := $(basename $(notdir $(sort $(wildcard sql/*.sql))))
REGRESS_OPTS    = --temp-config=test/pgcdc.conf --temp-instance=./tmp_check_regress --encoding=UTF8 --no-locale
ISOLATION      := $(basename $(notdir $(sort $(wildcard specs/*.spec))))
ISOLATION_OPTS  = --temp-config=test/pgcdc.conf --temp-instance=./tmp_check_iso --encoding=UTF8 --no-locale
ifneq ($(wildcard t/*.pl),)
TAP_TESTS = 1
endif

EXTRA_CLEAN = tmp_check_regress tmp_check_iso output_iso

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

$(EXTSQL): $(sort $(wildcard extension/sql/*.sql))
	for f in $^; do cat $$f; echo; done >$@

# The consumer has its own PGXS Makefile (PROGRAM); build it alongside.
ifneq ($(wildcard consumer/Makefile),)
all: consumer-all
install: consumer-install
uninstall: consumer-uninstall
clean: consumer-clean
consumer-all consumer-install consumer-uninstall consumer-clean:
	$(MAKE) -C consumer PG_CONFIG=$(PG_CONFIG) $(patsubst consumer-%,%,$@)
.PHONY: consumer-all consumer-install consumer-uninstall consumer-clean
endif
