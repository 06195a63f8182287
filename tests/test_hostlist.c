/* test_hostlist.c - Slurm hostlist expansion: exact outputs and every syntax error. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "bootstrap.h"

#define CAP 64

/* Expand list and compare with the expected names, separated by spaces. */
static void expect(const char *list, const char *want)
{
    char out[CAP][CRUX_HOST_MAX];
    char got[CAP * CRUX_HOST_MAX] = "";
    int n = crux_hostlist_expand(list, out, CAP);
    cr_assert_geq(n, 0, "'%s' rejected", list);
    for (int i = 0; i < n; i++) {
        if (i)
            strcat(got, " ");
        strcat(got, out[i]);
    }
    cr_assert_str_eq(got, want, "'%s' expanded to '%s'", list, got);
}

static void expect_error(const char *list, int max)
{
    char out[CAP][CRUX_HOST_MAX];
    cr_assert_eq(crux_hostlist_expand(list, out, max), -1, "'%s' accepted", list);
}

Test(hostlist, plain_names)
{
    expect("node1", "node1");
    expect("a,b,c", "a b c");
    expect("gpu-01.cluster.local", "gpu-01.cluster.local");
}

Test(hostlist, single_range_and_list)
{
    expect("node[1-3]", "node1 node2 node3");
    expect("node[01-03,7],gpu5", "node01 node02 node03 node7 gpu5");
    expect("n[3]", "n3");
    expect("n[5,1,3]", "n5 n1 n3");
    expect("n[1-2,4-5]", "n1 n2 n4 n5");
}

Test(hostlist, zero_padding)
{
    expect("n[008-011]", "n008 n009 n010 n011");
    expect("n[8-11]", "n8 n9 n10 n11");
    expect("n[098-101]", "n098 n099 n100 n101");
    expect("n[0-2]", "n0 n1 n2");
    expect("n[00]", "n00");
}

Test(hostlist, suffix_after_bracket)
{
    expect("rack[1-2]-ib", "rack1-ib rack2-ib");
    expect("[1-2]x", "1x 2x");
}

Test(hostlist, cartesian_product_in_slurm_order)
{
    expect("r[1-2]n[1-2]", "r1n1 r1n2 r2n1 r2n2");
    expect("r[1-2]n[01,3]x", "r1n01x r1n3x r2n01x r2n3x");
    expect("a[1-2]b[1-2]c[1-2]", "a1b1c1 a1b1c2 a1b2c1 a1b2c2 a2b1c1 a2b1c2 a2b2c1 a2b2c2");
}

Test(hostlist, several_items_with_brackets)
{
    expect("a[1-2],b[3-4],c", "a1 a2 b3 b4 c");
    expect("a[1,2],b", "a1 a2 b");
}

Test(hostlist, syntax_errors)
{
    expect_error("", CAP);
    expect_error(NULL, CAP);
    expect_error("n[1-3", CAP);        /* unbalanced */
    expect_error("n1-3]", CAP);
    expect_error("n[1-[2]]", CAP);     /* nested */
    expect_error("n[3-1]", CAP);       /* reversed */
    expect_error("n[]", CAP);          /* empty range list */
    expect_error("n[1,]", CAP);
    expect_error("n[,1]", CAP);
    expect_error("n[1-]", CAP);
    expect_error("n[-1]", CAP);
    expect_error("n[a-b]", CAP);
    expect_error("n[1-2-3]", CAP);
    expect_error("a,,b", CAP);         /* empty items */
    expect_error(",a", CAP);
    expect_error("a,", CAP);
    expect_error("a b", CAP);          /* blanks are not names */
    expect_error("n[1234567890123456789]", CAP); /* number too long */
}

Test(hostlist, overflow_of_max)
{
    char out[4][CRUX_HOST_MAX];
    cr_assert_eq(crux_hostlist_expand("n[1-4]", out, 4), 4);
    cr_assert_str_eq(out[3], "n4");
    cr_assert_eq(crux_hostlist_expand("n[1-5]", out, 4), -1);
    cr_assert_eq(crux_hostlist_expand("a,b,c,d,e", out, 4), -1);
    cr_assert_eq(crux_hostlist_expand("n[1-99999999999]", out, 4), -1); /* stops early */
}

Test(hostlist, name_length_limit)
{
    char name[CRUX_HOST_MAX + 8], out[2][CRUX_HOST_MAX];
    memset(name, 'x', CRUX_HOST_MAX - 1);
    name[CRUX_HOST_MAX - 1] = '\0';
    cr_assert_eq(crux_hostlist_expand(name, out, 2), 1); /* 63 characters fit */
    cr_assert_str_eq(out[0], name);
    name[CRUX_HOST_MAX - 1] = 'x';
    name[CRUX_HOST_MAX] = '\0';
    cr_assert_eq(crux_hostlist_expand(name, out, 2), -1); /* 64 do not */
    memset(name, 'x', CRUX_HOST_MAX - 2);
    strcpy(name + CRUX_HOST_MAX - 2, "[9-10]");
    cr_assert_eq(crux_hostlist_expand(name, out, 2), -1); /* x..x10 is too long */
}

Test(hostlist, first_name)
{
    char first[CRUX_HOST_MAX];
    cr_assert_eq(crux_hostlist_first("node[007-999],gpu1", first), 0);
    cr_assert_str_eq(first, "node007");
    cr_assert_eq(crux_hostlist_first("r[2-3]n[5-6]", first), 0);
    cr_assert_str_eq(first, "r2n5");
    cr_assert_eq(crux_hostlist_first("n[1-99999999999]", first), 0); /* no full expansion */
    cr_assert_str_eq(first, "n1");
    cr_assert_eq(crux_hostlist_first("n1,m[2-1]", first), -1); /* whole list is checked */
    cr_assert_eq(crux_hostlist_first("", first), -1);
}
