/* test_install.c - install crux into a fresh prefix and build the example the two
 * ways a user would: pkg-config and find_package(crux); then run it on 3 ranks. */
#include <criterion/criterion.h>
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
