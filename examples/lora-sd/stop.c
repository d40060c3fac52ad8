/* Safe stops: the first SIGINT or SIGTERM only raises a flag; the training loop sees it after the step under way,
 * saves a checkpoint and the LoRA and exits 128 + the signal (130, 143). A second one exits at once: every file
 * the library and the CLI write is a temp file renamed into place, so what is left is either whole or a temp file
 * (*.tmp.XXXXXX, checkpoint-<n>.tmp-<pid>/) that no reader takes for a result. SA_RESTART keeps the library's
 * reads and writes from failing with EINTR while the flag is up. */
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "train_log.h"

static volatile sig_atomic_t requested;

static void on_signal(int sig)
{
    if (requested) {
        static const char msg[] = "\nlora-sd train: second signal: exiting now\n";
        (void)!write(STDERR_FILENO, msg, sizeof msg - 1);
        _exit(128 + sig);
    }
    requested = sig;
    static const char msg[] = "\nlora-sd train: stopping after this step, then saving a checkpoint and the LoRA "
                              "(signal again to exit at once)\n";
    (void)!write(STDERR_FILENO, msg, sizeof msg - 1);
}

void stop_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

int stop_requested(void)
{
    return requested;
}
