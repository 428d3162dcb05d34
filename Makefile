# A thin layer over CMake. `make run` starts the demo server; `make test` runs every test.
#
# Every target that builds re-runs CMake's configure step first: it is cheap when nothing
# changed, and it is what makes PREFIX and CMAKE_ARGS given on the command line reach a
# tree that already exists (a -D value then stays in that tree's cache, as with cmake).
BUILD      ?= build
JOBS       ?= $(shell nproc)
CMAKE_ARGS ?=
PREFIX     ?= /usr/local
CONFIGURE   = cmake -S . -G Ninja
SAN_ASAN    = -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DPIER_WERROR=ON \
              -DPIER_SANITIZE=address,undefined
ASAN_ENV    = ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1

.PHONY: all deps build run test test-asan test-tsan test-faults fuzz bench-echo bench-http \
        bench-msg install clean

all: build

deps:
	@scripts/deps.sh

build: deps
	$(CONFIGURE) -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=$(PREFIX) $(CMAKE_ARGS)
	cmake --build $(BUILD) -j $(JOBS)

run: build
	$(BUILD)/pier serve

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# Sanitizer runs, as CI does them: the whole suite under ASan+UBSan, threaded tests under TSan.
test-asan: deps
	$(CONFIGURE) -B build-asan $(SAN_ASAN) $(CMAKE_ARGS)
	cmake --build build-asan -j $(JOBS)
	cd build-asan && $(ASAN_ENV) ctest --output-on-failure -j $(JOBS)

test-tsan: deps
	$(CONFIGURE) -B build-tsan -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
	    -DPIER_WERROR=ON -DPIER_SANITIZE=thread $(CMAKE_ARGS)
	cmake --build build-tsan -j $(JOBS)
	cd build-tsan && TSAN_OPTIONS="halt_on_error=1 suppressions=$(CURDIR)/tests/tsan.supp" ctest --output-on-failure -j $(JOBS) -L threads

# The library built with its fault injection points, under ASan+UBSan; tests/faults/run.sh
# (part of the fault module) decides what runs with which faults.
test-faults: deps
	@test -f tests/faults/run.sh || { echo "tests/faults/run.sh is missing" >&2; exit 1; }
	$(CONFIGURE) -B build-faults $(SAN_ASAN) -DPIER_FAULTS=ON $(CMAKE_ARGS)
	cmake --build build-faults -j $(JOBS)
	tests/faults/run.sh build-faults

fuzz: deps
	$(CONFIGURE) -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
	    -DPIER_FUZZ=ON -DPIER_SANITIZE=address,undefined $(CMAKE_ARGS)
	cmake --build build-fuzz -j $(JOBS)
	fuzz/run.sh build-fuzz $${FUZZ_SECONDS:-60}

bench-echo: build
	bench/echo

bench-http: build
	bench/http

bench-msg: build
	bench/msg

install: build
	cmake --install $(BUILD)

clean:
	rm -rf $(BUILD) build-asan build-tsan build-faults build-fuzz build-clang build-lib
