/* device_absent.c -- the device method's place in libkiln-core, which is the
 * graph and its base without the device side (no OpenCL, no clustering):
 * kiln_build_params_init picks the insertion build, and asking for the device
 * method names the library that has it.
 *
 * Design decisions:
 *  1. graph/hnsw_build.c calls kiln_build_device by name and each library
 *     links exactly one definition (this file, or host/device_build.c), so
 *     graph/ needs no header of host/ and no registration at start-up.
 *  2. The public device calls (kiln_device_count and the rest) are not in
 *     libkiln-core at all: a program that lists devices links libkiln.
 */
#include "../common/ctx_internal.h"
#include "build_internal.h"

bool kiln_build_device_available(void) { return false; }

kiln_status kiln_build_device(struct kiln_index *ix, const kiln_build_params *p,
                              kiln_build_report *rep, const kiln_device_seed *seed) {
    (void)p, (void)rep, (void)seed;
    return kiln_fail(ix->ctx, KILN_E_NO_DEVICE,
                     "build: method device is not in libkiln-core (search, insert and files "
                     "only); link libkiln (pkg-config kiln, CMake kiln::kiln) to build on a "
                     "device");
}
