# core_server — one flat Makefile: build, release build, tests, sanitizers, fuzzing.
#   make            local-mode default binary ./core_server
#   make release    release-mode default binary ./core_server
#   make run        install what is missing (Debian), build, run in the foreground
#   make test       install what is missing (Debian), build, run unit + integration tests
#   make asan       build ./core_server with AddressSanitizer + UBSan (used by make test-asan)
#   make fuzz       build libFuzzer targets under fuzz/ with clang

CC      ?= cc
PKGS    := openssl jansson libcurl libnghttp2
CSTD    := -std=c17 -D_GNU_SOURCE
WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wno-unused-parameter
OPT     ?= -O2 -g
CFLAGS  += $(CSTD) $(WARN) $(OPT) -MMD -MP $(shell pkg-config --cflags $(PKGS)) $(MODE)
LDLIBS  += $(shell pkg-config --libs $(PKGS)) -lpthread

# Every module except main.c goes into the library that the unit tests link.
LIB_SRCS := src/log.c src/file.c src/mem.c src/buf.c src/loop.c src/net.c src/qsbr.c \
            src/domain.c src/routes.c src/cmd.c src/core_client.c src/subcmd.c src/http1.c \
            src/transport.c src/tls.c src/certs.c src/mkcert.c src/backend.c src/exchange.c src/conn.c src/client_h1.c src/client_h2.c src/proxy.c \
            src/worker.c src/instance.c src/handover.c src/systemd.c src/cli.c src/jws.c src/challenge.c src/acme.c
LIB_SRCS += src/etcd.c src/store_etcd.c
LIB_SRCS += src/clock.c src/sslerr.c src/sni.c src/acme_state.c
SRCS     := $(LIB_SRCS) src/main.c

BUILD   ?= build
OBJS     := $(SRCS:%.c=$(BUILD)/%.o)
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/%.o)
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)

.PHONY: all release run test unit integration asan test-asan fuzz fuzz-smoke deps test-deps clean bench

all: core_server

core_server: $(OBJS)
	$(CC) $(CFLAGS) -o $@ $(OBJS) $(LDFLAGS) $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

release:
	$(MAKE) clean-objs
	$(MAKE) MODE=-DCORE_DEFAULT_RELEASE=1 core_server

$(BUILD)/tests/%: tests/unit/%.c $(LIB_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Isrc -o $@ $< $(LIB_OBJS) $(LDFLAGS) $(LDLIBS)

unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; $$t; done

integration: core_server
	cd tests/integration && /usr/bin/python3 -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

deps:
	bash tests/install-deps.sh build

test-deps:
	bash tests/install-deps.sh test

run: deps core_server
	./core_server $(ARGS)

test: test-deps
	$(MAKE) core_server
	$(MAKE) unit
	$(MAKE) integration

# Sanitizer build: separate object dir so it never mixes with the optimised build.
# Every step of test-asan passes the same variables: a plain `$(MAKE) integration`
# would see build/ missing and silently rebuild ./core_server without ASan.
ASAN_VARS := BUILD=build-asan OPT="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
             LDFLAGS="-fsanitize=address,undefined"

asan:
	$(MAKE) $(ASAN_VARS) core_server

test-asan: test-deps
	$(MAKE) clean-objs
	$(MAKE) $(ASAN_VARS) core_server unit
	$(MAKE) $(ASAN_VARS) integration
	$(MAKE) clean-objs

FUZZ_SRCS := $(wildcard fuzz/fuzz_*.c)
fuzz:
	@mkdir -p build-fuzz
	@set -e; for f in $(FUZZ_SRCS); do \
	  n=$$(basename $$f .c); \
	  clang $(CSTD) -g -O1 -fsanitize=fuzzer,address,undefined -Isrc $$(pkg-config --cflags $(PKGS)) \
	    -o build-fuzz/$$n $$f $(LIB_SRCS) $$(pkg-config --libs $(PKGS)) -lpthread; \
	done

# A short run of every fuzz target (CI): FUZZ_SECONDS each, from the seed
# corpus; a crash fails the run and leaves the input in build-fuzz/.
FUZZ_SECONDS ?= 20
fuzz-smoke: fuzz
	@set -e; for f in $(FUZZ_SRCS); do \
	  n=$$(basename $$f .c); c=fuzz/corpus/$${n#fuzz_}; mkdir -p $$c build-fuzz/work-$$n; \
	  echo "== $$n ($(FUZZ_SECONDS) s)"; \
	  if ! build-fuzz/$$n -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=build-fuzz/ \
	    build-fuzz/work-$$n $$c > build-fuzz/$$n.log 2>&1; then \
	    tail -n 40 build-fuzz/$$n.log; echo "fuzz target $$n failed"; exit 1; fi; \
	  tail -n 1 build-fuzz/$$n.log; \
	done

bench:
	bash bench/run.sh

clean-objs:
	rm -f core_server
	rm -rf $(BUILD) build-asan

clean: clean-objs
	rm -rf build-fuzz

-include $(OBJS:.o=.d) $(UNIT_BINS:=.d)
