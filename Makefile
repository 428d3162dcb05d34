# A thin layer over CMake. `make run` starts the demo server; `make test` runs every test.
BUILD      ?= build
JOBS       ?= $(shell nproc)
CMAKE_ARGS ?=
PREFIX     ?= /usr/local

.PHONY: all deps build run test test-asan test-tsan test-faults fuzz bench-echo bench-http bench-msg install clean

all: build

deps:
	@scripts/deps.sh

$(BUILD)/build.ninja: | deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=$(PREFIX) $(CMAKE_ARGS)

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

run: build
	$(BUILD)/pier serve

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# Sanitizer runs, as CI does them: the whole suite under ASan+UBSan, threaded tests under TSan.
test-asan: deps
	cmake -S . -B build-asan -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
	    -DPIER_WERROR=ON -DPIER_SANITIZE=address,undefined
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    ctest --output-on-failure -j $(JOBS)

test-tsan: deps
	cmake -S . -B build-tsan -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
	    -DPIER_WERROR=ON -DPIER_SANITIZE=thread
	cmake --build build-tsan -j $(JOBS)
	cd build-tsan && TSAN_OPTIONS=halt_on_error=1 ctest --output-on-failure -j $(JOBS) -L threads

# Fault injection: the library built so that its allocations and system calls fail at
# random (src/fault/fault.h), driven through every server by tests/faults/run.sh.
test-faults: deps
	cmake -S . -B build-faults -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
	    -DPIER_SANITIZE=address,undefined -DPIER_FAULTS=ON
	cmake --build build-faults -j $(JOBS)
	tests/faults/run.sh build-faults

fuzz: deps
	cmake -S . -B build-fuzz -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
	    -DPIER_FUZZ=ON -DPIER_SANITIZE=address,undefined
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
	rm -rf $(BUILD) build-asan build-tsan build-fuzz build-faults
