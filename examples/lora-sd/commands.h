/* The lora-sd subcommands. Each lives in its own file and defines one `const struct lsd_cli_command`.
 * To add a command: declare it below and add one line to LSD_CLI_COMMANDS. */
#ifndef LSD_CLI_COMMANDS_H
#define LSD_CLI_COMMANDS_H

struct lsd_cli_command {
    const char *name;
    const char *summary; /* one line, for `lora-sd help` */
    const char *usage;   /* the full text of `lora-sd help NAME`; starts with "usage: lora-sd NAME" */
    /* argv[0] is the command's name, so getopt-style parsing starts at argv[1]. Returns the exit status:
     * 0 success, 1 failure, 2 usage error (see lsd_cli_usage_error). */
    int (*run)(int argc, char **argv);
};

extern const struct lsd_cli_command lsd_cli_convert;
extern const struct lsd_cli_command lsd_cli_fuse;
extern const struct lsd_cli_command lsd_cli_generate;
extern const struct lsd_cli_command lsd_cli_inspect;
extern const struct lsd_cli_command lsd_cli_train;

/* The table `lora-sd` dispatches on, in the order `lora-sd help` lists them: one line per command. */
#define LSD_CLI_COMMANDS \
    &lsd_cli_generate, \
    &lsd_cli_inspect, \
    &lsd_cli_convert, \
    &lsd_cli_fuse, \
    &lsd_cli_train,

/* Prints "lora-sd CMD: <message>" and a hint to stderr; returns the usage-error exit status (2). */
int lsd_cli_usage_error(const char *cmd, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Prints "lora-sd CMD: <what>: <lsd_last_error()>" to stderr, without <what> when the message already names it
 * (or what is NULL). */
void lsd_cli_fail(const char *cmd, const char *what);

#endif
