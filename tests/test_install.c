/* test_install.c - install crux into a fresh prefix and build the example the two
 * ways a user would: pkg-config and find_package(crux); then run it on 3 ranks.
 * Also: bin/ holds exactly the tools and benchmarks, and they run from the prefix, and
 * libcrux.so exports the API and nothing else. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static char prefix[256];

static void sh(const char *cmd, double timeout)
{
    char *argv[] = { "sh", "-c", (char *)cmd, NULL };
    struct proc_result res;
    cr_assert_eq(run_proc(argv, NULL, timeout, &res), 0);
    if (res.status != 0)
        proc_result_dump(&res);
    cr_assert_eq(res.status, 0, "command failed: %s", cmd);
    proc_result_free(&res);
}

static void install_once(const char *name)
{
    snprintf(prefix, sizeof(prefix), "%s/install-test-%s", CRUX_BINARY_DIR, name);
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' && cmake --install '%s' --prefix '%s' >/dev/null", prefix,
             CRUX_BINARY_DIR, prefix);
    sh(cmd, 120);
}

static void run_hello(const char *exe)
{
    char *argv[] = { CRUX_RUN_PATH, "-n", "3", "--", (char *)exe, NULL };
    struct proc_result res;
    cr_assert_eq(run_proc(argv, NULL, 60, &res), 0);
    if (res.status != 0)
        proc_result_dump(&res);
    cr_assert_eq(res.status, 0);
    for (int r = 0; r < 3; r++) {
        char want[96];
        snprintf(want, sizeof(want), "rank %d of 3: sum of ranks = 3 (expected 3), ranks counted = 3", r);
        cr_assert(strstr(res.out, want), "missing line: %s\n%s", want, res.out);
    }
    proc_result_free(&res);
}

Test(install, pkg_config, .timeout = 300)
{
    install_once("pc");
    char cmd[2048], exe[512];
    snprintf(exe, sizeof(exe), "%s/hello-pc", prefix);
    snprintf(cmd, sizeof(cmd),
             "PKG_CONFIG_PATH='%s/lib/pkgconfig' && export PKG_CONFIG_PATH && "
             "cc -std=c11 -Wall -Werror %s '%s/examples/hello_allreduce.c' $(pkg-config --cflags --libs crux) "
             "-Wl,-rpath,'%s/lib' -o '%s'",
             prefix, CRUX_TEST_USER_CFLAGS, CRUX_SOURCE_DIR, prefix, exe);
    sh(cmd, 120);
    run_hello(exe);
}

Test(install, find_package, .timeout = 300)
{
    install_once("cmake");
    char cmd[2048], exe[512];
    snprintf(cmd, sizeof(cmd),
             "rm -rf '%s/ex-build' && cmake -S '%s/examples' -B '%s/ex-build' -DCMAKE_PREFIX_PATH='%s' "
             "-DCMAKE_BUILD_RPATH='%s/lib' -DCMAKE_C_FLAGS='%s' >/dev/null && cmake --build '%s/ex-build' >/dev/null",
             prefix, CRUX_SOURCE_DIR, prefix, prefix, prefix, CRUX_TEST_USER_CFLAGS, prefix);
    sh(cmd, 240);
    snprintf(exe, sizeof(exe), "%s/ex-build/hello_allreduce", prefix);
    run_hello(exe);
}

/* The shared library exports exactly the functions crux.h declares CRUX_API, plus,
 * with the verbs transport, the libc memory functions its registration cache
 * interposes (transport/verbs/verbs_memhook.c): no internal symbol can collide
 * with an application's or be interposed. */
Test(install, exports_only_the_api, .timeout = 300)
{
    install_once("exports");
    const char *hooks = CRUX_TEST_HAVE_VERBS ? "free madvise mmap mmap64 mremap munmap realloc "
                                               "reallocarray"
                                             : "";
    char cmd[2048];
    snprintf(cmd, sizeof(cmd),
             "cd '%s' && nm -D --defined-only lib/libcrux.so | awk '{print $3}' | sort > exports.got && "
             "{ sed -n 's/^CRUX_API [^(]*[ *]\\(crux_[a-z0-9_]*\\)(.*/\\1/p' include/crux.h && "
             "for h in %s; do echo $h; done; } | sort > exports.want && "
             "test $(grep -c '^crux_' exports.want) -ge 25 && diff exports.want exports.got",
             prefix, hooks);
    sh(cmd, 60);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Runs argv (from the prefix) and checks exit 0 and that stdout contains want. */
static void run_expect(char *const argv[], const char *want)
{
    struct proc_result res;
    cr_assert_eq(run_proc(argv, NULL, 120, &res), 0);
    if (res.status != 0)
        proc_result_dump(&res);
    cr_assert_eq(res.status, 0, "%s failed", argv[0]);
    cr_assert(strstr(res.out, want), "%s: missing \"%s\" in:\n%s", argv[0], want, res.out);
    proc_result_free(&res);
}

Test(install, bin_set, .timeout = 300)
{
    static const char *want[] = {"crux-info", "crux-run", "crux-train", "crux_allreduce_lat",
                                 "crux_codec_bench", "crux_osu_allreduce"};
    enum { NWANT = sizeof want / sizeof want[0] };
    install_once("bin");
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/bin", prefix);
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "no %s", dir);
    char *got[32];
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        cr_assert_lt(n, 32u, "too many files in %s", dir);
        got[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(got, n, sizeof got[0], by_name);
    for (size_t i = 0; i < n; i++)
        cr_assert(i < NWANT && !strcmp(got[i], want[i]), "installed bin/ entry %zu: %s", i, got[i]);
    cr_assert_eq(n, (size_t)NWANT, "installed bin/ has %zu entries, want %d", n, NWANT);
    for (size_t i = 0; i < n; i++)
        free(got[i]);

    char run[512], lat[512], osu[512], codec[512];
    snprintf(run, sizeof(run), "%s/bin/crux-run", prefix);
    snprintf(lat, sizeof(lat), "%s/bin/crux_allreduce_lat", prefix);
    snprintf(osu, sizeof(osu), "%s/bin/crux_osu_allreduce", prefix);
    snprintf(codec, sizeof(codec), "%s/bin/crux_codec_bench", prefix);
    char *lat_argv[] = {run, "-n", "2", "--", lat, "-i", "20", "-x", "2", NULL};
    run_expect(lat_argv, "# bytes iters t_min[us]");
    char *osu_argv[] = {run, "-n", "2", "--", osu, "-m", "4:4", "-i", "10", "-x", "1", NULL};
    run_expect(osu_argv, "# crux OSU-compatible Allreduce Latency Test");
    char *codec_argv[] = {codec, "-n", "4096", "-i", "scalar", "-t", "0.0001", NULL};
    run_expect(codec_argv, "sketch accumulate 5x52428");
}
