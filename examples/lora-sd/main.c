/* lora-sd: the command-line client of liblora_sd. Dispatches `lora-sd COMMAND ...` to the commands of
 * commands.h; every command uses only the public API. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "lora_sd.h"

static const struct lsd_cli_command *const commands[] = {LSD_CLI_COMMANDS};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

int lsd_cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "lora-sd%s%s: ", cmd ? " " : "", cmd ? cmd : "");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see 'lora-sd help%s%s')\n", cmd ? " " : "", cmd ? cmd : "");
    va_end(ap);
    return 2;
}

void lsd_cli_fail(const char *cmd, const char *what)
{
    const char *msg = lsd_last_error();
    int said = !what || !*what || strstr(msg, what); /* the library's messages name their file: once is enough */
    fprintf(stderr, "lora-sd %s: %s%s%s\n", cmd, said ? "" : what, said ? "" : ": ", msg);
}

static const struct lsd_cli_command *find_command(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(commands[i]->name, name) == 0)
            return commands[i];
    return NULL;
}

static void print_overview(FILE *out)
{
    fprintf(out, "usage: lora-sd COMMAND [ARGS...] [--threads N]\n"
                 "       lora-sd help COMMAND\n"
                 "       lora-sd --version\n\n"
                 "--threads N (any command): intra-op threads of the tensor backend (default: all cores)\n\n"
                 "commands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(out, "  %-10s %s\n", commands[i]->name, commands[i]->summary);
}

static int print_version(void)
{
    printf("lora-sd %s\n", lsd_version_string());
    lsd_runtime_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if (lsd_runtime_info_get(&info) != LSD_OK) {
        fprintf(stderr, "lora-sd: cannot query the runtime: %s\n", lsd_last_error());
        return 1;
    }
    printf("libtorch %s\nBLAS: %s\nthreads: %d\nCUDA devices: %d\nCPU: %s (native bf16: %s)\n", info.torch_version,
           info.blas[0] ? info.blas : "(unknown)", info.num_threads, info.cuda_device_count,
           info.cpu_model[0] ? info.cpu_model : "unknown", info.cpu_native_bf16 ? "yes" : "no");
    return 0;
}

static int help(int argc, char **argv)
{
    if (argc < 3) {
        print_overview(stdout);
        return 0;
    }
    if (argc > 3)
        return lsd_cli_usage_error("help", "expected one command name, got %d arguments", argc - 2);
    const struct lsd_cli_command *c = find_command(argv[2]);
    if (!c)
        return lsd_cli_usage_error(NULL, "unknown command '%s'", argv[2]);
    fputs(c->usage, stdout);
    return 0;
}

/* The library is silent by default; the CLI shows what needs the user's attention. */
static void log_to_stderr(lsd_log_level level, const char *message, void *user)
{
    (void)user;
    if (level >= LSD_LOG_WARN)
        fprintf(stderr, "lora-sd: %s: %s\n", level == LSD_LOG_WARN ? "warning" : "error", message);
}

/* --threads N (or --threads=N), which every command accepts: applied, then taken out of argv before the command
 * parses its own options. */
static int take_threads(const char *cmd, int *argc, char **argv)
{
    for (int i = 2; i < *argc && strcmp(argv[i], "--"); i++) {
        const char *v;
        int used;
        if (!strcmp(argv[i], "--threads")) {
            if (i + 1 >= *argc)
                return lsd_cli_usage_error(cmd, "option '--threads' needs a value");
            v = argv[i + 1];
            used = 2;
        } else if (!strncmp(argv[i], "--threads=", 10)) {
            v = argv[i] + 10;
            used = 1;
        } else {
            continue;
        }
        char *end = NULL;
        long n = strtol(v, &end, 10);
        if (!*v || *end || n < 1 || n > 4096)
            return lsd_cli_usage_error(cmd, "--threads expects an integer in [1, 4096], got '%s'", v);
        if (lsd_set_num_threads((int)n) != LSD_OK) {
            fprintf(stderr, "lora-sd: --threads %ld: %s\n", n, lsd_last_error());
            return 1;
        }
        memmove(argv + i, argv + i + used, (size_t)(*argc - i - used + 1) * sizeof *argv);
        *argc -= used;
        i--;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        print_overview(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "-V") == 0)
        return print_version();
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0)
        return help(argc, argv);
    const struct lsd_cli_command *c = find_command(cmd);
    if (!c)
        return lsd_cli_usage_error(NULL, "unknown %s '%s'", cmd[0] == '-' ? "option" : "command", cmd);
    lsd_set_log_callback(log_to_stderr, NULL);
    int rc = take_threads(cmd, &argc, argv);
    return rc ? rc : c->run(argc - 1, argv + 1);
}
