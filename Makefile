# The two commands of the README's quick start, and the rest of the workflow.
#   make demo   install what is missing, build, run the seeded demo
#   make test   install what is missing, build, run every test (normal + ASan/UBSan)
BUILD ?= build
ASAN_BUILD ?= build-asan
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps build build-asan test test-fast test-asan demo bench format format-check clean

all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

build-asan: deps
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKILN_SANITIZE=address,undefined $(CMAKE_FLAGS) >/dev/null
	cmake --build $(ASAN_BUILD) -j $(JOBS)

test-fast: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

test-asan: build-asan
	ASAN_OPTIONS=detect_leaks=1 LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp UBSAN_OPTIONS=print_stacktrace=1 \
	ctest --test-dir $(ASAN_BUILD) --output-on-failure -j $(JOBS)

test: test-fast test-asan

demo: build
	bash scripts/demo.sh $(BUILD)/kiln

bench: build
	bash bench/run.sh

format:
	clang-format -i include/*.h common/*.[ch] host/*.[ch] graph/*.[ch] cluster/*.[ch] cli/*.[ch] tests/*.[ch] tests/fuzz/*.c tests/install/*.c bench/*.cpp

format-check:
	clang-format --dry-run --Werror include/*.h common/*.[ch] host/*.[ch] graph/*.[ch] cluster/*.[ch] cli/*.[ch] tests/*.[ch] tests/fuzz/*.c tests/install/*.c bench/*.cpp

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
