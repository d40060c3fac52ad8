/* Minimal test framework: TEST(name) registers a test; CHECK* record failures and keep going. */
#ifndef LSD_TEST_H
#define LSD_TEST_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "lora_sd.h"

typedef void (*test_fn)(void);
void test_register(const char *name, const char *file, test_fn fn);
void test_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int test_failed_now(void);

#define TEST(name)                                                                         \
    static void test_##name(void);                                                         \
    __attribute__((constructor)) static void test_reg_##name(void)                         \
    {                                                                                      \
        test_register(#name, __FILE__, test_##name);                                       \
    }                                                                                      \
    static void test_##name(void)

/* The condition's text is an argument, never part of the format: it may well contain a '%'. */
void test_fail_check(const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond))                                                                       \
            test_fail_check(__FILE__, __LINE__, #cond, " " __VA_ARGS__);                   \
    } while (0)

/* Fails unless expr returns status want; on a failure status also checks that lsd_last_error() contains
 * substring sub (NULL: any message, which must still be non-empty). */
#define CHECK_STATUS(expr, want, sub) check_status_impl(__FILE__, __LINE__, #expr, (expr), (want), (sub))
#define CHECK_OK(expr) CHECK_STATUS(expr, LSD_OK, NULL)
int check_status_impl(const char *file, int line, const char *expr, lsd_status got, lsd_status want,
                      const char *sub);

/* max |a - b| <= tol over n floats; prints the worst index. */
#define CHECK_CLOSE(a, b, n, tol) check_close_impl(__FILE__, __LINE__, #a, (a), (b), (n), (tol))
int check_close_impl(const char *file, int line, const char *what, const float *a, const float *b, size_t n,
                     double tol);
double max_abs_diff(const float *a, const float *b, size_t n);

/* Paths of test data: tests/data/<rel> under LSD_TEST_DATA (default "tests/data"). Static buffer rotation. */
const char *data_path(const char *rel);
/* A fresh empty temporary directory (removed at exit). */
const char *temp_dir(void);

/* Loads tensor `name` of a safetensors file as float32 (converted from any float/int dtype). Returns a malloc'd
 * buffer (free it) or NULL after recording a failure; shape/ndim optional. */
float *load_f32(const char *path, const char *name, int64_t *shape, int *ndim, size_t *numel);
int64_t *load_i64(const char *path, const char *name, size_t *numel);
/* Reads a whole file; NULL on failure (recorded). */
char *read_file(const char *path, size_t *len);
int write_file(const char *path, const void *data, size_t len);
/* 1 when dir/leaf exists. */
int exists_in(const char *dir, const char *leaf);

/* dir/name: a w x h PNG whose red channel is 6x (so interpolation is exact), green = y, blue = 200; with caption,
 * dir/<stem>.txt holding it. */
void make_captioned_png(const char *dir, const char *name, int w, int h, const char *caption);
/* A fresh folder of four captioned PNGs (32..56 x 32). */
const char *tiny_dataset(void);

#endif
