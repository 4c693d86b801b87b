/* fuzz.h -- the contract of a fuzz target in tests/fuzz/fuzz_*.c.
 *
 * Each target defines LLVMFuzzerTestOneInput (the libFuzzer entry point) and
 * kiln_fuzz_seeds(), which hands out well-formed seed inputs. With clang and
 * -DKILN_FUZZ=ON the target links against libFuzzer; otherwise replay_main.c
 * turns it into a ctest that runs every seed and a fixed-seed series of
 * mutations of them (flips, truncations, splices, huge counts), so CI's
 * ASan/UBSan build exercises the reader on every run. */
#ifndef KILN_FUZZ_H
#define KILN_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Writes seed number i into a malloc'd buffer (*buf, *len) and returns 1, or
 * returns 0 when there are no more seeds. */
int kiln_fuzz_seed(size_t i, uint8_t **buf, size_t *len);

#endif /* KILN_FUZZ_H */
