/* cl_runtime.c -- OpenCL platforms, devices, program cache (filled in by the
 * device pipeline). */
#include <CL/cl.h>

#include "ctx_internal.h"

void kiln_device_state_free(kiln_ctx *ctx);

void kiln_device_state_free(kiln_ctx *ctx) { (void)ctx; }
