/* hostlist.c - Slurm hostlist expansion ("r[1-2]n[01-03,7],gpu5"), no scontrol.
 *
 * Grammar: list = item (',' item)* ; item = (text | '[' range (',' range)* ']')+ ;
 * range = num | num '-' num. Several bracket groups in one item form a cartesian
 * product with the leftmost group varying slowest (Slurm order). A range keeps the
 * width of its lower bound ("008-011" -> 008 009 010 011). The whole list is
 * validated before anything is expanded, so a syntax error is never half-reported. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "bootstrap.h"

#define HL_MAX_DIGITS 18 /* fits unsigned long long without overflow checks */

static bool hl_is_name_char(char c)
{
    return c > ' ' && c < 0x7f && c != ',' && c != '[' && c != ']';
}

static bool hl_is_digit(char c) { return c >= '0' && c <= '9'; }

/* Parse a run of digits at *p; returns its length (0 = none, -1 = too long). */
static int hl_parse_num(const char **p, unsigned long long *val)
{
    const char *s = *p;
    unsigned long long v = 0;
    int n = 0;
    while (hl_is_digit(s[n])) {
        if (n == HL_MAX_DIGITS)
            return -1;
        v = v * 10 + (unsigned)(s[n] - '0');
        n++;
    }
    *p = s + n;
    *val = v;
    return n;
}

/* One range inside brackets: lo, hi and the zero-padded width of lo. */
struct hl_range {
    unsigned long long lo, hi;
    int width;
};

/* Parse "lo" or "lo-hi" at *p. Returns 0, or -1 on a syntax error. */
static int hl_parse_range(const char **p, struct hl_range *r)
{
    r->width = hl_parse_num(p, &r->lo);
    if (r->width <= 0)
        return -1;
    r->hi = r->lo;
    if (**p == '-') {
        (*p)++;
        if (hl_parse_num(p, &r->hi) <= 0 || r->hi < r->lo)
            return -1;
    }
    return 0;
}

/* Check the syntax of one bracket group starting after '['; *p ends after ']'. */
static int hl_check_group(const char **p)
{
    struct hl_range r;
    for (;;) {
        if (hl_parse_range(p, &r) != 0)
            return -1;
        if (**p == ']') {
            (*p)++;
            return 0;
        }
        if (**p != ',')
            return -1;
        (*p)++;
    }
}

/* Validate the whole list; returns 0 or -1. */
static int hl_validate(const char *list)
{
    const char *p = list;
    for (;;) {
        const char *item = p;
        while (*p && *p != ',') {
            if (*p == '[') {
                p++;
                if (hl_check_group(&p) != 0)
                    return -1;
            } else if (hl_is_name_char(*p)) {
                p++;
            } else {
                return -1; /* stray ']' or whitespace/control character */
            }
        }
        if (p == item)
            return -1; /* empty item: "", ",a", "a,,b", "a," */
        if (*p == '\0')
            return 0;
        p++; /* top-level ',' */
    }
}

struct hl_out {
    char (*names)[CRUX_HOST_MAX];
    int max;
    int count;
};

/* Append a string to the name being built; -1 if the name gets too long. */
static int hl_append(char *name, size_t *len, const char *s, size_t n)
{
    if (*len + n > CRUX_HOST_MAX - 1)
        return -1;
    memcpy(name + *len, s, n);
    *len += n;
    name[*len] = '\0';
    return 0;
}

/* Expand the rest of an item [p, end) behind the prefix name[0..len).
 * Returns 0, 1 when max names were produced and more remain, or -1 on error. */
static int hl_expand_item(const char *p, const char *end, char *name, size_t len,
                          struct hl_out *o)
{
    const char *lb = p;
    while (lb < end && *lb != '[')
        lb++;
    if (hl_append(name, &len, p, (size_t)(lb - p)) != 0)
        return -1;
    if (lb == end) {
        if (o->count == o->max)
            return 1;
        memcpy(o->names[o->count++], name, len + 1);
        return 0;
    }
    const char *rb = strchr(lb, ']'); /* validated: exists and precedes end */
    const char *q = lb + 1;
    while (q < rb) {
        struct hl_range r;
        (void)hl_parse_range(&q, &r); /* validated */
        if (*q == ',')
            q++;
        for (unsigned long long v = r.lo;; v++) {
            char num[32];
            int n = snprintf(num, sizeof(num), "%0*llu", r.width, v);
            size_t l2 = len;
            if (hl_append(name, &l2, num, (size_t)n) != 0)
                return -1;
            int rc = hl_expand_item(rb + 1, end, name, l2, o);
            if (rc != 0)
                return rc;
            if (v == r.hi)
                break;
        }
    }
    return 0;
}

static int hl_expand(const char *list, struct hl_out *o)
{
    if (!list || hl_validate(list) != 0)
        return -1;
    const char *p = list;
    for (;;) {
        /* the item ends at the first top-level comma */
        const char *end = p;
        int depth = 0;
        while (*end && (*end != ',' || depth)) {
            depth += (*end == '[') - (*end == ']');
            end++;
        }
        char name[CRUX_HOST_MAX];
        int rc = hl_expand_item(p, end, name, 0, o);
        if (rc != 0)
            return rc;
        if (*end == '\0')
            return 0;
        p = end + 1;
    }
}

int crux_hostlist_expand(const char *list, char (*out)[CRUX_HOST_MAX], int max)
{
    if (max < 0 || (max > 0 && !out))
        return -1;
    struct hl_out o = {out, max, 0};
    if (hl_expand(list, &o) != 0)
        return -1;
    return o.count;
}

int crux_hostlist_first(const char *list, char out[CRUX_HOST_MAX])
{
    char one[1][CRUX_HOST_MAX];
    struct hl_out o = {one, 1, 0};
    int rc = hl_expand(list, &o);
    if (rc < 0 || o.count != 1)
        return -1;
    memcpy(out, one[0], CRUX_HOST_MAX);
    return 0;
}
