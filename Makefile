# fleetd - see README.md. `make` builds build/fleetd.
#
#   make                  build/fleetd (-O2 -g, -Wall -Wextra -Werror clean)
#   make test             unit + integration tests (real Mosquitto, Redis,
#                         PostgreSQL started by the tests on free ports)
#   make test-unit        C unit tests only
#   make test-integration pytest integration tests only
#   make asan             AddressSanitizer + UBSan build, then all the tests
#   make fuzz             libFuzzer harnesses, short runs (FUZZ_SECONDS)
#   make run              install deps, start the local stack, run fleetd
#   make install          PREFIX=/usr/local SYSCONFDIR=/etc DESTDIR=
#   make bench            HTTP core vs a bare libevent server (wrk)

CC       ?= cc
PREFIX   ?= /usr/local
SYSCONFDIR ?= /etc
BUILD    ?= build
PYTHON   ?= /usr/bin/python3
FUZZ_SECONDS ?= 30

PKGS     := libevent libevent_pthreads yaml-0.1 libcjson hiredis
OPT      ?= -O2 -g
SAN      ?=
# worker/ is grouped by concern in subfolders; each is on the include path
WORKER_DIRS := $(shell find worker -type d | sort)
override CFLAGS += $(OPT) $(SAN) -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wshadow -Wno-unused-parameter \
            -Icommon -Imaster $(addprefix -I,$(WORKER_DIRS)) -Itest/unit $(shell pkg-config --cflags $(PKGS)) \
            -I$(shell pg_config --includedir)
LDLIBS   += $(shell pkg-config --libs $(PKGS)) -lhttp_parser -lpaho-mqtt3as \
            -lpq -lcrypto -lpthread -lm

COMMON_SRC := $(wildcard common/*.c)
MASTER_SRC := $(wildcard master/*.c)
WORKER_SRC := $(shell find worker -name '*.c' | sort)
FLEETD_SRC := $(COMMON_SRC) $(MASTER_SRC) $(WORKER_SRC)
# the schema migrations, worker/sql/NNN_name.sql, embedded as C
MIGRATIONS := $(sort $(wildcard worker/sql/*.sql))
MIGRATIONS_OBJ := $(BUILD)/obj/gen/fl_migrations.o
FLEETD_OBJ := $(FLEETD_SRC:%.c=$(BUILD)/obj/%.o) $(MIGRATIONS_OBJ)
UNIT_SRC   := $(shell find test/unit -name '*.c' | sort)
# pure-logic worker files that the unit tests exercise
UNIT_WORKER := worker/ingest/fl_payload.c worker/ingest/fl_copy.c worker/fl_idset.c \
               worker/api/fl_history_args.c worker/ws/fl_wsframe.c \
               worker/ingest/fl_mqttpkt.c worker/ingest/fl_mqttsh.c worker/ingest/fl_fanout.c
UNIT_OBJ   := $(UNIT_SRC:%.c=$(BUILD)/obj/%.o) \
              $(COMMON_SRC:%.c=$(BUILD)/obj/%.o) \
              $(UNIT_WORKER:%.c=$(BUILD)/obj/%.o)
HEADERS    := $(wildcard common/*.h master/*.h) \
              $(shell find worker test/unit -name '*.h')

.PHONY: all test test-unit test-integration asan fuzz run install clean \
        bench deps stack-up stack-down

all: $(BUILD)/fleetd

$(BUILD)/fleetd: $(FLEETD_OBJ)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/unit: $(UNIT_OBJ)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/gen/fl_migrations.c: $(MIGRATIONS) scripts/embed-sql
	@mkdir -p $(dir $@)
	scripts/embed-sql $(MIGRATIONS) > $@.tmp && mv $@.tmp $@

$(MIGRATIONS_OBJ): $(BUILD)/gen/fl_migrations.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

test: test-unit test-integration

test-unit: $(BUILD)/unit
	$(BUILD)/unit

test-integration: $(BUILD)/fleetd
	FLEETD_BIN=$(abspath $(BUILD)/fleetd) $(PYTHON) -m pytest -q test/integration $(PYTEST_ARGS)

# The sanitizer pass: a separate tree, the same tests. A report in any
# process fails the run (the integration fixtures scan stderr and logs).
asan:
	$(MAKE) BUILD=build-asan CC=clang OPT="-O1 -g -fno-omit-frame-pointer" \
	  SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" \
	  LDFLAGS="-fsanitize=address,undefined" test

# the HTTP harness drives the real connection code with the health routes
FUZZ_HTTP_SRC := worker/http/fl_http.c worker/http/fl_health.c worker/fl_worker.c \
                 worker/ingest/fl_payload.c
FUZZ_FLAGS := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -std=c11 -D_GNU_SOURCE -Icommon $(addprefix -I,$(WORKER_DIRS))
fuzz: $(BUILD)/fuzz_config $(BUILD)/fuzz_http $(BUILD)/fuzz_payload $(BUILD)/fuzz_wsframe \
      $(BUILD)/fuzz_mqttpkt
	@mkdir -p $(BUILD)/corpus/config $(BUILD)/corpus/http $(BUILD)/corpus/payload \
	  $(BUILD)/corpus/wsframe $(BUILD)/corpus/mqttpkt
	$(BUILD)/fuzz_config -max_total_time=$(FUZZ_SECONDS) $(BUILD)/corpus/config test/fuzz/corpus/config
	$(BUILD)/fuzz_http -max_total_time=$(FUZZ_SECONDS) $(BUILD)/corpus/http test/fuzz/corpus/http
	$(BUILD)/fuzz_payload -max_total_time=$(FUZZ_SECONDS) $(BUILD)/corpus/payload test/fuzz/corpus/payload
	$(BUILD)/fuzz_wsframe -max_total_time=$(FUZZ_SECONDS) $(BUILD)/corpus/wsframe test/fuzz/corpus/wsframe
	$(BUILD)/fuzz_mqttpkt -max_total_time=$(FUZZ_SECONDS) $(BUILD)/corpus/mqttpkt test/fuzz/corpus/mqttpkt

FUZZ_PAYLOAD_SRC := worker/ingest/fl_payload.c common/fl_scan.c common/fl_core.c common/fl_time.c
$(BUILD)/fuzz_payload: test/fuzz/fuzz_payload.c $(FUZZ_PAYLOAD_SRC) $(HEADERS)
	@mkdir -p $(BUILD)
	clang $(FUZZ_FLAGS) -o $@ test/fuzz/fuzz_payload.c $(FUZZ_PAYLOAD_SRC) $(shell pkg-config --libs libcjson)

FUZZ_WSFRAME_SRC := worker/ws/fl_wsframe.c common/fl_scan.c common/fl_core.c
$(BUILD)/fuzz_wsframe: test/fuzz/fuzz_wsframe.c $(FUZZ_WSFRAME_SRC) $(HEADERS)
	@mkdir -p $(BUILD)
	clang $(FUZZ_FLAGS) -o $@ test/fuzz/fuzz_wsframe.c $(FUZZ_WSFRAME_SRC) -lcrypto

FUZZ_MQTTPKT_SRC := worker/ingest/fl_mqttpkt.c common/fl_scan.c common/fl_core.c common/fl_enc.c
$(BUILD)/fuzz_mqttpkt: test/fuzz/fuzz_mqttpkt.c $(FUZZ_MQTTPKT_SRC) $(HEADERS)
	@mkdir -p $(BUILD)
	clang $(FUZZ_FLAGS) -o $@ test/fuzz/fuzz_mqttpkt.c $(FUZZ_MQTTPKT_SRC)

$(BUILD)/fuzz_config: test/fuzz/fuzz_config.c $(COMMON_SRC) $(HEADERS)
	@mkdir -p $(BUILD)
	clang $(FUZZ_FLAGS) -o $@ test/fuzz/fuzz_config.c $(COMMON_SRC) $(shell pkg-config --libs $(PKGS)) -lm

$(BUILD)/fuzz_http: test/fuzz/fuzz_http.c $(COMMON_SRC) $(FUZZ_HTTP_SRC) $(HEADERS)
	@mkdir -p $(BUILD)
	clang $(FUZZ_FLAGS) -DFL_FUZZ -o $@ test/fuzz/fuzz_http.c $(COMMON_SRC) $(FUZZ_HTTP_SRC) $(LDLIBS)

deps:
	scripts/deps

run: deps all
	scripts/dev-stack up
	@echo "fleetd: http://127.0.0.1:8080/healthz (Ctrl-C stops fleetd; scripts/dev-stack down stops the stack)"
	$(BUILD)/fleetd -c conf/fleetd.yaml

bench: all
	bench/http-bench

# The config goes to $(SYSCONFDIR)/fleetd (where the init script and the
# systemd unit look); an existing fleetd.yaml is never overwritten.
install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SYSCONFDIR)/fleetd \
	  $(DESTDIR)$(PREFIX)/share/fleetd
	install -m 0755 $(BUILD)/fleetd $(DESTDIR)$(PREFIX)/bin/fleetd
	install -m 0644 conf/fleetd.yaml $(DESTDIR)$(SYSCONFDIR)/fleetd/fleetd.yaml.sample
	test -e $(DESTDIR)$(SYSCONFDIR)/fleetd/fleetd.yaml || \
	  install -m 0644 conf/fleetd.yaml $(DESTDIR)$(SYSCONFDIR)/fleetd/fleetd.yaml
	install -m 0755 scripts/fleetd.init $(DESTDIR)$(PREFIX)/share/fleetd/fleetd.init
	install -m 0644 scripts/fleetd.service conf/haproxy.cfg README.md \
	  $(DESTDIR)$(PREFIX)/share/fleetd/

clean:
	rm -rf build build-asan
