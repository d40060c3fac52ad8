/* lora-sd train --nproc_per_node N: torchrun's standalone mode on one machine. The workers are this program again
 * (/proc/self/exe, a fresh process each: no fork of a process whose libtorch threads already ran), with torchrun's
 * environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), in a process group of
 * their own so that a terminal's Ctrl-C reaches them once, through this launcher. */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lora_sd.h"
#include "train_log.h"

extern char **environ;

static volatile sig_atomic_t forwarded_sig, pending_sig;

static void on_signal(int sig)
{
    pending_sig = sig;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A port nothing listens on now, for the rendezvous (torchrun's standalone mode picks one too). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
    socklen_t len = sizeof a;
    int port = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static int is_dist_var(const char *kv)
{
    static const char *const names[] = {"RANK=", "LOCAL_RANK=", "WORLD_SIZE=", "LOCAL_WORLD_SIZE=", "MASTER_ADDR=",
                                        "MASTER_PORT=", "GROUP_RANK=", "NODE_RANK="};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strncmp(kv, names[i], strlen(names[i])))
            return 1;
    return 0;
}

int train_launch(int nproc, const char *master_addr, int master_port, double grace, int argc, char **argv)
{
    if (!master_port && !(master_port = free_port())) {
        fprintf(stderr, "lora-sd train: no free port for the rendezvous: %s\n", strerror(errno));
        return 1;
    }
    /* The threads (--threads, default all cores) are shared out: N workers of all cores each would fight. */
    lsd_runtime_info info = {.struct_size = sizeof info};
    int threads = lsd_runtime_info_get(&info) == LSD_OK ? info.num_threads / nproc : 1;
    threads = threads > 0 ? threads : 1;
    char thr[16];
    snprintf(thr, sizeof thr, "%d", threads);
    /* argv: "train" and its arguments without --nproc_per_node */
    char **cargv = calloc((size_t)argc + 5, sizeof *cargv);
    size_t n_env = 0;
    while (environ[n_env])
        n_env++;
    char **env = calloc(n_env + 8, sizeof *env);
    pid_t *pid = calloc((size_t)nproc, sizeof *pid);
    if (!cargv || !env || !pid) {
        free(cargv);
        free(env);
        free(pid);
        fprintf(stderr, "lora-sd train: out of memory\n");
        return 1;
    }
    int c = 0;
    cargv[c++] = "lora-sd";
    for (int i = 0; i < argc; i++)
        cargv[c++] = argv[i];
    cargv[c++] = "--threads";
    cargv[c++] = thr;
    cargv[c] = NULL;
    size_t k = 0;
    for (size_t i = 0; i < n_env; i++)
        if (!is_dist_var(environ[i]))
            env[k++] = environ[i];
    char vrank[32], vlocal[32], vworld[32], vlworld[40], vaddr[300], vport[32];
    snprintf(vworld, sizeof vworld, "WORLD_SIZE=%d", nproc);
    snprintf(vlworld, sizeof vlworld, "LOCAL_WORLD_SIZE=%d", nproc);
    snprintf(vaddr, sizeof vaddr, "MASTER_ADDR=%s", master_addr);
    snprintf(vport, sizeof vport, "MASTER_PORT=%d", master_port);
    env[k + 0] = vrank;
    env[k + 1] = vlocal;
    env[k + 2] = vworld;
    env[k + 3] = vlworld;
    env[k + 4] = vaddr;
    env[k + 5] = vport;
    env[k + 6] = NULL;

    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    printf("lora-sd train: %d workers, rendezvous at %s:%d, %d threads each\n", nproc, master_addr, master_port,
           threads);
    fflush(stdout);
    pid_t group = 0;
    int started = 0, rc = 0;
    for (int r = 0; r < nproc; r++) {
        snprintf(vrank, sizeof vrank, "RANK=%d", r);
        snprintf(vlocal, sizeof vlocal, "LOCAL_RANK=%d", r);
        posix_spawnattr_t at;
        posix_spawnattr_init(&at);
        posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP);
        posix_spawnattr_setpgroup(&at, group);
        int e = posix_spawn(&pid[r], "/proc/self/exe", NULL, &at, cargv, env);
        posix_spawnattr_destroy(&at);
        if (e) {
            fprintf(stderr, "lora-sd train: cannot start worker %d: %s\n", r, strerror(e));
            rc = 1;
            break;
        }
        if (!group)
            group = pid[r];
        started++;
    }
    if (rc && group)
        kill(-group, SIGTERM);
    /* Waits for every worker. The first failure gives the others `grace` seconds to notice it (a dead rank is
     * noticed at once, a hung one after the group's timeout) before they are killed. */
    int left = started, first_bad = -1;
    double kill_at = 0;
    while (left > 0) {
        if (pending_sig) {
            forwarded_sig = pending_sig;
            pending_sig = 0;
            kill(-group, forwarded_sig);
        }
        int ws = 0;
        pid_t p = waitpid(-1, &ws, WNOHANG);
        if (p > 0) {
            int r = 0;
            while (r < started && pid[r] != p)
                r++;
            if (r == started)
                continue;
            left--;
            int st = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
            if (st && first_bad < 0) {
                first_bad = r;
                rc = st;
                kill_at = now() + grace;
                if (!forwarded_sig)
                    fprintf(stderr, "lora-sd train: worker %d exited with status %d\n", r, st);
            }
            continue;
        }
        if (p < 0 && errno != EINTR)
            break;
        if (first_bad >= 0 && now() > kill_at) {
            fprintf(stderr, "lora-sd train: %d worker(s) still running %.0f s after worker %d failed: killed\n",
                    left, grace, first_bad);
            kill(-group, SIGKILL);
            kill_at = now() + 1e9;
        }
        usleep(50000);
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    free(cargv);
    free(env);
    free(pid);
    return rc;
}
