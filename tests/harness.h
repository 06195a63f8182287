/* harness.h - helpers shared by the Criterion tests: run a program (usually
 * crux-run ... crux_test_rank ...) with a time limit, capture its output. */
#ifndef CRUX_TEST_HARNESS_H
#define CRUX_TEST_HARNESS_H

#include <stddef.h>

struct proc_result {
    int status;  /* exit code, 128 + signal if killed, -1 if it could not start */
    int timed_out;
    char *out;   /* captured stdout, NUL-terminated */
    char *err;   /* captured stderr */
    double secs; /* wall time */
};

/* Run argv with extra "NAME=value" variables (NULL-terminated list, may be NULL)
 * added to the environment; kill the whole process group after timeout_s. */
int run_proc(char *const argv[], char *const env[], double timeout_s, struct proc_result *res);
void proc_result_free(struct proc_result *res);
/* Print captured output of a failed run through cr_log so failures are debuggable. */
void proc_result_dump(const struct proc_result *res);
/* Number of /dev/shm entries named "crux-*" that are still there after 5 s (0 = no leak). */
int shm_leftovers(void);

#endif
