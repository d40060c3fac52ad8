/* Python's str() of numbers and booleans: how kohya's metadata writes its values ({k: str(v)}). */
#ifndef LSD_CORE_PYFMT_H
#define LSD_CORE_PYFMT_H

#include <stddef.h>

/* repr of a float: the shortest digits that read back to v (of v as a float32 when is_float32, so 0.05f is "0.05"),
 * fixed notation for exponents -4..15 with ".0" on whole numbers, else "1e-05" / "1.5e+16"; "nan", "inf". */
void lsdi_py_float(double v, int is_float32, char *buf, size_t n);
/* "True" / "False". */
const char *lsdi_py_bool(int v);

#endif
