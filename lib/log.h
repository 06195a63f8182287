/* log.h - leveled, subsystem-masked logging. Debug/trace cost one branch when off. */
#ifndef CRUX_LOG_H
#define CRUX_LOG_H

#include <stdarg.h>

enum crux_log_level {
    CRUX_LOG_NONE = 0,
    CRUX_LOG_ERROR,
    CRUX_LOG_WARN,
    CRUX_LOG_INFO,
    CRUX_LOG_DEBUG,
    CRUX_LOG_TRACE
};

enum crux_subsys {
    CRUX_SUBSYS_INIT = 1u << 0,   /* init/finalize, communicators */
    CRUX_SUBSYS_BOOT = 1u << 1,   /* bootstrap, identity, launcher env */
    CRUX_SUBSYS_NET = 1u << 2,    /* transports (tcp, verbs) */
    CRUX_SUBSYS_SHM = 1u << 3,    /* shared-memory transport */
    CRUX_SUBSYS_COLL = 1u << 4,   /* algorithms and selection */
    CRUX_SUBSYS_CONFIG = 1u << 5, /* environment parameters */
    CRUX_SUBSYS_CODEC = 1u << 6,  /* compression */
    CRUX_SUBSYS_ALL = 0xffffffffu
};

extern int crux_log_level_cur;        /* current level; set by crux_log_setup */
extern unsigned crux_log_subsys_mask; /* enabled subsystems */

/* Prefix fields: host, pid, rank (-1 until known). */
void crux_log_set_rank(int rank);
void crux_log_setup(int level, unsigned subsys_mask);
void crux_log_write(int level, unsigned subsys, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Parse "error|warn|info|debug|trace" (also "none"); -1 if invalid. */
int crux_log_parse_level(const char *s);
/* Parse "INIT,NET" / "^SHM" / "ALL" (case-insensitive) into *mask; -1 if a name is unknown. */
int crux_log_parse_subsys(const char *s, unsigned *mask);
const char *crux_log_subsys_name(unsigned subsys);

#define crux_log_on(lvl, ss) (crux_log_level_cur >= (lvl) && (crux_log_subsys_mask & (ss)))
#define crux_log_(lvl, ss, ...)                                                                   \
    do {                                                                                          \
        if (crux_log_on(lvl, ss))                                                                 \
            crux_log_write(lvl, ss, __FILE__, __LINE__, __VA_ARGS__);                             \
    } while (0)
/* Errors and warnings ignore the subsystem mask: they must never be hidden by it. */
#define crux_log_always_(lvl, ss, ...)                                                            \
    do {                                                                                          \
        if (crux_log_level_cur >= (lvl))                                                          \
            crux_log_write(lvl, ss, __FILE__, __LINE__, __VA_ARGS__);                             \
    } while (0)
#define crux_error(ss, ...) crux_log_always_(CRUX_LOG_ERROR, ss, __VA_ARGS__)
#define crux_warn(ss, ...) crux_log_always_(CRUX_LOG_WARN, ss, __VA_ARGS__)
#define crux_info(ss, ...) crux_log_(CRUX_LOG_INFO, ss, __VA_ARGS__)
#define crux_debug(ss, ...) crux_log_(CRUX_LOG_DEBUG, ss, __VA_ARGS__)
#define crux_trace(ss, ...) crux_log_(CRUX_LOG_TRACE, ss, __VA_ARGS__)

#endif
