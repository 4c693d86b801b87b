/* device_stub.c -- stands in for host/cl_*.c in builds without OpenCL: the
 * device method then reports how to get an OpenCL platform. */
#include "ctx_internal.h"

void kiln_device_state_free(kiln_ctx *ctx);

void kiln_device_state_free(kiln_ctx *ctx) { (void)ctx; }
