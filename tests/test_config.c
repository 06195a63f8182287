/* test_config.c - the parameter table, value parsers, NCCL lists, logging, errors. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "crux.h"
#include "lib/config.h"
#include "lib/log.h"

static const struct crux_param *param(const char *name)
{
    for (size_t i = 0; i < crux_nparams; i++)
        if (strcmp(crux_params[i].name, name) == 0)
            return &crux_params[i];
    cr_assert_fail("no parameter CRUX_%s in the table", name);
    return NULL;
}

/* Tests run in their own processes: clearing the environment here cannot leak. */
static void clean_env(void)
{
    char name[80];
    for (size_t i = 0; i < crux_nparams; i++) {
        snprintf(name, sizeof(name), "CRUX_%s", crux_params[i].name);
        unsetenv(name);
    }
    crux_log_setup(CRUX_LOG_NONE, CRUX_SUBSYS_ALL); /* rejected values log errors */
}

static struct crux_config loaded(void)
{
    struct crux_config cfg;
    cr_assert_eq(crux_config_load(&cfg), CRUX_SUCCESS);
    crux_log_setup(CRUX_LOG_NONE, CRUX_SUBSYS_ALL); /* load set it up; rejected values log */
    return cfg;
}

TestSuite(config, .init = clean_env);

Test(config, table_is_well_formed)
{
    cr_assert_geq(crux_nparams, 16);
    for (size_t i = 0; i < crux_nparams; i++) {
        const struct crux_param *p = &crux_params[i];
        cr_assert(p->name && p->name[0] && p->dflt && p->doc && strlen(p->doc) > 20, "row %zu", i);
        cr_assert_lt(p->offset, sizeof(struct crux_config));
        for (size_t j = 0; j < i; j++)
            cr_assert_str_neq(p->name, crux_params[j].name);
    }
}

Test(config, defaults_are_the_documented_ones)
{
    struct crux_config c = loaded();
    cr_assert_eq(c.log_level, CRUX_LOG_WARN);
    cr_assert_eq(c.log_subsys, CRUX_SUBSYS_ALL);
    cr_assert_eq(c.rank, -1);
    cr_assert_eq(c.size, -1);
    cr_assert_eq(c.local_rank, -1);
    cr_assert_str_eq(c.root, "");
    cr_assert_str_eq(c.job_key, "");
    cr_assert_eq(c.bootstrap_timeout_s, 60.0);
    cr_assert_eq(c.transport, CRUX_TP_AUTO);
    cr_assert_str_eq(c.socket_ifname, "");
    cr_assert_eq(c.chunk_bytes, 262144);
    cr_assert_eq(c.shm_eager_bytes, 16384);
    cr_assert_eq(c.spin_us, -1);
    cr_assert_eq(c.algo, CRUX_ALGO_AUTO);
    cr_assert_eq(c.ring_min_bytes, 65536);
    cr_assert_eq(c.timeout_s, 300.0);
}

static size_t size_of(const char *param_name, const char *v, int *rc)
{
    struct crux_config c = loaded();
    *rc = crux_config_set(&c, param(param_name), v);
    return *(size_t *)(void *)((char *)&c + param(param_name)->offset);
}

Test(config, sizes_parse_exactly)
{
    static const struct {
        const char *s;
        size_t v;
    } ok[] = {{"0", 0},           {"1", 1},           {"128K", 131072},    {"128k", 131072},
              {"128KB", 131072},  {"128KiB", 131072}, {"128kib", 131072},  {"1M", 1048576},
              {"1m", 1048576},    {"3g", 3221225472}, {"3G", 3221225472},  {"64B", 64},
              {"4096", 4096},     {"007", 7},         {"16384g", (size_t)16384 << 30}};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        int rc;
        size_t v = size_of("RING_MIN_BYTES", ok[i].s, &rc);
        cr_assert_eq(rc, CRUX_SUCCESS, "\"%s\"", ok[i].s);
        cr_assert_eq(v, ok[i].v, "\"%s\" gave %zu", ok[i].s, v);
    }
}

Test(config, sizes_reject_garbage_negative_overflow)
{
    static const char *const bad[] = {"", "-1", "-0", "+5", " 1", "1 ", "abc", "12x", "1.5M",
                                      "1KK", "1Ki", "1iB", "0x10", "1T", "K",
                                      "18446744073709551616", "17179869184G", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc;
        size_t v = size_of("RING_MIN_BYTES", bad[i], &rc);
        cr_assert_eq(rc, CRUX_ERR_ARG, "\"%s\" accepted", bad[i]);
        cr_assert_eq(v, 65536, "\"%s\" changed the value", bad[i]);
    }
}

Test(config, size_ranges_and_granule)
{
    int rc;
    cr_assert_eq(size_of("CHUNK_BYTES", "4K", &rc), 4096);
    cr_assert_eq(rc, CRUX_SUCCESS);
    cr_assert_eq(size_of("CHUNK_BYTES", "64M", &rc), 67108864);
    cr_assert_eq(rc, CRUX_SUCCESS);
    cr_assert_eq(size_of("CHUNK_BYTES", "4160", &rc), 4160);
    cr_assert_eq(rc, CRUX_SUCCESS);
    static const char *const bad[] = {"4032", "67108928", "4100", "0", "1G"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_assert_eq(size_of("CHUNK_BYTES", bad[i], &rc), 262144, "%s", bad[i]);
        cr_assert_eq(rc, CRUX_ERR_ARG, "%s accepted", bad[i]);
    }
    cr_assert_eq(size_of("SHM_EAGER_BYTES", "0", &rc), 0);
    cr_assert_eq(rc, CRUX_SUCCESS);
    cr_assert_eq(size_of("SHM_EAGER_BYTES", "1M", &rc), 1048576);
    cr_assert_eq(rc, CRUX_SUCCESS);
    cr_assert_eq(size_of("SHM_EAGER_BYTES", "1025K", &rc), 16384);
    cr_assert_eq(rc, CRUX_ERR_ARG);
    /* Non-temporal landing: off (0) unless asked; any size turns it on from there. */
    cr_assert_eq(size_of("SHM_NT_BYTES", "16M", &rc), 16777216);
    cr_assert_eq(rc, CRUX_SUCCESS);
    cr_assert_eq(size_of("SHM_NT_BYTES", "sixteen", &rc), 0);
    cr_assert_eq(rc, CRUX_ERR_ARG);
}

static int int_of(const char *param_name, const char *v, int *rc)
{
    struct crux_config c = loaded();
    *rc = crux_config_set(&c, param(param_name), v);
    return *(int *)(void *)((char *)&c + param(param_name)->offset);
}

Test(config, ints_parse_and_range)
{
    int rc;
    cr_assert_eq(int_of("SPIN_US", "-1", &rc), -1);
    cr_assert_eq(rc, CRUX_SUCCESS);
    cr_assert_eq(int_of("SPIN_US", "0", &rc), 0);
    cr_assert_eq(rc, CRUX_SUCCESS);
    cr_assert_eq(int_of("SPIN_US", "1000000", &rc), 1000000);
    cr_assert_eq(rc, CRUX_SUCCESS);
    cr_assert_eq(int_of("RANK", "0", &rc), 0);
    cr_assert_eq(rc, CRUX_SUCCESS);
    cr_assert_eq(int_of("RANK", "2147483647", &rc), 2147483647);
    cr_assert_eq(rc, CRUX_SUCCESS);
    cr_assert_eq(int_of("RANK", "", &rc), -1); /* optional: empty = not set */
    cr_assert_eq(rc, CRUX_SUCCESS);
    cr_assert_eq(int_of("SIZE", "1", &rc), 1);
    cr_assert_eq(rc, CRUX_SUCCESS);
    cr_assert_eq(int_of("LOCAL_RANK", "7", &rc), 7);
    cr_assert_eq(rc, CRUX_SUCCESS);

    static const struct {
        const char *p, *v;
    } bad[] = {{"SPIN_US", "-2"},        {"SPIN_US", "1000001"}, {"SPIN_US", "abc"},
               {"SPIN_US", "1e3"},       {"SPIN_US", ""},        {"SPIN_US", "12 "},
               {"SPIN_US", "+3"},        {"SPIN_US", "-"},       {"SPIN_US", "99999999999999999999"},
               {"RANK", "-1"},           {"RANK", "2147483648"}, {"RANK", "0x1"},
               {"SIZE", "0"},            {"SIZE", "-5"},         {"LOCAL_RANK", "1.0"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct crux_config c = loaded();
        cr_assert_eq(crux_config_set(&c, param(bad[i].p), bad[i].v), CRUX_ERR_ARG,
                     "CRUX_%s=\"%s\" accepted", bad[i].p, bad[i].v);
    }
}

Test(config, seconds)
{
    struct crux_config c = loaded();
    cr_assert_eq(crux_config_set(&c, param("TIMEOUT"), "0.5"), CRUX_SUCCESS);
    cr_assert_eq(c.timeout_s, 0.5);
    cr_assert_eq(crux_config_set(&c, param("TIMEOUT"), "1e2"), CRUX_SUCCESS);
    cr_assert_eq(c.timeout_s, 100.0);
    cr_assert_eq(crux_config_set(&c, param("BOOTSTRAP_TIMEOUT"), "30"), CRUX_SUCCESS);
    cr_assert_eq(c.bootstrap_timeout_s, 30.0);
    static const char *const bad[] = {"0", "-1", "abc", "inf", "nan", "", "5s", "1e999", " 5"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_assert_eq(crux_config_set(&c, param("TIMEOUT"), bad[i]), CRUX_ERR_ARG, "%s", bad[i]);
        cr_assert_eq(c.timeout_s, 100.0);
    }
}

Test(config, enums_case_insensitive_and_strict)
{
    static const struct {
        const char *p, *v;
        int want;
    } ok[] = {{"TRANSPORT", "auto", CRUX_TP_AUTO}, {"TRANSPORT", "shm", CRUX_TP_SHM},
              {"TRANSPORT", "TCP", CRUX_TP_TCP},   {"TRANSPORT", "Verbs", CRUX_TP_VERBS},
              {"ALGO", "auto", CRUX_ALGO_AUTO},    {"ALGO", "RING", CRUX_ALGO_RING},
              {"ALGO", "recdbl", CRUX_ALGO_RECDBL}, {"LOG_LEVEL", "none", CRUX_LOG_NONE},
              {"LOG_LEVEL", "error", CRUX_LOG_ERROR}, {"LOG_LEVEL", "Warn", CRUX_LOG_WARN},
              {"LOG_LEVEL", "INFO", CRUX_LOG_INFO}, {"LOG_LEVEL", "debug", CRUX_LOG_DEBUG},
              {"LOG_LEVEL", "trace", CRUX_LOG_TRACE}};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        int rc;
        cr_assert_eq(int_of(ok[i].p, ok[i].v, &rc), ok[i].want, "%s=%s", ok[i].p, ok[i].v);
        cr_assert_eq(rc, CRUX_SUCCESS);
    }
    static const struct {
        const char *p, *v;
    } bad[] = {{"TRANSPORT", "rdma"}, {"TRANSPORT", ""}, {"TRANSPORT", "tc"},
               {"TRANSPORT", "tcpx"}, {"TRANSPORT", "auto|shm"}, {"ALGO", "btree"},
               {"LOG_LEVEL", "verbose"}, {"LOG_LEVEL", ""}, {"LOG_LEVEL", "3"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc;
        int_of(bad[i].p, bad[i].v, &rc);
        cr_assert_eq(rc, CRUX_ERR_ARG, "%s=\"%s\" accepted", bad[i].p, bad[i].v);
    }
}

Test(config, log_subsys)
{
    unsigned m = 0;
    cr_assert_eq(crux_log_parse_subsys("INIT,NET", &m), 0);
    cr_assert_eq(m, CRUX_SUBSYS_INIT | CRUX_SUBSYS_NET);
    cr_assert_eq(crux_log_parse_subsys("^SHM", &m), 0);
    cr_assert_eq(m, CRUX_SUBSYS_ALL & ~CRUX_SUBSYS_SHM);
    cr_assert_eq(crux_log_parse_subsys("all", &m), 0);
    cr_assert_eq(m, CRUX_SUBSYS_ALL);
    cr_assert_eq(crux_log_parse_subsys("coll,Codec,CONFIG,boot", &m), 0);
    cr_assert_eq(m, CRUX_SUBSYS_COLL | CRUX_SUBSYS_CODEC | CRUX_SUBSYS_CONFIG | CRUX_SUBSYS_BOOT);
    m = 12345;
    static const char *const bad[] = {"", "^", "FOO", "INIT,,NET", "INIT,", ",NET", "NET ", "^^SHM"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(crux_log_parse_subsys(bad[i], &m), -1, "\"%s\" accepted", bad[i]);
    cr_assert_eq(m, 12345);
    cr_assert_eq(crux_log_parse_level("trace"), CRUX_LOG_TRACE);
    cr_assert_eq(crux_log_parse_level("nope"), -1);
    cr_assert_eq(crux_log_parse_level(NULL), -1);
    cr_assert_str_eq(crux_log_subsys_name(CRUX_SUBSYS_SHM), "SHM");
    cr_assert_str_eq(crux_log_subsys_name(CRUX_SUBSYS_ALL), "ALL");

    int rc;
    cr_assert_eq((unsigned)int_of("LOG_SUBSYS", "^NET,SHM", &rc),
                 CRUX_SUBSYS_ALL & ~(CRUX_SUBSYS_NET | CRUX_SUBSYS_SHM));
    cr_assert_eq(rc, CRUX_SUCCESS);
    int_of("LOG_SUBSYS", "NETWORK", &rc);
    cr_assert_eq(rc, CRUX_ERR_ARG);
}

Test(config, strings_and_root_form)
{
    struct crux_config c = loaded();
    static const char *const ok[] = {"host:1234", "n1.cluster:65535", "10.0.0.1:1", "[::1]:29500",
                                     ""};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        cr_assert_eq(crux_config_set(&c, param("ROOT"), ok[i]), CRUX_SUCCESS, "%s", ok[i]);
        cr_assert_str_eq(c.root, ok[i]);
    }
    crux_config_set(&c, param("ROOT"), "keep:1");
    static const char *const bad[] = {"host", ":80", "host:", "host:0", "host:65536", "host:abc",
                                      "::1:80", "host:-1", "[]:80", "[::1:80", "ho st:80",
                                      "host:80x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_assert_eq(crux_config_set(&c, param("ROOT"), bad[i]), CRUX_ERR_ARG, "%s accepted", bad[i]);
        cr_assert_str_eq(c.root, "keep:1");
    }

    char s[CRUX_STR_MAX + 1];
    memset(s, 'k', sizeof(s));
    s[CRUX_STR_MAX - 1] = '\0'; /* 255 characters: fits */
    cr_assert_eq(crux_config_set(&c, param("JOB_KEY"), s), CRUX_SUCCESS);
    cr_assert_eq(strlen(c.job_key), CRUX_STR_MAX - 1);
    s[CRUX_STR_MAX - 1] = 'k';
    s[CRUX_STR_MAX] = '\0'; /* 256: an error, never truncated */
    cr_assert_eq(crux_config_set(&c, param("JOB_KEY"), s), CRUX_ERR_ARG);
    cr_assert_eq(strlen(c.job_key), CRUX_STR_MAX - 1);
    cr_assert_eq(crux_config_set(&c, param("JOB_KEY"), "secret-42"), CRUX_SUCCESS);
    cr_assert_str_eq(c.job_key, "secret-42");
}

Test(config, iflist_syntax)
{
    static const char *const ok[] = {"", "eth", "eth,ib", "^docker", "^docker,lo", "=eth0",
                                     "^=eth0,eth1", "mlx5_0:1", "=mlx5_0:1,mlx5_1:2", "^mlx5_1:65535"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        cr_assert_eq(crux_iflist_valid(ok[i]), 0, "\"%s\" rejected", ok[i]);
    static const char *const bad[] = {",eth", "eth,", "eth,,ib", "^", "=", "^=", "=^eth", "eth:0",
                                      "eth:x", "eth:", "eth:65536", "eth 0", ":1", "eth:1:2"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_neq(crux_iflist_valid(bad[i]), 0, "\"%s\" accepted", bad[i]);
    cr_assert_neq(crux_iflist_valid(NULL), 0);

    struct crux_config c = loaded();
    cr_assert_eq(crux_config_set(&c, param("SOCKET_IFNAME"), "^docker,lo"), CRUX_SUCCESS);
    cr_assert_str_eq(c.socket_ifname, "^docker,lo");
    cr_assert_eq(crux_config_set(&c, param("SOCKET_IFNAME"), "eth,"), CRUX_ERR_ARG);
    cr_assert_str_eq(c.socket_ifname, "^docker,lo");
}

Test(config, iflist_match)
{
    /* empty list: everything */
    cr_assert_eq(crux_iflist_match("", "eth0", -1), 1);
    cr_assert_eq(crux_iflist_match(NULL, "lo", 1), 1);
    /* prefixes */
    cr_assert_eq(crux_iflist_match("eth,ib", "eth0", -1), 1);
    cr_assert_eq(crux_iflist_match("eth,ib", "ib1", -1), 1);
    cr_assert_eq(crux_iflist_match("eth,ib", "enp3s0", -1), 0);
    cr_assert_eq(crux_iflist_match("eth0", "eth", -1), 0);
    cr_assert_eq(crux_iflist_match("eth0", "eth01", -1), 1);
    /* exclusion */
    cr_assert_eq(crux_iflist_match("^docker,lo", "docker0", -1), 0);
    cr_assert_eq(crux_iflist_match("^docker,lo", "lo", -1), 0);
    cr_assert_eq(crux_iflist_match("^docker,lo", "eth0", -1), 1);
    /* exact names */
    cr_assert_eq(crux_iflist_match("=eth0", "eth0", -1), 1);
    cr_assert_eq(crux_iflist_match("=eth0", "eth01", -1), 0);
    cr_assert_eq(crux_iflist_match("=eth0,eth1", "eth1", -1), 1);
    cr_assert_eq(crux_iflist_match("=eth", "eth0", -1), 0);
    /* exclude exact */
    cr_assert_eq(crux_iflist_match("^=eth0", "eth0", -1), 0);
    cr_assert_eq(crux_iflist_match("^=eth0", "eth01", -1), 1);
    /* ports */
    cr_assert_eq(crux_iflist_match("mlx5_0:1", "mlx5_0", 1), 1);
    cr_assert_eq(crux_iflist_match("mlx5_0:1", "mlx5_0", 2), 0);
    cr_assert_eq(crux_iflist_match("mlx5_0:1", "mlx5_0", -1), 0);
    cr_assert_eq(crux_iflist_match("mlx5", "mlx5_1", 2), 1);
    cr_assert_eq(crux_iflist_match("=mlx5_0:1,mlx5_1:2", "mlx5_1", 2), 1);
    cr_assert_eq(crux_iflist_match("=mlx5_0:1,mlx5_1:2", "mlx5_1", 1), 0);
    cr_assert_eq(crux_iflist_match("^mlx5_0:1", "mlx5_0", 2), 1);
    cr_assert_eq(crux_iflist_match("^mlx5_0:1", "mlx5_0", 1), 0);
    cr_assert_eq(crux_iflist_match("eth", NULL, -1), 0);
}

Test(config, environment_sets_fields)
{
    setenv("CRUX_CHUNK_BYTES", "1M", 1);
    setenv("CRUX_TRANSPORT", "tcp", 1);
    setenv("CRUX_RANK", "3", 1);
    setenv("CRUX_SIZE", "4", 1);
    setenv("CRUX_ROOT", "node1:29500", 1);
    setenv("CRUX_TIMEOUT", "2.5", 1);
    setenv("CRUX_SOCKET_IFNAME", "^docker", 1);
    setenv("CRUX_LOG_LEVEL", "error", 1);
    setenv("CRUX_LOG_SUBSYS", "NET", 1);
    setenv("CRUX_TIMOUT", "1", 1);    /* a typo: warned about, not fatal */
    setenv("CRUX_RUN_WHATEVER", "1", 1); /* launcher's own */
    struct crux_config c;
    cr_assert_eq(crux_config_load(&c), CRUX_SUCCESS);
    cr_assert_eq(c.chunk_bytes, 1048576);
    cr_assert_eq(c.transport, CRUX_TP_TCP);
    cr_assert_eq(c.rank, 3);
    cr_assert_eq(c.size, 4);
    cr_assert_str_eq(c.root, "node1:29500");
    cr_assert_eq(c.timeout_s, 2.5);
    cr_assert_str_eq(c.socket_ifname, "^docker");
    cr_assert_eq(c.log_level, CRUX_LOG_ERROR);
    cr_assert_eq(c.log_subsys, CRUX_SUBSYS_NET);
    /* logging follows the table */
    cr_assert_eq(crux_log_level_cur, CRUX_LOG_ERROR);
    cr_assert_eq(crux_log_subsys_mask, CRUX_SUBSYS_NET);
}

Test(config, bad_environment_fails)
{
    static const char *const vars[][2] = {
        {"CRUX_CHUNK_BYTES", "lots"}, {"CRUX_TRANSPORT", "ib"}, {"CRUX_SIZE", "0"},
        {"CRUX_ROOT", "nohost"},      {"CRUX_LOG_LEVEL", "loud"}, {"CRUX_LOG_SUBSYS", "X"},
        {"CRUX_SPIN_US", ""},         {"CRUX_TIMEOUT", "-3"},    {"CRUX_SOCKET_IFNAME", "^"}};
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        clean_env();
        if (strncmp(vars[i][0], "CRUX_LOG_", 9) != 0)
            setenv("CRUX_LOG_LEVEL", "none", 1); /* the expected errors need not be shown */
        setenv(vars[i][0], vars[i][1], 1);
        struct crux_config c;
        cr_assert_eq(crux_config_load(&c), CRUX_ERR_ARG, "%s=\"%s\" accepted", vars[i][0],
                     vars[i][1]);
        unsetenv(vars[i][0]);
    }
    cr_assert_eq(crux_config_load(NULL), CRUX_ERR_ARG);
}

static char *print_to_string(const struct crux_config *c)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert_not_null(f);
    crux_config_print(f, c);
    fclose(f);
    return buf;
}

Test(config, print_lists_every_parameter_with_value)
{
    struct crux_config c = loaded();
    c.chunk_bytes = 1048576;
    c.transport = CRUX_TP_SHM;
    c.log_subsys = CRUX_SUBSYS_ALL & ~CRUX_SUBSYS_SHM;
    char *out = print_to_string(&c);
    char line[128];
    for (size_t i = 0; i < crux_nparams; i++) {
        snprintf(line, sizeof(line), "\nCRUX_%s=", crux_params[i].name);
        cr_assert_not_null(strstr(out, line), "%s missing", line + 1);
    }
    cr_assert_not_null(strstr(out, "\nCRUX_CHUNK_BYTES=1M\n"));
    cr_assert_not_null(strstr(out, "\nCRUX_TRANSPORT=shm\n"));
    cr_assert_not_null(strstr(out, "\nCRUX_TIMEOUT=300\n"));
    cr_assert_not_null(strstr(out, "\nCRUX_RANK=\n"));
    cr_assert_not_null(strstr(out, "\nCRUX_LOG_SUBSYS=^SHM\n"));
    cr_assert_not_null(strstr(out, "\nCRUX_SPIN_US=-1\n"));
    cr_assert_not_null(strstr(out, "default: 256K"));
    free(out);
}

/* Capture what one crux_log_write call puts on stderr. */
static size_t capture_log(char *buf, size_t cap, int level, unsigned ss, const char *msg)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    int saved = dup(2);
    dup2(fds[1], 2);
    crux_log_write(level, ss, "dir/file.c", 42, "%s", msg);
    dup2(saved, 2);
    close(saved);
    close(fds[1]);
    size_t len = 0;
    ssize_t n;
    while ((n = read(fds[0], buf + len, cap - 1 - len)) > 0)
        len += (size_t)n;
    buf[len] = '\0';
    close(fds[0]);
    return len;
}

Test(config, log_line_format)
{
    char buf[8192], host[256], want[512];
    gethostname(host, sizeof(host));
    host[strcspn(host, ".")] = '\0';

    crux_log_setup(CRUX_LOG_WARN, CRUX_SUBSYS_ALL);
    capture_log(buf, sizeof(buf), CRUX_LOG_WARN, CRUX_SUBSYS_NET, "hello 42");
    snprintf(want, sizeof(want), "%s:%d:- crux WARN [NET] hello 42\n", host, (int)getpid());
    cr_assert_str_eq(buf, want);

    crux_log_set_rank(3);
    capture_log(buf, sizeof(buf), CRUX_LOG_DEBUG, CRUX_SUBSYS_SHM, "detail");
    snprintf(want, sizeof(want), "%s:%d:3 crux DEBUG [SHM] file.c:42 detail\n", host,
             (int)getpid());
    cr_assert_str_eq(buf, want);

    char big[5000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    size_t len = capture_log(buf, sizeof(buf), CRUX_LOG_ERROR, CRUX_SUBSYS_ALL, big);
    cr_assert_lt(len, 2049);
    cr_assert_eq(strchr(buf, '\n'), buf + len - 1, "one line, ended by newline");
    cr_assert_eq(memcmp(buf + len - 4, "...\n", 4), 0);
}

Test(config, error_strings_are_distinct)
{
    for (int a = CRUX_SUCCESS; a <= CRUX_ERR_INTERNAL; a++) {
        const char *s = crux_error_string(a);
        cr_assert(s && s[0]);
        cr_assert_str_neq(s, "unknown error", "code %d", a);
        for (int b = CRUX_SUCCESS; b < a; b++)
            cr_assert_str_neq(s, crux_error_string(b), "codes %d and %d", a, b);
    }
    cr_assert_str_eq(crux_error_string(CRUX_ERR_INTERNAL + 1), "unknown error");
    cr_assert_str_eq(crux_error_string(-1), "unknown error");
    cr_assert_str_eq(crux_error_string(INT32_MAX), "unknown error");
}

Test(config, datatype_sizes)
{
    cr_assert_eq(crux_datatype_size(CRUX_FLOAT), 4);
    cr_assert_eq(crux_datatype_size(CRUX_DOUBLE), 8);
    cr_assert_eq(crux_datatype_size(CRUX_INT32), 4);
    cr_assert_eq(crux_datatype_size(CRUX_INT64), 8);
    cr_assert_eq(crux_datatype_size(CRUX_UINT8), 1);
    cr_assert_eq(crux_datatype_size(CRUX_FLOAT16), 2);
    cr_assert_eq(crux_datatype_size(CRUX_BFLOAT16), 2);
    cr_assert_eq(crux_datatype_size((crux_datatype_t)7), 0);
    cr_assert_eq(crux_datatype_size((crux_datatype_t)-1), 0);
}
