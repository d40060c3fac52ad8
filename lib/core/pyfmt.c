#include "core/pyfmt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void lsdi_py_float(double v, int is_float32, char *buf, size_t n)
{
    if (isnan(v) || isinf(v)) {
        snprintf(buf, n, "%s", isnan(v) ? "nan" : v < 0 ? "-inf" : "inf");
        return;
    }
    char e[40];
    int p = 1;
    for (; p < 17; p++) { /* the shortest digits that round-trip */
        snprintf(e, sizeof e, "%.*e", p - 1, v);
        double back = strtod(e, NULL);
        if (is_float32 ? (float)back == (float)v : back == v)
            break;
    }
    snprintf(e, sizeof e, "%.*e", p - 1, v);
    char *x = strchr(e, 'e');
    int exp = atoi(x + 1);
    if (exp < -4 || exp >= 16) { /* mantissa without a trailing ".0", exponent of at least two digits */
        *x = 0;
        snprintf(buf, n, "%se%c%02d", e, exp < 0 ? '-' : '+', abs(exp));
        return;
    }
    int decimals = p - 1 - exp;
    snprintf(buf, n, "%.*f", decimals > 0 ? decimals : 0, v);
    if (!strchr(buf, '.'))
        snprintf(buf + strlen(buf), n - strlen(buf), ".0");
}

const char *lsdi_py_bool(int v)
{
    return v ? "True" : "False";
}
