/* buildinfo.h - how this library was built (lib/errors.c), for crux-info. */
#ifndef CRUX_BUILDINFO_H
#define CRUX_BUILDINFO_H

/* "type=<build type> <build flags> compiler=<compiler version>" */
const char *crux_build_info(void);

#endif
