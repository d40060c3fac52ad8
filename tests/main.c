/* Test runner: runs every registered test (or those whose name contains an argument) and ends with
 * "N passed, N failed". */
#include <dirent.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "test.h"

typedef struct {
    const char *name, *file;
    test_fn fn;
} test_case;

static test_case *cases;
static int n_cases, cap_cases;
static int current_failures;

void test_register(const char *name, const char *file, test_fn fn)
{
    if (n_cases == cap_cases) {
        cap_cases = cap_cases ? cap_cases * 2 : 64;
        cases = realloc(cases, (size_t)cap_cases * sizeof *cases);
        if (!cases)
            abort();
    }
    cases[n_cases++] = (test_case){name, file, fn};
}

void test_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stdout, "    %s:%d: ", file, line);
    vfprintf(stdout, fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    current_failures++;
}

void test_fail_check(const char *file, int line, const char *cond, const char *fmt, ...)
{
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    test_fail(file, line, "CHECK(%s)%s", cond, msg);
}

int test_failed_now(void) { return current_failures; }

static int by_file_then_name(const void *a, const void *b)
{
    const test_case *x = a, *y = b;
    int c = strcmp(x->file, y->file);
    return c ? c : strcmp(x->name, y->name);
}

static char tmp_root[256];

/* Never follows a symlink: tests link fixture folders into their temp dirs, and those must survive. */
static void rm_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return;
    if (!S_ISDIR(st.st_mode)) {
        unlink(path);
        return;
    }
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            char sub[4096];
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            rm_tree(sub);
        }
        closedir(d);
    }
    rmdir(path);
}

static void cleanup_tmp(void)
{
    if (tmp_root[0])
        rm_tree(tmp_root);
}

const char *temp_dir(void)
{
    static char bufs[8][512];
    static int next, counter;
    if (!tmp_root[0]) {
        snprintf(tmp_root, sizeof tmp_root, "%s/lsd-tests-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        if (!mkdtemp(tmp_root))
            abort();
        atexit(cleanup_tmp);
    }
    char *b = bufs[next++ % 8];
    snprintf(b, 512, "%s/t%d", tmp_root, counter++);
    mkdir(b, 0700);
    return b;
}

const char *data_path(const char *rel)
{
    static char bufs[16][1024];
    static int next;
    const char *root = getenv("LSD_TEST_DATA");
    char *b = bufs[next++ % 16];
    snprintf(b, 1024, "%s/%s", root ? root : "tests/data", rel);
    return b;
}

int main(int argc, char **argv)
{
    qsort(cases, (size_t)n_cases, sizeof *cases, by_file_then_name);
    int passed = 0, failed = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < n_cases; i++) {
        int selected = argc < 2;
        for (int a = 1; a < argc && !selected; a++)
            selected = strstr(cases[i].name, argv[a]) || strstr(cases[i].file, argv[a]);
        if (!selected)
            continue;
        current_failures = 0;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        cases[i].fn();
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        if (current_failures) {
            failed++;
            printf("FAIL %s (%.2fs)\n", cases[i].name, secs);
        } else {
            passed++;
            printf("ok   %s (%.2fs)\n", cases[i].name, secs);
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
