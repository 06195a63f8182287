/* errors.c - names of return codes, datatype sizes, build description. */
#include "crux.h"

#include "buildinfo.h"

const char *crux_error_string(int err)
{
    switch (err) {
    case CRUX_SUCCESS: return "success";
    case CRUX_ERR_ARG: return "invalid argument or configuration value";
    case CRUX_ERR_NOMEM: return "out of memory";
    case CRUX_ERR_NOT_INITIALIZED: return "crux is not initialized (call crux_init first)";
    case CRUX_ERR_BOOTSTRAP: return "bootstrap failed (could not form the job)";
    case CRUX_ERR_TRANSPORT: return "transport error (network or shared-memory setup or I/O failed)";
    case CRUX_ERR_PEER: return "a peer failed (died or reset its connection)";
    case CRUX_ERR_TIMEOUT: return "timed out waiting for a peer";
    case CRUX_ERR_MISMATCH: return "ranks disagree on the call (collective, count, datatype, op or config)";
    case CRUX_ERR_UNSUPPORTED: return "operation not supported";
    case CRUX_ERR_INTERNAL: return "internal error (a bug in crux)";
    default: return "unknown error";
    }
}

size_t crux_datatype_size(crux_datatype_t dtype)
{
    /* Switch on int: an out-of-range value from a caller must give 0, not UB. */
    switch ((int)dtype) {
    case CRUX_FLOAT: return 4;
    case CRUX_DOUBLE: return 8;
    case CRUX_INT32: return 4;
    case CRUX_INT64: return 8;
    case CRUX_UINT8: return 1;
    case CRUX_FLOAT16: return 2;
    case CRUX_BFLOAT16: return 2;
    default: return 0;
    }
}

/* The build system defines these for library objects; fall back so that the
 * file also compiles on its own. */
#ifndef CRUX_BUILD_TYPE
#define CRUX_BUILD_TYPE "unknown"
#endif
#ifndef CRUX_BUILD_FLAGS
#define CRUX_BUILD_FLAGS ""
#endif
#ifndef __VERSION__
#define __VERSION__ "unknown"
#endif

const char *crux_build_info(void)
{
    return "type=" CRUX_BUILD_TYPE " " CRUX_BUILD_FLAGS " compiler=" __VERSION__;
}
