#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/hf_cache.h"
#include "test.h"

#define HASH1 "0123456789abcdef0123456789abcdef01234567"
#define HASH2 "fedcba9876543210fedcba9876543210fedcba98"

static void mkdirs(const char *root, const char *rel)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    for (char *p = path + strlen(root) + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(path, 0700);
            *p = '/';
        }
    }
    mkdir(path, 0700);
}

static void put(const char *root, const char *rel, const char *text)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    CHECK(write_file(path, text, strlen(text)), "writing %s", path);
}

/* Environment variables the resolver reads, saved so other tests see them unchanged. */
static const char *const env_names[] = {"HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HOME"};
static char *saved_env[4];

static void env_save(void)
{
    for (int i = 0; i < 4; i++) {
        const char *v = getenv(env_names[i]);
        saved_env[i] = v ? strdup(v) : NULL;
        unsetenv(env_names[i]);
    }
}

static void env_restore(void)
{
    for (int i = 0; i < 4; i++) {
        if (saved_env[i])
            setenv(env_names[i], saved_env[i], 1);
        else
            unsetenv(env_names[i]);
        free(saved_env[i]);
        saved_env[i] = NULL;
    }
}

static void check_resolves(const char *id, const char *want)
{
    char out[1024] = "";
    if (CHECK_OK(lsdi_hf_cache_resolve(id, out, sizeof out)))
        CHECK(strcmp(out, want) == 0, "%s -> %s, want %s", id, out, want);
}

/* <root>/hub/models--org--model with refs/main -> HASH1, refs/v1 -> HASH2, both snapshots present. */
static const char *make_cache(void)
{
    const char *home = temp_dir();
    mkdirs(home, "hub/models--org--model/refs");
    mkdirs(home, "hub/models--org--model/snapshots/" HASH1 "/unet");
    mkdirs(home, "hub/models--org--model/snapshots/" HASH2);
    put(home, "hub/models--org--model/refs/main", HASH1 "\n");
    put(home, "hub/models--org--model/refs/v1", "  " HASH2 "\r\n");
    return home;
}

TEST(hf_cache_refs_and_revisions)
{
    env_save();
    const char *home = make_cache();
    setenv("HF_HOME", home, 1);
    char want1[1024], want2[1024];
    snprintf(want1, sizeof want1, "%s/hub/models--org--model/snapshots/" HASH1, home);
    snprintf(want2, sizeof want2, "%s/hub/models--org--model/snapshots/" HASH2, home);
    check_resolves("org/model", want1);
    check_resolves("org/model@main", want1);
    check_resolves("org/model@v1", want2);
    check_resolves("org/model@" HASH2, want2);

    char out[1024];
    CHECK_STATUS(lsdi_hf_cache_resolve("org/model@v2", out, sizeof out), LSD_ERR_NOT_FOUND, "refs/v2");
    CHECK(strstr(lsd_last_error(), "org/model@v2") != NULL, "%s", lsd_last_error());
    CHECK_STATUS(lsdi_hf_cache_resolve("org/missing", out, sizeof out), LSD_ERR_NOT_FOUND, "models--org--missing");
    CHECK_STATUS(lsdi_hf_cache_resolve("org/model", out, 10), LSD_ERR_INVALID_ARGUMENT, "10 bytes");

    /* a ref naming a snapshot that is not there */
    put(home, "hub/models--org--model/refs/main", "0000000000000000000000000000000000000000");
    CHECK_STATUS(lsdi_hf_cache_resolve("org/model", out, sizeof out), LSD_ERR_NOT_FOUND,
                 "snapshots/0000000000000000000000000000000000000000 does not exist");
    put(home, "hub/models--org--model/refs/main", "../../../etc");
    CHECK_STATUS(lsdi_hf_cache_resolve("org/model", out, sizeof out), LSD_ERR_FORMAT, "refs/main");
    env_restore();
}

TEST(hf_cache_single_snapshot_without_refs)
{
    env_save();
    const char *home = temp_dir();
    mkdirs(home, "hub/models--org--solo/snapshots/" HASH2 "/vae");
    setenv("HF_HOME", home, 1);
    char want[1024];
    snprintf(want, sizeof want, "%s/hub/models--org--solo/snapshots/" HASH2, home);
    check_resolves("org/solo", want);

    /* two snapshots and no ref: ambiguous */
    mkdirs(home, "hub/models--org--solo/snapshots/" HASH1);
    char out[1024];
    CHECK_STATUS(lsdi_hf_cache_resolve("org/solo", out, sizeof out), LSD_ERR_NOT_FOUND, "holds 2 snapshots");
    CHECK(strstr(lsd_last_error(), "refs/main") != NULL, "%s", lsd_last_error());
    env_restore();
}

TEST(hf_cache_root_precedence)
{
    env_save();
    const char *a = make_cache(), *b = make_cache();
    char want[1024], hub[1024], xdg[1024];
    snprintf(hub, sizeof hub, "%s/hub", a);
    snprintf(want, sizeof want, "%s/models--org--model/snapshots/" HASH1, hub);
    setenv("HF_HUB_CACHE", hub, 1);
    setenv("HF_HOME", b, 1);
    check_resolves("org/model", want); /* HF_HUB_CACHE wins over HF_HOME */

    unsetenv("HF_HUB_CACHE");
    unsetenv("HF_HOME");
    const char *x = temp_dir();
    mkdirs(x, "huggingface");
    snprintf(xdg, sizeof xdg, "%s/huggingface/hub", x);
    CHECK(rename(hub, xdg) == 0);
    setenv("XDG_CACHE_HOME", x, 1);
    snprintf(want, sizeof want, "%s/models--org--model/snapshots/" HASH1, xdg);
    check_resolves("org/model", want);

    unsetenv("XDG_CACHE_HOME");
    setenv("HOME", b, 1);
    char out[1024];
    CHECK_STATUS(lsdi_hf_cache_resolve("org/model", out, sizeof out), LSD_ERR_NOT_FOUND,
                 "/.cache/huggingface/hub/models--org--model");
    env_restore();
}

TEST(hf_cache_bad_ids)
{
    char out[256];
    const char *bad[] = {"model", "/org/model", "org/model/x", "org/..", "./org", "~/org", "org/", "/model",
                         "org/mo del", "org/model@", "org/model@../x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_STATUS(lsdi_hf_cache_resolve(bad[i], out, sizeof out), LSD_ERR_INVALID_ARGUMENT, bad[i]);
}

TEST(hf_cache_looks_like_hub_id)
{
    CHECK(lsdi_looks_like_hub_id("CompVis/stable-diffusion-v1-4"));
    CHECK(lsdi_looks_like_hub_id("org/model@v1.0"));
    CHECK(!lsdi_looks_like_hub_id("model"));
    CHECK(!lsdi_looks_like_hub_id("/abs/path"));
    CHECK(!lsdi_looks_like_hub_id("./org/model"));
    CHECK(!lsdi_looks_like_hub_id(".org/model"));
    CHECK(!lsdi_looks_like_hub_id("~/model"));
    CHECK(!lsdi_looks_like_hub_id("a/b/c"));
    CHECK(!lsdi_looks_like_hub_id(NULL));
    /* an existing relative path is a path, not an id */
    char cwd[1024];
    const char *dir = temp_dir();
    mkdirs(dir, "org/model");
    int moved = getcwd(cwd, sizeof cwd) != NULL && chdir(dir) == 0;
    CHECK(moved, "chdir %s", dir);
    if (moved) {
        CHECK(!lsdi_looks_like_hub_id("org/model"));
        CHECK(lsdi_looks_like_hub_id("org/other"));
        CHECK(chdir(cwd) == 0);
    }
}
