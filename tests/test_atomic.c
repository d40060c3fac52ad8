#include <dirent.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "io/atomic.h"
#include "io/safetensors.h"
#include "test.h"

/* Number of entries in dir other than . and .. (temp files left behind would show up here). */
static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

static int same_file(const char *path, const void *want, size_t n)
{
    size_t len = 0;
    char *got = read_file(path, &len);
    int same = got && len == n && memcmp(got, want, n) == 0;
    free(got);
    return same;
}

TEST(atomic_replaces_file)
{
    const char *dir = temp_dir();
    char path[600];
    snprintf(path, sizeof path, "%s/out.bin", dir);
    lsdi_atomic_file af;
    CHECK_OK(lsdi_atomic_begin(&af, path));
    CHECK_OK(lsdi_atomic_write(&af, "hello ", 6));
    CHECK_OK(lsdi_atomic_write(&af, "", 0));
    CHECK_OK(lsdi_atomic_write(&af, "world", 5));
    CHECK_OK(lsdi_atomic_commit(&af));
    CHECK(af.path == NULL && af.tmp_path == NULL, "commit frees the strings");
    CHECK(same_file(path, "hello world", 11));
    CHECK(count_entries(dir) == 1, "%d entries", count_entries(dir));

    /* Replacing keeps the old file's permissions rather than mkstemp's 0600. */
    CHECK(chmod(path, 0640) == 0);
    CHECK_OK(lsdi_atomic_begin(&af, path));
    CHECK_OK(lsdi_atomic_write(&af, "new", 3));
    CHECK_OK(lsdi_atomic_commit(&af));
    CHECK(same_file(path, "new", 3));
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 07777) == 0640, "mode %o", (unsigned)(st.st_mode & 07777));
    CHECK(count_entries(dir) == 1);
}

TEST(atomic_abort_removes_temp)
{
    const char *dir = temp_dir();
    char path[600];
    snprintf(path, sizeof path, "%s/out.bin", dir);
    CHECK(write_file(path, "old", 3));
    lsdi_atomic_file af;
    CHECK_OK(lsdi_atomic_begin(&af, path));
    CHECK(af.tmp_path && strncmp(af.tmp_path, path, strlen(path)) == 0 && strstr(af.tmp_path, ".tmp."),
          "temp %s", af.tmp_path ? af.tmp_path : "(null)");
    CHECK_OK(lsdi_atomic_write(&af, "partial", 7));
    CHECK(count_entries(dir) == 2);
    lsdi_atomic_abort(&af);
    lsdi_atomic_abort(&af); /* idempotent */
    CHECK(same_file(path, "old", 3));
    CHECK(count_entries(dir) == 1, "%d entries", count_entries(dir));
}

TEST(atomic_injected_failure_keeps_old_file)
{
    const char *dir = temp_dir();
    char path[600];
    snprintf(path, sizeof path, "%s/out.bin", dir);
    CHECK(write_file(path, "previous", 8));
    lsdi_atomic_file af;
    CHECK_OK(lsdi_atomic_begin(&af, path));
    lsdi_atomic_fail_after(2);
    CHECK_OK(lsdi_atomic_write(&af, "one", 3));
    CHECK_STATUS(lsdi_atomic_write(&af, "two", 3), LSD_ERR_IO, "No space left on device");
    CHECK(strstr(lsd_last_error(), path) != NULL, "message lacks the path: %s", lsd_last_error());
    /* A write after a failure, and the commit, refuse too: the caller may not check every write. */
    CHECK_STATUS(lsdi_atomic_write(&af, "three", 5), LSD_ERR_IO, path);
    CHECK_STATUS(lsdi_atomic_commit(&af), LSD_ERR_IO, "not replaced");
    lsdi_atomic_abort(&af); /* safe after a failed commit */
    CHECK(same_file(path, "previous", 8));
    CHECK(count_entries(dir) == 1, "%d entries", count_entries(dir));
    lsdi_atomic_fail_after(0);
}

TEST(atomic_safetensors_fail_at_every_write)
{
    const char *dir = temp_dir();
    char path[600];
    snprintf(path, sizeof path, "%s/lora.safetensors", dir);
    float a[4] = {1, 2, 3, 4}, b[2] = {5, 6}, alpha = 4;
    int64_t sa[] = {2, 2}, sb[] = {2};
    const lsdi_st_entry es[] = {
        {"a", LSDI_ST_F32, 2, sa, a}, {"a.alpha", LSDI_ST_F32, 0, NULL, &alpha}, {"b", LSDI_ST_F32, 1, sb, b}};
    const char *k[] = {"ss_network_dim"}, *v[] = {"2"};
    CHECK_OK(lsdi_st_write(path, es, 2, NULL, NULL, 0));
    size_t old_len = 0;
    char *old = read_file(path, &old_len);
    if (!old)
        return;
    int failures = 0;
    for (int n = 1; n < 100; n++) {
        lsdi_atomic_fail_after(n);
        lsd_status st = lsdi_st_write(path, es, 3, k, v, 1);
        lsdi_atomic_fail_after(0);
        if (st == LSD_OK)
            break;
        failures++;
        CHECK_STATUS(st, LSD_ERR_IO, "No space left on device");
        CHECK(strstr(lsd_last_error(), path) != NULL, "write %d: message lacks the path: %s", n, lsd_last_error());
        CHECK(same_file(path, old, old_len), "write %d: the previous file changed", n);
        CHECK(count_entries(dir) == 1, "write %d: %d entries (temp file left)", n, count_entries(dir));
    }
    /* length, header and one write per non-empty tensor */
    CHECK(failures == 5, "%d injected failures before success", failures);
    free(old);
    lsdi_st_file *f = NULL;
    if (CHECK_OK(lsdi_st_open(path, &f))) {
        CHECK(lsdi_st_count(f) == 3 && lsdi_st_metadata_get(f, "ss_network_dim") != NULL);
        lsdi_st_close(f);
    }
}

TEST(atomic_failure_without_previous_file)
{
    const char *dir = temp_dir();
    char path[600];
    snprintf(path, sizeof path, "%s/new.safetensors", dir);
    float x = 1;
    const lsdi_st_entry e = {"x", LSDI_ST_F32, 0, NULL, &x};
    lsdi_atomic_fail_after(1);
    CHECK_STATUS(lsdi_st_write(path, &e, 1, NULL, NULL, 0), LSD_ERR_IO, path);
    lsdi_atomic_fail_after(0);
    CHECK(count_entries(dir) == 0, "%d entries", count_entries(dir));
}

TEST(atomic_bad_directory)
{
    lsdi_atomic_file af;
    CHECK_STATUS(lsdi_atomic_begin(&af, "/nonexistent-dir/x.bin"), LSD_ERR_IO,
                 "/nonexistent-dir/x.bin: cannot create a temporary file beside it: No such file or directory");
    CHECK(af.path == NULL && af.tmp_path == NULL && af.fd < 0);
    CHECK_STATUS(lsdi_atomic_begin(&af, ""), LSD_ERR_INVALID_ARGUMENT, "empty output path");
}
