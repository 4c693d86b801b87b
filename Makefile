# The two commands of the README's quick start, and the rest of the workflow.
#   make deps   install the Debian packages (apt-get; the only target that does)
#   make demo   build, run the seeded demo
#   make test   build, run every test (normal + ASan/UBSan)
BUILD ?= build
ASAN_BUILD ?= build-asan
TSAN_BUILD ?= build-tsan
# ThreadSanitizer runs these: the searches beside a writer (test_concurrent)
# and the writers' own OpenMP teams (test_live).
TSAN_TESTS := test_concurrent|test_live
# LLVM's OpenMP tool that tells TSan about libomp's synchronisation, from the
# LLVM that clang belongs to (libomp-dev).
ARCHER ?= $(abspath $(dir $(realpath $(shell command -v clang)))/../lib/libarcher.so)
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
# LeakSanitizer suppressions for the OpenCL runtime's own leaks (never kiln's).
LSAN_SUPP := $(CURDIR)/tests/lsan.supp

.PHONY: all deps build build-asan build-tsan test test-fast test-asan test-tsan demo bench format format-check clean

all: build

deps:
	@bash scripts/install-deps.sh

build:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

build-asan:
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKILN_SANITIZE=address,undefined $(CMAKE_FLAGS) >/dev/null
	cmake --build $(ASAN_BUILD) -j $(JOBS)

# clang, for libomp and its TSan tool (libgomp's barriers are invisible to
# TSan); no OpenCL or MPI, whose runtimes are not instrumented.
build-tsan:
	CC=clang cmake -S . -B $(TSAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS) \
	  -DKILN_SANITIZE=thread -DKILN_OPENCL=OFF -DKILN_MPI=OFF >/dev/null
	cmake --build $(TSAN_BUILD) -j $(JOBS) --target test_concurrent test_live

test-tsan: build-tsan
	@test -f $(ARCHER) || { echo "test-tsan: $(ARCHER) is missing (libomp-dev)" >&2; exit 1; }
	OMP_TOOL_LIBRARIES=$(ARCHER) \
	TSAN_OPTIONS="halt_on_error=1 ignore_noninstrumented_modules=1 second_deadlock_stack=1" \
	bash scripts/ctest-run.sh $(TSAN_BUILD) -R '^($(TSAN_TESTS))$$'

test-fast: build
	bash scripts/ctest-run.sh $(BUILD) -j $(JOBS)

test-asan: build-asan
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	LSAN_OPTIONS=$(if $(wildcard $(LSAN_SUPP)),suppressions=$(LSAN_SUPP),) \
	bash scripts/ctest-run.sh $(ASAN_BUILD) -j $(JOBS)

test: test-fast test-asan test-tsan

demo: build
	bash scripts/demo.sh $(BUILD)/kiln

bench: build
	bash bench/run.sh

FORMAT_FILES = include/*.h common/*.[ch] host/*.[ch] graph/*.[ch] cluster/*.[ch] cli/*.[ch] \
	tests/*.[ch] tests/fuzz/*.c tests/install/*.c bench/*.cpp

format:
	clang-format -i $(FORMAT_FILES)

format-check:
	clang-format --dry-run --Werror $(FORMAT_FILES)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
