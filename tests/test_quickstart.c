/* The README's main command, as written there: its train + generate part (everything after the build) runs in a
 * scratch directory that sees the repository's tests/ and examples/, with build/lora-sd standing for the CLI under
 * test; it must succeed and leave the LoRA and the image it names. */
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"

/* The Quick start's first sh block from "build/lora-sd train" on, continuation lines joined. */
static char *quickstart_command(void)
{
    char *readme = read_file("README.md", NULL);
    const char *qs = readme ? strstr(readme, "## Quick start") : NULL;
    const char *block = qs ? strstr(qs, "```sh\n") : NULL;
    const char *end = block ? strstr(block + 6, "```") : NULL;
    const char *from = block ? strstr(block, "build/lora-sd train") : NULL;
    CHECK(from && end && from < end, "README.md: a Quick start sh block with build/lora-sd train");
    char *cmd = from && end && from < end ? malloc((size_t)(end - from) + 1) : NULL;
    size_t n = 0;
    for (const char *p = from; cmd && p < end; p++) {
        if (p[0] == '\\' && p[1] == '\n') {
            for (p += 2; *p == ' '; p++) {
            }
            cmd[n++] = ' ';
            p--;
        } else if (*p != '\n') {
            cmd[n++] = *p;
        }
    }
    if (cmd)
        cmd[n] = '\0';
    free(readme);
    return cmd;
}

/* The value after `flag ` in cmd, into out. */
static int arg_of(const char *cmd, const char *flag, char *out, size_t size)
{
    char spaced[64];
    snprintf(spaced, sizeof spaced, " %s ", flag);
    const char *p = strstr(cmd, spaced);
    if (!p)
        return 0;
    p += strlen(spaced);
    size_t n = strcspn(p, " ");
    snprintf(out, size, "%.*s", (int)(n < size ? n : size - 1), p);
    return 1;
}

/* cmd with every "build/lora-sd" replaced by cli. */
static char *with_cli(const char *cmd, const char *cli)
{
    size_t cap = strlen(cmd) * 2 + 4 * strlen(cli) + 64, n = 0;
    char *out = malloc(cap);
    for (const char *p = cmd; out && *p && n + strlen(cli) + 2 < cap;) {
        if (!strncmp(p, "build/lora-sd", 13)) {
            n += (size_t)snprintf(out + n, cap - n, "%s", cli);
            p += 13;
        } else {
            out[n++] = *p++;
        }
    }
    if (out)
        out[n] = '\0';
    return out;
}

TEST(quickstart_readme_train_generate)
{
    char *cmd = quickstart_command();
    char lora[256], image[256], cli[PATH_MAX], repo[PATH_MAX], link[700], target[PATH_MAX + 32];
    if (!cmd)
        return;
    CHECK(strstr(cmd, "build/lora-sd generate") && strstr(cmd, "--lora"), "the command trains, then generates");
    CHECK(arg_of(cmd, "--lora", lora, sizeof lora) && arg_of(cmd, "--output", image, sizeof image));
    const char *bin = getenv("LSD_CLI") ? getenv("LSD_CLI") : "build/lora-sd";
    const char *dir = temp_dir();
    if (!realpath(bin, cli) || !getcwd(repo, sizeof repo)) {
        CHECK(0, "the CLI %s and the working directory resolve", bin);
        free(cmd);
        return;
    }
    static const char *const shared[] = {"tests", "examples"};
    for (int i = 0; i < 2; i++) {
        snprintf(link, sizeof link, "%s/%s", dir, shared[i]);
        snprintf(target, sizeof target, "%s/%s", repo, shared[i]);
        CHECK(symlink(target, link) == 0, "symlink %s", link);
    }
    char *run = with_cli(cmd, cli);
    size_t len = strlen(run) + strlen(dir) + 64;
    char *shell = malloc(len);
    snprintf(shell, len, "cd %s && { %s ; } >%s/log 2>&1", dir, run, dir);
    int rc = system(shell);
    CHECK(rc >= 0 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "README command exited %d: %s",
          rc >= 0 && WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, run);
    if (test_failed_now()) {
        snprintf(link, sizeof link, "%s/log", dir);
        char *log = read_file(link, NULL);
        fprintf(stderr, "%s\n", log ? log : "");
        free(log);
    }
    char path[PATH_MAX + 300];
    snprintf(path, sizeof path, "%s/%s", dir, image);
    lsd_image img = {sizeof img, 0, 0, 0, NULL};
    CHECK_OK(lsd_image_load(path, &img));
    CHECK(img.width > 0 && img.height > 0);
    lsd_image_release(&img);
    snprintf(path, sizeof path, "%s/%s", dir, lora);
    lsd_model *m = NULL;
    lsd_adapter_set *set = NULL;
    lsd_load_report rep = {.struct_size = sizeof rep};
    if (CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)) && CHECK_OK(lsd_adapter_set_new(m, &set)))
        CHECK_OK(lsd_adapter_set_load(set, "readme", path, NULL, &rep));
    CHECK(rep.applied_modules > 0 && rep.unmatched_keys == 0, "the trained LoRA applies: %d modules",
          rep.applied_modules);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
    free(shell);
    free(run);
    free(cmd);
}
