/* The generate command's prompt tags (examples/lora-sd/extra_networks.c) and --lora-dir lookup (lora_dir.c), against
 * what A1111's modules/extra_networks.py (regex <(\w+):([^>]+)>, items split on ':', one '=' makes a named item) and
 * extensions-builtin/Lora/extra_networks_lora.py (te = positional 1 or te=, default 1; unet = positional 2 or
 * unet=, default te) do with the same prompts. */
#include <stdlib.h>
#include <sys/stat.h>

#include "../examples/lora-sd/extra_networks.h"
#include "../examples/lora-sd/lora_dir.h"
#include "test.h"

/* Parses prompt, which must succeed, and checks the remaining text. */
static int parse_ok(const char *prompt, const char *text, lsd_cli_extra_networks *en)
{
    char err[512] = "";
    int rc = lsd_cli_extra_networks_parse(prompt, en, err, sizeof err);
    CHECK(rc == 0, "'%s': %s", prompt, err);
    CHECK(rc != 0 || !strcmp(en->text, text), "'%s' -> '%s', want '%s'", prompt, en->text, text);
    return rc == 0;
}

static void check_lora(const lsd_cli_extra_networks *en, int i, const char *name, float te, float unet)
{
    CHECK(i < en->n_loras, "only %d LoRAs", en->n_loras);
    if (i >= en->n_loras)
        return;
    const lsd_cli_lora_tag *l = &en->loras[i];
    CHECK(!strcmp(l->name, name) && l->te_weight == te && l->unet_weight == unet, "#%d: %s te %g unet %g", i, l->name,
          (double)l->te_weight, (double)l->unet_weight);
}

TEST(extra_networks_weights_and_removal)
{
    lsd_cli_extra_networks en;
    if (parse_ok("a cat <lora:foo:0.5> on a mat, <lora:bar>", "a cat  on a mat, ", &en)) {
        CHECK(en.n_loras == 2 && !en.notes[0], "%d, %s", en.n_loras, en.notes);
        check_lora(&en, 0, "foo", 0.5f, 0.5f);
        check_lora(&en, 1, "bar", 1.0f, 1.0f);
    }
    lsd_cli_extra_networks_free(&en);
    /* A1111's order: text encoder first, then UNet */
    if (parse_ok("<lora:foo:0.25:0.75>(x)", "(x)", &en))
        check_lora(&en, 0, "foo", 0.25f, 0.75f);
    lsd_cli_extra_networks_free(&en);
    /* named items override positional ones; unet defaults to te */
    if (parse_ok("<lora:a:te=0.25:unet=0.5><lora:b:1:unet=0.5><lora:c:0.5:0.75:te=0.125><lora:d:te=2>", "", &en)) {
        CHECK(en.n_loras == 4);
        check_lora(&en, 0, "a", 0.25f, 0.5f);
        check_lora(&en, 1, "b", 1.0f, 0.5f);
        check_lora(&en, 2, "c", 0.125f, 0.75f);
        check_lora(&en, 3, "d", 2.0f, 2.0f);
    }
    lsd_cli_extra_networks_free(&en);
    /* float() takes blanks around a number; lyco is A1111's alias; names are taken as written */
    if (parse_ok("<lyco:Ünï_ç:  -0.5 >\nnext line", "\nnext line", &en))
        check_lora(&en, 0, "Ünï_ç", -0.5f, -0.5f);
    lsd_cli_extra_networks_free(&en);
}

TEST(extra_networks_other_tags_and_non_tags)
{
    lsd_cli_extra_networks en;
    /* not tags: no word, no ':', nothing after ':', no '>' */
    const char *plain = "a <b> c <:x> <lora:> x < y : z> <lora:foo";
    if (parse_ok(plain, plain, &en))
        CHECK(en.n_loras == 0 && !en.notes[0]);
    lsd_cli_extra_networks_free(&en);
    /* other kinds are removed with a note; unknown named arguments too */
    if (parse_ok("<hypernet:x:1> cat <lora:foo:0.5:lbw=OUTD>", " cat ", &en)) {
        check_lora(&en, 0, "foo", 0.5f, 0.5f);
        CHECK(!strcmp(en.notes, "<hypernet:x:1>: ignored (hypernet is not supported; only lora is)\n"
                                "<lora:foo:0.5:lbw=OUTD>: argument 'lbw' ignored\n"),
              "%s", en.notes);
    }
    lsd_cli_extra_networks_free(&en);
    /* the regex's reading of a nested '<': one tag of kind "a" */
    if (parse_ok("<a:<lora:x:1>!", "!", &en))
        CHECK(en.n_loras == 0 && strstr(en.notes, "<a:<lora:x:1>: ignored"), "%s", en.notes);
    lsd_cli_extra_networks_free(&en);
}

static void parse_bad(const char *prompt, const char *want)
{
    lsd_cli_extra_networks en;
    char err[512] = "";
    CHECK(lsd_cli_extra_networks_parse(prompt, &en, err, sizeof err) == -1 && !strcmp(err, want), "'%s': '%s'", prompt,
          err);
    lsd_cli_extra_networks_free(&en);
}

TEST(extra_networks_errors)
{
    parse_bad("x <lora:foo:abc>", "<lora:foo:abc>: text-encoder weight 'abc' is not a finite number");
    parse_bad("<lora:foo:1:inf>", "<lora:foo:1:inf>: UNet weight 'inf' is not a finite number");
    parse_bad("<lora:foo:>", "<lora:foo:>: text-encoder weight '' is not a finite number");
    parse_bad("<lora:foo:te=x>", "<lora:foo:te=x>: text-encoder weight 'x' is not a finite number");
    parse_bad("<lora::1>", "<lora::1>: no LoRA name");
    parse_bad("<lora:te=1>", "<lora:te=1>: no LoRA name");
    parse_bad("<lora:foo:1:1:8>", "<lora:foo:1:1:8>: dyn (a rank cut) is not supported");
    parse_bad("<lora:foo:dyn=8>", "<lora:foo:dyn=8>: dyn (a rank cut) is not supported");
    char many[1024] = "";
    for (int i = 0; i <= LSD_CLI_MAX_TAGS; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "<lora:l%d>", i);
    parse_bad(many, "<lora:l16>: at most 16 LoRAs in a prompt");
}

static void touch(const char *dir, const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    CHECK(write_file(path, "x", 1), "%s", path);
}

TEST(lora_dir_lookup_order)
{
    char dir[1024], sub[1100], path[4096];
    snprintf(dir, sizeof dir, "%s/Lora", temp_dir());
    snprintf(sub, sizeof sub, "%s/sub", dir);
    CHECK(mkdir(dir, 0755) == 0 && mkdir(sub, 0755) == 0);
    touch(dir, "a.pt");
    touch(dir, "a.safetensors");
    touch(dir, "b.ckpt");
    touch(dir, "b.pt");
    touch(dir, "notes.txt");
    touch(sub, "a.safetensors");
    touch(sub, "c.safetensors");
    char want[1200];
    /* .safetensors before .pt before .ckpt; the folder itself before its subfolders */
    CHECK(lsd_cli_find_lora(dir, "a", path, sizeof path) == 0 && !strcmp(path, (snprintf(want, sizeof want,
          "%s/a.safetensors", dir), want)), "%s", path);
    CHECK(lsd_cli_find_lora(dir, "b", path, sizeof path) == 0 && !strcmp(path, (snprintf(want, sizeof want, "%s/b.pt",
          dir), want)), "%s", path);
    CHECK(lsd_cli_find_lora(dir, "c", path, sizeof path) == 0 && !strcmp(path, (snprintf(want, sizeof want,
          "%s/c.safetensors", sub), want)), "%s", path);
    CHECK(lsd_cli_find_lora(dir, "notes", path, sizeof path) == -1);
    CHECK(lsd_cli_find_lora(dir, "sub", path, sizeof path) == -1);
    char names[64];
    lsd_cli_list_loras(dir, names, sizeof names);
    CHECK(!strcmp(names, "a, b, a, c"), "%s", names);
    char small[12];
    lsd_cli_list_loras(dir, small, sizeof small);
    CHECK(!strcmp(small, "a, b, ..."), "%s", small);
    lsd_cli_list_loras(sub, names, sizeof names);
    CHECK(!strcmp(names, "a, c"), "%s", names);
    snprintf(want, sizeof want, "%s/none", dir);
    lsd_cli_list_loras(want, names, sizeof names);
    CHECK(!strcmp(names, "(none)"), "%s", names);
    CHECK(lsd_cli_find_lora(want, "a", path, sizeof path) == -1);
}
