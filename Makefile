# cdcdd — build, data, tests, benchmarks, install.
# Sources are found by wildcard: drop a .c file in core/, cli/ or daemon/ and it is built.
#   core/*.c            -> $(BUILD)/libcdcd.a   (numeric library: no HTTP, no SQLite)
#   cli/*.c   + lib     -> bin/cdcd             (offline CLI)
#   daemon/*.c + lib    -> bin/cdcdd            (the server); all but main.o also -> $(BUILD)/libcdcdd.a
#   tests/unit/test_*.c -> $(BUILD)/tests/test_*  (one binary each, run by tests/run.sh)
#   bench/*.c           -> $(BUILD)/bench/*
#   tests/fuzz/fuzz_*.c -> build-fuzz/fuzz/fuzz_*  (libFuzzer targets: clang, their own object tree)
# The layers show in the flags: core/ compiles with -Icore and its own packages only (so a
# core file that includes a daemon header does not build), bin/cdcd links core's packages
# only (no libmicrohttpd, SQLite or libuv), and only the daemon sees everything.
SHELL := /bin/bash
BUILD ?= build
BIN ?= bin
PREFIX ?= /usr/local
DESTDIR ?=
VERSION := 0.1.0

# pkg-config packages per layer. core: BLAS, Unicode data (tokenizer), SHA-256 (checkpoints),
# JSON (run configs). cli: core's and nothing else. daemon: everything.
CORE_PKGS := openblas libutf8proc libcrypto libcjson
CLI_PKGS := $(CORE_PKGS)
DAEMON_PKGS := libmicrohttpd sqlite3 libuv $(CORE_PKGS)
HAVE_SYSTEMD := $(shell pkg-config --exists libsystemd && echo 1)
ifeq ($(HAVE_SYSTEMD),1)
DAEMON_PKGS += libsystemd
SYSTEMD_DEF := -DCDCD_HAVE_SYSTEMD=1
endif

# Open MPI (distributed training, bin/cdcd only): core/dist_mpi.c joins the job when found.
# MPI=0 builds without it (a process mpirun starts then refuses to run).
MPI ?= $(shell pkg-config --exists ompi-c && echo 1)
ifeq ($(MPI),1)
MPI_DEF := -DCDCD_HAVE_MPI=1
MPI_CFLAGS := $(shell pkg-config --cflags ompi-c)
MPI_LIBS := $(shell pkg-config --libs ompi-c)
endif

# The CUDA backend (core/cuda/*.cu, backend_cuda.h): built when nvcc is found under
# CUDA_HOME; CUDA=0 turns it off (core/backend_cuda_none.c then answers "no CUDA"). cuBLASLt
# and the CUDA runtime are linked with an rpath; no NVML, no cuDNN. NVCC_ARCH: H100/H200
# code plus PTX for newer GPUs.
CUDA_HOME ?= /usr/local/cuda
NVCC ?= $(CUDA_HOME)/bin/nvcc
CUDA ?= $(shell test -x $(NVCC) && echo 1)
NVCC_ARCH ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
ifeq ($(CUDA),1)
CUDA_DEF := -DCDCD_HAVE_CUDA=1
CUDA_SRC := $(wildcard core/cuda/*.cu)
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcudart -lstdc++
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
CFLAGS ?= $(OPT) -g $(ARCH)
BASE_CFLAGS := -std=c11 -D_GNU_SOURCE -DCDCD_VERSION=\"$(VERSION)\" \
  $(WARN) $(CFLAGS) $(SAN) -fno-omit-frame-pointer -pthread -MMD -MP
pkg_cflags = $(shell pkg-config --cflags $(1) 2>/dev/null)
pkg_libs = $(shell pkg-config --libs $(1) 2>/dev/null)
CORE_CFLAGS := $(BASE_CFLAGS) $(MPI_DEF) $(CUDA_DEF) -Icore $(call pkg_cflags,$(CORE_PKGS)) $(MPI_CFLAGS)
CLI_CFLAGS := $(BASE_CFLAGS) -Icore $(call pkg_cflags,$(CLI_PKGS))
DAEMON_CFLAGS := $(BASE_CFLAGS) $(SYSTEMD_DEF) -Icore -Idaemon $(call pkg_cflags,$(DAEMON_PKGS))
CORE_LDLIBS := $(call pkg_libs,$(CORE_PKGS)) $(CUDA_LIBS) -lm -lpthread
CLI_LDLIBS := $(call pkg_libs,$(CLI_PKGS)) $(MPI_LIBS) $(CUDA_LIBS) -lm -lpthread
DAEMON_LDLIBS := $(call pkg_libs,$(DAEMON_PKGS)) $(CUDA_LIBS) -lm -lpthread
NVCC_WARN := -Xcompiler -Wall,-Wextra,-Wno-unused-parameter $(if $(filter -Werror,$(WARN)),-Werror all-warnings -Xcompiler -Werror)
NVCC_FLAGS := -std=c++17 $(OPT) -lineinfo $(NVCC_ARCH) $(NVCC_WARN) -D_GNU_SOURCE -Icore -Icore/cuda
LDFLAGS += $(SAN) -pthread

CORE_SRC := $(wildcard core/*.c)
CLI_SRC := $(wildcard cli/*.c)
DAEMON_SRC := $(wildcard daemon/*.c)
TEST_SRC := $(wildcard tests/unit/test_*.c)
# Unit tests of daemon code: those that include a daemon/ header. The others test core only.
DAEMON_HEADERS := $(notdir $(wildcard daemon/*.h))
DAEMON_TEST_SRC := $(if $(DAEMON_HEADERS),$(shell grep -lE \
  'include "($(subst $(eval) ,|,$(DAEMON_HEADERS)))"' $(TEST_SRC) /dev/null))
CORE_TEST_SRC := $(filter-out $(DAEMON_TEST_SRC),$(TEST_SRC))
BENCH_SRC := $(wildcard bench/*.c)
TOOL_SRC := $(wildcard tests/tools/*.c)

CORE_OBJ := $(CORE_SRC:%.c=$(BUILD)/%.o) $(CUDA_SRC:%.cu=$(BUILD)/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
DAEMON_OBJ := $(DAEMON_SRC:%.c=$(BUILD)/%.o)
DAEMON_LIB_OBJ := $(filter-out $(BUILD)/daemon/main.o,$(DAEMON_OBJ))
TEST_BIN := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
CORE_TEST_BIN := $(CORE_TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
DAEMON_TEST_BIN := $(DAEMON_TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)
TOOL_BIN := $(TOOL_SRC:tests/tools/%.c=$(BUILD)/tests/tools/%)
LIB := $(BUILD)/libcdcd.a
DAEMON_LIB := $(BUILD)/libcdcdd.a

.PHONY: all deps deps-build data run test unit-tests bench soak clean install uninstall web check-deps \
  fuzz fuzz-bins
all: $(BIN)/cdcd $(BIN)/cdcdd web

# Everything: build, run, tests and benchmarks (PyTorch, Chromium, wrk...).
deps:
	@scripts/deps.sh
# Only what building and running need (`make run`).
deps-build:
	@scripts/deps.sh --build-only

# Core objects differ with and without the CUDA backend (CDCD_HAVE_CUDA): a stamp named after
# the setting makes a switch rebuild them.
CUDA_STAMP := $(BUILD)/cuda-$(if $(filter 1,$(CUDA)),on,off).stamp
$(CUDA_STAMP):
	@mkdir -p $(dir $@)
	@rm -f $(BUILD)/cuda-*.stamp
	@touch $@

$(BUILD)/core/%.o: core/%.c $(CUDA_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CORE_CFLAGS) -c $< -o $@

$(BUILD)/core/cuda/%.o: core/cuda/%.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_FLAGS) -MMD -MF $(@:.o=.d) -c $< -o $@

$(BUILD)/cli/%.o: cli/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CLI_CFLAGS) -c $< -o $@

$(BUILD)/daemon/%.o: daemon/%.c
	@mkdir -p $(dir $@)
	$(CC) $(DAEMON_CFLAGS) -c $< -o $@

$(LIB): $(CORE_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@
	$(AR) rcs $@ $^

# The daemon's objects but main.o, for the unit tests of daemon code: the linker takes from
# the archive only the objects a test uses.
$(DAEMON_LIB): $(DAEMON_LIB_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@
	$(AR) rcs $@ $^

# SQL migrations and openapi.yaml are compiled into cdcdd with .incbin, which -MMD cannot see.
$(BUILD)/daemon/embed.o: $(wildcard sql/*.sql) openapi.yaml

$(BIN)/cdcd: $(CLI_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJ) $(LIB) $(CLI_LDLIBS)

$(BIN)/cdcdd: $(DAEMON_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(DAEMON_OBJ) $(LIB) $(DAEMON_LDLIBS)

# Unit tests of core: core's flags, core's library. Tests of daemon code (store, http
# helpers...) also get the daemon's flags and archive, never main().
$(CORE_TEST_BIN): $(BUILD)/tests/%: tests/unit/%.c $(LIB) tests/unit/test.h
	@mkdir -p $(dir $@)
	$(CC) $(CORE_CFLAGS) -Itests/unit -o $@ $< $(LIB) $(LDFLAGS) $(CORE_LDLIBS)

$(DAEMON_TEST_BIN): $(BUILD)/tests/%: tests/unit/%.c $(DAEMON_LIB) $(LIB) tests/unit/test.h
	@mkdir -p $(dir $@)
	$(CC) $(DAEMON_CFLAGS) -Itests/unit -o $@ $< $(DAEMON_LIB) $(LIB) $(LDFLAGS) $(DAEMON_LDLIBS)

$(BUILD)/bench/%: bench/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CORE_CFLAGS) -o $@ $< $(LIB) $(LDFLAGS) $(CORE_LDLIBS)

# Test helper programs (e.g. the parity dumper used by the PyTorch comparison).
$(BUILD)/tests/tools/%: tests/tools/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CORE_CFLAGS) -Itests/unit -o $@ $< $(LIB) $(LDFLAGS) $(CORE_LDLIBS)

# libFuzzer targets, one per parser of untrusted input (tests/fuzz/run.sh says which). core/ and daemon/ are
# rebuilt with clang, coverage instrumentation, ASan and UBSan into $(FUZZ_BUILD) (never mixed
# with the gcc objects of build/); each target links both archives, and libFuzzer's main.
# `make fuzz` runs every target for FUZZ_SECONDS on a working copy of its seed corpus
# (tests/fuzz/corpus/<target>/); FUZZ_TARGETS="fuzz_ckpt fuzz_tokenizer" picks some.
FUZZ_BUILD ?= build-fuzz
FUZZ_CC ?= clang
FUZZ_SAN := -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?=
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN := $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/fuzz/%)

$(BUILD)/fuzz/%: tests/fuzz/%.c tests/fuzz/fuzz.h $(DAEMON_LIB) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(DAEMON_CFLAGS) -Itests/fuzz -fsanitize=fuzzer -o $@ $< $(DAEMON_LIB) $(LIB) $(LDFLAGS) \
	  $(DAEMON_LDLIBS)

# The binary seeds (token files, checkpoints, schedules) are written by the project's own
# writers: $(FUZZ_BUILD)/fuzz/make_corpus tests/fuzz/corpus
$(BUILD)/fuzz/make_corpus: tests/fuzz/make_corpus.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CORE_CFLAGS) -o $@ $< $(LIB) $(LDFLAGS) $(CORE_LDLIBS)

fuzz-bins:
	@$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD) CC=$(FUZZ_CC) OPT=-O1 SAN="$(FUZZ_SAN)" CUDA=0 \
	  $(FUZZ_SRC:tests/fuzz/%.c=$(FUZZ_BUILD)/fuzz/%) $(FUZZ_BUILD)/fuzz/make_corpus

fuzz: fuzz-bins
	@FUZZ_BUILD=$(FUZZ_BUILD) tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

unit-tests: $(TEST_BIN) $(TOOL_BIN)
bench-bins: $(BENCH_BIN)

# Dashboard assets: our own files from web/, third-party libraries from npm (pinned by the lockfile).
web:
	@scripts/build-web.sh

# Data: official files when online, ../shared/data otherwise; then token files.
data: $(BIN)/cdcd
	@scripts/fetch-data.sh data
	@scripts/prep-data.sh data $(BIN)/cdcd

run: deps-build
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory data
	@mkdir -p var
	$(BIN)/cdcdd --listen 127.0.0.1:8080 --state-dir var --data-dir data --web-dir web/dist

test: deps
	@$(MAKE) --no-print-directory all unit-tests
	@$(MAKE) --no-print-directory data
	@tests/run.sh

bench: deps
	@$(MAKE) --no-print-directory all bench-bins
	@bench/run.sh

# `make print-CORE_CFLAGS` prints a variable (tests/integration/test_layers.sh uses it).
print-%:
	@printf '%s\n' '$($*)'

# A 20-minute soak of the daemon under load (SOAK_MINUTES=N to change); not part of make test.
soak: deps
	@$(MAKE) --no-print-directory all data
	@bench/soak.py

install: all
	@CDCD_BIN=$(BIN) scripts/install.sh "$(DESTDIR)" "$(PREFIX)"

uninstall:
	@CDCD_BIN=$(BIN) scripts/install.sh --uninstall "$(DESTDIR)" "$(PREFIX)"

clean:
	rm -rf $(BUILD) build-asan $(FUZZ_BUILD) $(BIN) web/dist

-include $(CORE_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(DAEMON_OBJ:.o=.d) $(TEST_BIN:=.d) $(BENCH_BIN:=.d) \
  $(TOOL_BIN:=.d) $(FUZZ_BIN:=.d)
