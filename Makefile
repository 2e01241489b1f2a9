# cdcdd — build, data, tests, benchmarks, install.
# Sources are found by wildcard: drop a .c file in core/, cli/ or daemon/ and it is built.
#   core/*.c            -> $(BUILD)/libcdcd.a   (numeric library: no HTTP, no SQLite)
#   cli/*.c   + lib     -> bin/cdcd             (offline CLI)
#   daemon/*.c + lib    -> bin/cdcdd            (the server)
#   tests/unit/test_*.c -> $(BUILD)/tests/test_*  (one binary each, run by tests/run.sh)
#   bench/*.c           -> $(BUILD)/bench/*
SHELL := /bin/bash
BUILD ?= build
BIN ?= bin
PREFIX ?= /usr/local
DESTDIR ?=
VERSION := 0.1.0

PKGS := libmicrohttpd libcjson sqlite3 libuv openblas libutf8proc libcrypto
HAVE_SYSTEMD := $(shell pkg-config --exists libsystemd && echo 1)
ifeq ($(HAVE_SYSTEMD),1)
PKGS += libsystemd
SYSTEMD_DEF := -DCDCD_HAVE_SYSTEMD=1
endif

ARCH ?= -march=native
OPT ?= -O2
WARN := -Wall -Wextra -Wno-unused-parameter
ifeq ($(CI),true)
WARN += -Werror
endif
ifdef WERROR
WARN += -Werror
endif
SAN ?=
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CFLAGS ?= $(OPT) -g $(ARCH)
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE -DCDCD_VERSION=\"$(VERSION)\" $(SYSTEMD_DEF) \
  $(WARN) $(CFLAGS) $(SAN) -fno-omit-frame-pointer -pthread -Icore -Idaemon $(PKG_CFLAGS) -MMD -MP
LDLIBS := $(PKG_LIBS) -lm -lpthread
LDFLAGS += $(SAN) -pthread

CORE_SRC := $(wildcard core/*.c)
CLI_SRC := $(wildcard cli/*.c)
DAEMON_SRC := $(wildcard daemon/*.c)
TEST_SRC := $(wildcard tests/unit/test_*.c)
BENCH_SRC := $(wildcard bench/*.c)
TOOL_SRC := $(wildcard tests/tools/*.c)

CORE_OBJ := $(CORE_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
DAEMON_OBJ := $(DAEMON_SRC:%.c=$(BUILD)/%.o)
TEST_BIN := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)
TOOL_BIN := $(TOOL_SRC:tests/tools/%.c=$(BUILD)/tests/tools/%)
LIB := $(BUILD)/libcdcd.a

.PHONY: all deps data run test unit-tests bench clean install uninstall web check-deps
all: $(BIN)/cdcd $(BIN)/cdcdd web

deps:
	@scripts/deps.sh

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(LIB): $(CORE_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@
	$(AR) rcs $@ $^

# SQL migrations and openapi.yaml are compiled into cdcdd with .incbin, which -MMD cannot see.
$(BUILD)/daemon/embed.o: $(wildcard sql/*.sql) openapi.yaml

$(BIN)/cdcd: $(CLI_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJ) $(LIB) $(LDLIBS)

$(BIN)/cdcdd: $(DAEMON_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(DAEMON_OBJ) $(LIB) $(LDLIBS)

# Unit tests may use daemon objects (store, http helpers) but never main().
DAEMON_LIB_OBJ := $(filter-out $(BUILD)/daemon/main.o,$(DAEMON_OBJ))
$(BUILD)/tests/%: tests/unit/%.c $(LIB) $(DAEMON_LIB_OBJ) tests/unit/test.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests/unit -o $@ $< $(DAEMON_LIB_OBJ) $(LIB) $(LDFLAGS) $(LDLIBS)

$(BUILD)/bench/%: bench/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(LIB) $(LDFLAGS) $(LDLIBS)

# Test helper programs (e.g. the parity dumper used by the PyTorch comparison).
$(BUILD)/tests/tools/%: tests/tools/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests/unit -o $@ $< $(LIB) $(LDFLAGS) $(LDLIBS)

unit-tests: $(TEST_BIN) $(TOOL_BIN)
bench-bins: $(BENCH_BIN)

# Dashboard assets: our own files from web/, third-party libraries from npm (pinned by the lockfile).
web:
	@scripts/build-web.sh

# Data: official files when online, ../shared/data otherwise; then token files.
data: $(BIN)/cdcd
	@scripts/fetch-data.sh data
	@scripts/prep-data.sh data $(BIN)/cdcd

run: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory data
	@mkdir -p var
	$(BIN)/cdcdd --listen 127.0.0.1:8080 --state-dir var --data-dir data --web-dir web/dist

test: deps
	@$(MAKE) --no-print-directory all unit-tests
	@tests/run.sh

bench: deps
	@$(MAKE) --no-print-directory all bench-bins
	@bench/run.sh

install: all
	@CDCD_BIN=$(BIN) scripts/install.sh "$(DESTDIR)" "$(PREFIX)"

uninstall:
	@CDCD_BIN=$(BIN) scripts/install.sh --uninstall "$(DESTDIR)" "$(PREFIX)"

clean:
	rm -rf $(BUILD) build-asan $(BIN) web/dist

-include $(CORE_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(DAEMON_OBJ:.o=.d)
