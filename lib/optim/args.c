/* kohya's --optimizer_args: "key=value" words whose values sd-scripts reads with ast.literal_eval, so numbers,
 * True/False, None and tuples ("0.9,0.99" is a tuple to Python too). */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/error.h"
#include "optim/impl.h"

lsd_status lsdi_optim_args_parse(const char *text, const char *optimizer, lsdi_optim_args *a)
{
    memset(a, 0, sizeof *a);
    a->optimizer = optimizer;
    if (!text)
        return LSD_OK;
    if (!(a->buf = strdup(text)))
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "optimizer_args");
    char *c = a->buf;
    lsd_status st = LSD_OK;
    while (st == LSD_OK) {
        while (isspace((unsigned char)*c))
            c++;
        if (!*c)
            break;
        char *word = c;
        int depth = 0;
        for (; *c && (depth > 0 || !isspace((unsigned char)*c)); c++)
            depth += (*c == '(' || *c == '[') - (*c == ')' || *c == ']');
        if (*c)
            *c++ = '\0';
        char *eq = strchr(word, '=');
        int key_ok = eq && eq > word;
        for (char *k = word; key_ok && k < eq; k++)
            key_ok = isalnum((unsigned char)*k) || *k == '_';
        if (!key_ok || !eq[1])
            st = lsdi_error(LSD_ERR_INVALID_ARGUMENT, "optimizer_args of %s: \"%s\" is not key=value", optimizer, word);
        else if (a->n == LSDI_OPTIM_MAX_ARGS)
            st = lsdi_error(LSD_ERR_INVALID_ARGUMENT, "optimizer_args of %s: more than %d keys", optimizer,
                            LSDI_OPTIM_MAX_ARGS);
        else {
            *eq = '\0';
            a->kv[a->n].key = word;
            a->kv[a->n].value = eq + 1;
            a->kv[a->n++].used = 0;
        }
    }
    if (st != LSD_OK)
        lsdi_optim_args_release(a);
    return st;
}

void lsdi_optim_args_release(lsdi_optim_args *a)
{
    free(a->buf);
    a->buf = NULL;
    a->n = 0;
}

/* The last value given for key (marking every occurrence read), or NULL. */
static const char *value_of(lsdi_optim_args *a, const char *key)
{
    const char *v = NULL;
    for (int i = 0; i < a->n; i++)
        if (!strcmp(a->kv[i].key, key)) {
            a->kv[i].used = 1;
            v = a->kv[i].value;
        }
    return v;
}

static lsd_status bad_value(const lsdi_optim_args *a, const char *key, const char *v, const char *expected)
{
    return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "optimizer_args: %s of %s expects %s, got \"%s\"", key, a->optimizer,
                      expected, v);
}

/* A number spanning [s, e) after trimming blanks; NaN is not one. */
static int number(const char *s, const char *e, double *out)
{
    while (s < e && isspace((unsigned char)*s))
        s++;
    while (e > s && isspace((unsigned char)e[-1]))
        e--;
    char tmp[64], *end = NULL;
    size_t n = (size_t)(e - s);
    if (n == 0 || n >= sizeof tmp)
        return 0;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    errno = 0;
    double x = strtod(tmp, &end);
    if (*end || errno == ERANGE || isnan(x))
        return 0;
    *out = x;
    return 1;
}

lsd_status lsdi_optim_arg_num(lsdi_optim_args *a, const char *key, double *out)
{
    const char *v = value_of(a, key);
    if (v && !number(v, v + strlen(v), out))
        return bad_value(a, key, v, "a number");
    return LSD_OK;
}

lsd_status lsdi_optim_arg_bool(lsdi_optim_args *a, const char *key, int *out)
{
    const char *v = value_of(a, key);
    if (!v)
        return LSD_OK;
    if (!strcasecmp(v, "true") || !strcmp(v, "1"))
        *out = 1;
    else if (!strcasecmp(v, "false") || !strcmp(v, "0"))
        *out = 0;
    else
        return bad_value(a, key, v, "True or False");
    return LSD_OK;
}

lsd_status lsdi_optim_arg_num_or_none(lsdi_optim_args *a, const char *key, double *out, int *is_none)
{
    const char *v = value_of(a, key);
    if (!v)
        return LSD_OK;
    if (!strcasecmp(v, "none")) {
        *is_none = 1;
        return LSD_OK;
    }
    if (!number(v, v + strlen(v), out))
        return bad_value(a, key, v, "a number or None");
    *is_none = 0;
    return LSD_OK;
}

lsd_status lsdi_optim_arg_pair(lsdi_optim_args *a, const char *key, double out[2])
{
    const char *v = value_of(a, key);
    if (!v)
        return LSD_OK;
    const char *s = v, *e = v + strlen(v);
    if (e - s >= 2 && ((*s == '(' && e[-1] == ')') || (*s == '[' && e[-1] == ']'))) {
        s++;
        e--;
    }
    const char *comma = memchr(s, ',', (size_t)(e - s));
    double x[2];
    if (!comma || !number(s, comma, &x[0]) || !number(comma + 1, e, &x[1]))
        return bad_value(a, key, v, "two numbers \"x,y\"");
    out[0] = x[0];
    out[1] = x[1];
    return LSD_OK;
}

lsd_status lsdi_optim_arg_check(const lsdi_optim_args *a, int bad, const char *key, const char *rule)
{
    if (!bad)
        return LSD_OK;
    return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "optimizer_args: %s of %s %s", key, a->optimizer, rule);
}
