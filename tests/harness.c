/* harness.c - see harness.h. */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

struct sink {
    int fd;
    char *buf;
    size_t len, cap;
};

static void sink_read(struct sink *s)
{
    char tmp[65536];
    ssize_t n = read(s->fd, tmp, sizeof(tmp));
    if (n <= 0) {
        close(s->fd);
        s->fd = -1;
        return;
    }
    if (s->len + (size_t)n + 1 > s->cap) {
        s->cap = (s->len + (size_t)n + 1) * 2;
        s->buf = realloc(s->buf, s->cap);
    }
    memcpy(s->buf + s->len, tmp, (size_t)n);
    s->len += (size_t)n;
    s->buf[s->len] = 0;
}

int run_proc(char *const argv[], char *const env[], double timeout_s, struct proc_result *res)
{
    int po[2], pe[2];
    memset(res, 0, sizeof(*res));
    res->status = -1;
    if (pipe2(po, O_CLOEXEC) || pipe2(pe, O_CLOEXEC))
        return -1;
    double t0 = now_s();
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        setpgid(0, 0);
        dup2(po[1], 1);
        dup2(pe[1], 2);
        for (int i = 0; env && env[i]; i++)
            putenv(env[i]);
        execvp(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid);
    close(po[1]);
    close(pe[1]);
    struct sink s[2] = { { po[0], calloc(1, 1), 0, 1 }, { pe[0], calloc(1, 1), 0, 1 } };
    int status = 0, reaped = 0;
    while (s[0].fd >= 0 || s[1].fd >= 0 || !reaped) {
        if (!reaped && waitpid(pid, &status, WNOHANG) == pid)
            reaped = 1;
        if (now_s() - t0 > timeout_s && !res->timed_out) {
            res->timed_out = 1;
            kill(-pid, SIGKILL);
        }
        struct pollfd p[2] = { { s[0].fd, POLLIN, 0 }, { s[1].fd, POLLIN, 0 } };
        int n = poll(p, 2, 50);
        for (int i = 0; n > 0 && i < 2; i++)
            if (s[i].fd >= 0 && (p[i].revents & (POLLIN | POLLHUP | POLLERR)))
                sink_read(&s[i]);
        if (reaped && s[0].fd < 0 && s[1].fd < 0)
            break;
    }
    kill(-pid, SIGKILL); /* stragglers of the group, if any */
    res->secs = now_s() - t0;
    res->out = s[0].buf;
    res->err = s[1].buf;
    res->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return 0;
}

void proc_result_free(struct proc_result *res)
{
    free(res->out);
    free(res->err);
    res->out = res->err = NULL;
}

void proc_result_dump(const struct proc_result *res)
{
    fprintf(stderr, "--- status %d%s after %.1f s\n--- stdout:\n%s\n--- stderr:\n%s\n---\n",
            res->status, res->timed_out ? " (timed out)" : "", res->secs,
            res->out ? res->out : "", res->err ? res->err : "");
}

static int shm_count(void)
{
    DIR *d = opendir("/dev/shm");
    int n = 0;
    if (!d)
        return 0;
    for (struct dirent *e; (e = readdir(d));)
        if (!strncmp(e->d_name, "crux-", 5))
            n++;
    closedir(d);
    return n;
}

/* Segments live only between create and the peers' mapping (then they are unlinked),
 * so one seen now may belong to a job still starting, here or elsewhere on the
 * machine: only one that stays for 5 s is a leak. */
int shm_leftovers(void)
{
    int n = shm_count();
    for (int i = 0; n && i < 50; i++) {
        usleep(100000);
        n = shm_count();
    }
    return n;
}
