/* log.c - leveled, subsystem-masked logging to stderr.
 *
 * Every line is formatted into a stack buffer and handed to the kernel with a
 * single write(2), so lines of ranks sharing a terminal or a file never
 * interleave mid-line. Logging must not disturb the caller: errno is preserved.
 */
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define LOG_LINE_MAX 2048
#define LOG_HOST_MAX 64

int crux_log_level_cur = CRUX_LOG_WARN;
unsigned crux_log_subsys_mask = CRUX_SUBSYS_ALL;

static int log_rank = -1;
static char log_host[LOG_HOST_MAX] = "?";
static pthread_once_t log_host_once = PTHREAD_ONCE_INIT;

static const char *const level_names[] = {"NONE", "ERROR", "WARN", "INFO", "DEBUG", "TRACE"};
#define NLEVELS ((int)(sizeof(level_names) / sizeof(level_names[0])))

static const struct {
    const char *name;
    unsigned bit;
} subsys_names[] = {
    {"INIT", CRUX_SUBSYS_INIT}, {"BOOT", CRUX_SUBSYS_BOOT},     {"NET", CRUX_SUBSYS_NET},
    {"SHM", CRUX_SUBSYS_SHM},   {"COLL", CRUX_SUBSYS_COLL},     {"CONFIG", CRUX_SUBSYS_CONFIG},
    {"CODEC", CRUX_SUBSYS_CODEC},
};
#define NSUBSYS (sizeof(subsys_names) / sizeof(subsys_names[0]))

/* Short host name (up to the first dot), as cluster users name their nodes. */
static void log_host_init(void)
{
    char buf[256];
    if (gethostname(buf, sizeof(buf)) != 0)
        return;
    buf[sizeof(buf) - 1] = '\0';
    buf[strcspn(buf, ".")] = '\0';
    if (buf[0] != '\0')
        snprintf(log_host, sizeof(log_host), "%.*s", (int)sizeof(log_host) - 1, buf);
}

void crux_log_set_rank(int rank) { log_rank = rank; }

void crux_log_setup(int level, unsigned subsys_mask)
{
    pthread_once(&log_host_once, log_host_init);
    crux_log_level_cur = level;
    crux_log_subsys_mask = subsys_mask;
}

const char *crux_log_subsys_name(unsigned subsys)
{
    if (subsys == CRUX_SUBSYS_ALL)
        return "ALL";
    for (size_t i = 0; i < NSUBSYS; i++)
        if (subsys_names[i].bit == subsys)
            return subsys_names[i].name;
    return "?";
}

/* Append to buf[*len..cap) without ever overrunning; *len saturates at cap - 1. */
static void log_vappend(char *buf, size_t cap, size_t *len, const char *fmt, va_list ap)
{
    if (*len >= cap - 1)
        return;
    int n = vsnprintf(buf + *len, cap - *len, fmt, ap);
    if (n < 0)
        return;
    *len += (size_t)n < cap - *len ? (size_t)n : cap - *len - 1;
}

static void log_append(char *buf, size_t cap, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void log_append(char *buf, size_t cap, size_t *len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vappend(buf, cap, len, fmt, ap);
    va_end(ap);
}

static void log_emit(const char *buf, size_t len)
{
    ssize_t n;
    do {
        n = write(STDERR_FILENO, buf, len);
    } while (n < 0 && errno == EINTR);
}

void crux_log_write(int level, unsigned subsys, const char *file, int line, const char *fmt, ...)
{
    int saved_errno = errno;
    char buf[LOG_LINE_MAX];
    size_t len = 0;
    const char *lvl = level > 0 && level < NLEVELS ? level_names[level] : "?";

    pthread_once(&log_host_once, log_host_init);
    if (log_rank >= 0)
        log_append(buf, sizeof(buf), &len, "%s:%d:%d crux %s [%s] ", log_host, (int)getpid(),
                   log_rank, lvl, crux_log_subsys_name(subsys));
    else
        log_append(buf, sizeof(buf), &len, "%s:%d:- crux %s [%s] ", log_host, (int)getpid(), lvl,
                   crux_log_subsys_name(subsys));
    if (level >= CRUX_LOG_DEBUG && file) {
        const char *base = strrchr(file, '/');
        log_append(buf, sizeof(buf), &len, "%s:%d ", base ? base + 1 : file, line);
    }
    va_list ap;
    va_start(ap, fmt);
    log_vappend(buf, sizeof(buf), &len, fmt, ap);
    va_end(ap);

    /* A message that did not fit is cut and marked, and still ends the line. */
    if (len >= sizeof(buf) - 1)
        memcpy(buf + sizeof(buf) - 5, "...", 3), len = sizeof(buf) - 2;
    while (len > 0 && buf[len - 1] == '\n')
        len--;
    buf[len++] = '\n';
    log_emit(buf, len);
    errno = saved_errno;
}

int crux_log_parse_level(const char *s)
{
    if (!s)
        return -1;
    for (int i = 0; i < NLEVELS; i++)
        if (strcasecmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

/* Bit of one subsystem name of length n (case-insensitive); 0 if unknown. */
static unsigned subsys_bit(const char *name, size_t n)
{
    if (n == 3 && strncasecmp(name, "ALL", 3) == 0)
        return CRUX_SUBSYS_ALL;
    for (size_t i = 0; i < NSUBSYS; i++)
        if (strlen(subsys_names[i].name) == n && strncasecmp(name, subsys_names[i].name, n) == 0)
            return subsys_names[i].bit;
    return 0;
}

int crux_log_parse_subsys(const char *s, unsigned *mask)
{
    if (!s || !mask)
        return -1;
    int exclude = s[0] == '^';
    const char *p = s + exclude;
    unsigned list = 0;
    for (;;) {
        size_t n = strcspn(p, ",");
        unsigned bit = subsys_bit(p, n);
        if (bit == 0)
            return -1; /* unknown or empty name */
        list |= bit;
        if (p[n] == '\0')
            break;
        p += n + 1;
    }
    *mask = exclude ? CRUX_SUBSYS_ALL & ~list : list;
    return 0;
}
