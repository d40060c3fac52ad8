#include "lora_spec.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int lsd_cli_number(const char *s, size_t len, float *out)
{
    char buf[64];
    if (len == 0 || len >= sizeof buf)
        return 0;
    memcpy(buf, s, len);
    buf[len] = 0;
    char *end;
    double d = strtod(buf, &end);
    if (*end || !isfinite(d) || fabs(d) > 1e6)
        return 0;
    *out = (float)d;
    return 1;
}

static void base_name(const char *path, char *out, size_t n)
{
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    const char *dot = strrchr(b, '.');
    size_t len = dot && dot != b ? (size_t)(dot - b) : strlen(b);
    if (len >= n)
        len = n - 1;
    memcpy(out, b, len);
    out[len] = 0;
}

int lsd_cli_parse_lora_spec(const char *spec, lsd_cli_lora_spec *out)
{
    if (!spec || !out)
        return -1;
    size_t len = strlen(spec);
    float vals[2];
    int nv = 0;
    while (nv < 2) {
        const char *colon = NULL;
        for (size_t i = len; i > 0 && !colon; i--)
            if (spec[i - 1] == ':')
                colon = spec + i - 1;
        float v;
        if (!colon || !lsd_cli_number(colon + 1, (size_t)(spec + len - colon - 1), &v))
            break;
        vals[nv++] = v;
        len = (size_t)(colon - spec);
    }
    if (len == 0 || len >= sizeof out->path)
        return -1;
    memcpy(out->path, spec, len);
    out->path[len] = 0;
    base_name(out->path, out->name, sizeof out->name);
    /* parsed right to left: with two numbers the last one is the text-encoder weight */
    out->weight = nv == 0 ? 1.0f : nv == 1 ? vals[0] : vals[1];
    out->te_weight = nv == 2 ? vals[0] : out->weight;
    return 0;
}
