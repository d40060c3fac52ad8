#include "io/atomic.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"

/* write(2) calls left before the injected failure; 0 = no injection. Atomic because files may be written from
 * several threads at once even while a test arms the hook. */
static atomic_int fail_countdown;

void lsdi_atomic_fail_after(int n_writes) { atomic_store(&fail_countdown, n_writes > 0 ? n_writes : 0); }

static ssize_t write_once(int fd, const void *p, size_t n)
{
    int left = atomic_load(&fail_countdown);
    while (left > 0 && !atomic_compare_exchange_weak(&fail_countdown, &left, left - 1)) {
    }
    if (left == 1) {
        errno = ENOSPC;
        return -1;
    }
    return write(fd, p, n);
}

/* The temp file starts as mkstemp's 0600; the result should look like any other file the user writes: keep the
 * mode of the file being replaced, else 0666 minus the umask (read from /proc: umask(2) would race threads). */
static mode_t target_mode(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0)
        return st.st_mode & 07777;
    mode_t mask = 022;
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        char line[256];
        unsigned m;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "Umask: %o", &m) == 1) {
                mask = (mode_t)m;
                break;
            }
        fclose(f);
    }
    return 0666 & ~mask;
}

static void release(lsdi_atomic_file *af)
{
    if (af->fd >= 0)
        close(af->fd);
    if (af->tmp_path)
        unlink(af->tmp_path);
    free(af->path);
    free(af->tmp_path);
    af->fd = -1;
    af->path = NULL;
    af->tmp_path = NULL;
}

lsd_status lsdi_atomic_begin(lsdi_atomic_file *af, const char *path)
{
    af->fd = -1;
    af->path = NULL;
    af->tmp_path = NULL;
    af->failed = 0;
    if (!path || !path[0])
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "atomic write: empty output path");
    size_t len = strlen(path);
    static const char suffix[] = ".tmp.XXXXXX";
    af->path = strdup(path);
    af->tmp_path = malloc(len + sizeof suffix);
    if (!af->path || !af->tmp_path) {
        release(af);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: out of memory starting the write", path);
    }
    memcpy(af->tmp_path, path, len);
    memcpy(af->tmp_path + len, suffix, sizeof suffix);
    af->fd = mkstemp(af->tmp_path);
    if (af->fd < 0) {
        int e = errno;
        free(af->tmp_path);
        af->tmp_path = NULL; /* mkstemp created nothing to unlink */
        release(af);
        return lsdi_error(LSD_ERR_IO, "%s: cannot create a temporary file beside it: %s", path, strerror(e));
    }
    if (fchmod(af->fd, target_mode(path)) != 0) {
        int e = errno;
        release(af);
        return lsdi_error(LSD_ERR_IO, "%s: cannot set the mode of the temporary file: %s", path, strerror(e));
    }
    return LSD_OK;
}

lsd_status lsdi_atomic_write(lsdi_atomic_file *af, const void *data, size_t n)
{
    if (af->failed || af->fd < 0)
        return lsdi_error(LSD_ERR_IO, "%s: write after an earlier failure", af->path ? af->path : "(closed file)");
    const unsigned char *p = data;
    while (n > 0) {
        /* Linux moves at most ~2 GB per call; smaller chunks keep every call within ssize_t everywhere. */
        size_t chunk = n < ((size_t)1 << 30) ? n : ((size_t)1 << 30);
        ssize_t w = write_once(af->fd, p, chunk);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int e = w < 0 ? errno : ENOSPC; /* a zero-byte write of a non-empty buffer makes no progress */
            af->failed = 1;
            return lsdi_error(LSD_ERR_IO, "%s: write failed: %s", af->path, strerror(e));
        }
        p += w;
        n -= (size_t)w;
    }
    return LSD_OK;
}

/* Makes the rename itself durable. The new file is already in place by then, so a failure here is only
 * reported in the log: returning an error would claim the old file was kept when it was not. */
static void sync_parent_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir)
        return;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0)
        lsdi_log(LSD_LOG_WARN, "%s: could not sync directory %s: %s", path, dir, strerror(errno));
    if (fd >= 0)
        close(fd);
    free(dir);
}

lsd_status lsdi_atomic_commit(lsdi_atomic_file *af)
{
    if (!af->path || af->fd < 0) {
        release(af);
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "atomic write: commit without a successful begin");
    }
    if (af->failed) {
        lsd_status st = lsdi_error(LSD_ERR_IO, "%s: not replaced: an earlier write failed", af->path);
        release(af);
        return st;
    }
    const char *what = NULL;
    if (fsync(af->fd) != 0)
        what = "fsync";
    else {
        int fd = af->fd;
        af->fd = -1;
        /* Network filesystems report deferred write errors at close. */
        if (close(fd) != 0)
            what = "close";
        else if (rename(af->tmp_path, af->path) != 0)
            what = "rename";
    }
    if (what) {
        lsd_status st = lsdi_error(LSD_ERR_IO, "%s: %s of the temporary file %s failed: %s", af->path, what,
                                   af->tmp_path, strerror(errno));
        release(af);
        return st;
    }
    free(af->tmp_path);
    af->tmp_path = NULL; /* renamed: nothing left to unlink */
    sync_parent_dir(af->path);
    release(af);
    return LSD_OK;
}

void lsdi_atomic_abort(lsdi_atomic_file *af)
{
    if (af)
        release(af);
}
