# kvds — the commands users type. Everything below installs what it needs
# (scripts/install-deps.sh, idempotent) and builds with CMake.
#
#   make demo     build, start a worker, store/read objects, status, short bench
#   make test     unit + integration tests, also under ASan+UBSan, Python tests,
#                 fuzz smoke
#   make python   the Python package (kvds._kvds) into .venv
#   make test-python  pytest (tests/python) against a real worker, then the
#                 connector's driver tests with the newest vLLM as well
#   make bench    full `kvds bench local` against a fresh worker, then
#                 `kvds bench connector` (vLLM connector save/load per request)
#   make bench-ttft  seed 004's TTFT steps and PD through `kvds proxy` with
#                 real vLLM servers (`kvds bench ttft`), LMCache side by side
#   make bench-disk  the disk tier's spill and read-back next to fio, and
#                 disk-hit vs DRAM-hit latency (`kvds bench disk`)
#   make bench-peers  kvds next to Redis, Mooncake's transfer engine and
#                 Mooncake Store, all started by the bench (`kvds bench peers`)
#   make fuzz     longer libFuzzer campaign (FUZZ_SECONDS, default 600)

MAKEFLAGS += --no-print-directory
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
BUILD ?= build/release
ASAN_BUILD ?= build/asan
FUZZ_BUILD ?= build/fuzz
FUZZ_SMOKE_SECONDS ?= 30
FUZZ_ETCD_SMOKE_SECONDS ?= 15
FUZZ_SECONDS ?= 600
CMAKE_FLAGS ?=
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: all deps deps-system build build-asan build-fuzz test test-release test-asan \
        fuzz-smoke fuzz demo bench format format-check clean python test-python \
        test-vllm-latest soak test-proxy-asan bench-ttft bench-disk \
        bench-peers

all: build

# deps-system: Debian packages (the C build); deps: also the project's .venv
# (Python package, vLLM connector tests, connector bench).
deps-system:
	@bash scripts/install-deps.sh --system-only

deps:
	@bash scripts/install-deps.sh

$(BUILD)/Makefile: | deps-system
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)

build: deps-system $(BUILD)/Makefile
	cmake --build $(BUILD) -j $(JOBS)

$(ASAN_BUILD)/Makefile: | deps-system
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DKVDS_SANITIZE=ON $(CMAKE_FLAGS)

build-asan: deps-system $(ASAN_BUILD)/Makefile
	cmake --build $(ASAN_BUILD) -j $(JOBS)

$(FUZZ_BUILD)/Makefile: | deps-system
	CC=clang cmake -S . -B $(FUZZ_BUILD) -DKVDS_FUZZ=ON -DKVDS_TESTS=OFF

build-fuzz: deps-system $(FUZZ_BUILD)/Makefile
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzz_frame fuzz_etcd

test-release: build
	cd $(BUILD) && ctest --output-on-failure -j 1

test-asan: build-asan
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j 1

fuzz-smoke: build-fuzz
	@mkdir -p $(FUZZ_BUILD)/corpus-frame $(FUZZ_BUILD)/corpus-etcd
	$(FUZZ_BUILD)/fuzz/fuzz_frame -max_total_time=$(FUZZ_SMOKE_SECONDS) \
	  -print_final_stats=1 $(FUZZ_BUILD)/corpus-frame fuzz/corpus/frame
	$(FUZZ_BUILD)/fuzz/fuzz_etcd -max_total_time=$(FUZZ_ETCD_SMOKE_SECONDS) \
	  -print_final_stats=1 $(FUZZ_BUILD)/corpus-etcd fuzz/corpus/etcd

fuzz: build-fuzz
	@mkdir -p $(FUZZ_BUILD)/corpus-frame $(FUZZ_BUILD)/corpus-etcd
	$(FUZZ_BUILD)/fuzz/fuzz_frame -max_total_time=$(FUZZ_SECONDS) \
	  -print_final_stats=1 $(FUZZ_BUILD)/corpus-frame fuzz/corpus/frame
	$(FUZZ_BUILD)/fuzz/fuzz_etcd -max_total_time=$(FUZZ_SECONDS) \
	  -print_final_stats=1 $(FUZZ_BUILD)/corpus-etcd fuzz/corpus/etcd

# The package built against this tree, installed into the project's .venv.
python: deps build
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
	  --no-build-isolation ./python

test-python: python
	KVDS_BIN=$(abspath $(BUILD))/kvds $(VENV)/bin/python -m pytest -q tests/python $(PYTEST_ARGS)
	@$(MAKE) test-vllm-latest

# The connector's driver tests against the newest vLLM on PyPI as well
# (.venv/vllm-latest, python/requirements-vllm-latest.txt).
test-vllm-latest: python
	@echo "driver tests with $$(PYTHONPATH=$(abspath $(VENV))/vllm-latest $(VENV)/bin/python -c \
	  'import vllm; print("vLLM", vllm.__version__)' 2>/dev/null)"
	KVDS_BIN=$(abspath $(BUILD))/kvds PYTHONPATH=$(abspath $(VENV))/vllm-latest \
	  $(VENV)/bin/python -m pytest -q tests/python/connector/test_connector_driver.py $(PYTEST_ARGS)

# The proxy's stand-in tests against the ASan+UBSan binary: every proxy
# must exit 0 on SIGTERM, so a leak or a sanitizer report fails the test.
test-proxy-asan: build-asan python
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  KVDS_BIN=$(abspath $(ASAN_BUILD))/kvds $(VENV)/bin/python -m pytest -q \
	  tests/python/proxy/test_proxy_standin.py $(PYTEST_ARGS)

test: format-check test-release test-python test-asan test-proxy-asan fuzz-smoke
	@echo "make test: all suites passed"

# Soak (not part of make test): a real etcd and 3 workers under mixed load
# while a chaos loop stalls and kills workers and stops, kills and wipes etcd;
# every acknowledged key checked at the end (scripts/soak.py, docs/testing.md).
# SOAK_MINUTES (default 5), SOAK_ARGS (e.g. --replicas 2 --seed 7).
soak: python
	KVDS_BIN=$(abspath $(BUILD))/kvds $(VENV)/bin/python scripts/soak.py \
	  --minutes $(or $(SOAK_MINUTES),5) $(SOAK_ARGS)

# The demo's second half runs vLLM servers: it needs the .venv.
demo: python
	KVDS_PYTHON=$(abspath $(VENV))/bin/python bash scripts/demo.sh $(BUILD)/kvds

bench: python
	KVDS_PYTHON=$(abspath $(VENV))/bin/python bash scripts/bench.sh $(BUILD)/kvds $(BENCH_ARGS)

# `kvds bench ttft` in full (about 10 minutes on 2 cores): LMCache 0.5.6 goes
# into the overlay .venv/lmcache (python/requirements-lmcache.txt, checked to
# shadow nothing of .venv); the plot into $(BUILD)/bench-ttft.png.
# TTFT_ARGS: more options (e.g. --quick, --json, --steps 1,2,3).
bench-ttft: python
	bash scripts/install-lmcache.sh
	KVDS_PYTHON=$(abspath $(VENV))/bin/python $(BUILD)/kvds bench ttft \
	  --lmcache-path $(abspath $(VENV))/lmcache --plot $(BUILD)/bench-ttft.png $(TTFT_ARGS)

# `kvds bench disk` in full (a few minutes; it starts its own workers and
# runs fio, both installed by deps-system). DISK_ARGS: more options (e.g.
# --quick, --json, --dir /mnt/nvme, --fsync object, --disk-threads 4).
bench-disk: build
	$(BUILD)/kvds bench disk $(DISK_ARGS)

# `kvds bench peers` in full (a few minutes; it starts its own workers,
# redis-server and the Mooncake processes, all on loopback). redis-server
# and hiredis come from deps-system, the Mooncake wheel from deps
# (.venv/peers, python/requirements-peers.txt). PEERS_ARGS: more options
# (e.g. --quick, --json, --sizes 1MiB,4MiB).
bench-peers: python
	KVDS_PYTHON=$(abspath $(VENV))/bin/python $(BUILD)/kvds bench peers \
	  --peers-path $(abspath $(VENV))/peers $(PEERS_ARGS)

SOURCES = $(shell git ls-files '*.c' '*.h' 2>/dev/null)

format: deps-system
	clang-format -i $(SOURCES)

format-check: deps-system
	@bad=$$(for f in $(SOURCES); do clang-format --dry-run -Werror $$f >/dev/null 2>&1 || echo $$f; done); \
	if [ -n "$$bad" ]; then echo "not clang-formatted (run 'make format'):"; echo "$$bad"; exit 1; fi

clean:
	rm -rf build python/build python/kvds.egg-info
