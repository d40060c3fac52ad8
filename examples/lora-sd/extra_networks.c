#include "extra_networks.h"

#include "lora_spec.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Python's \w on UTF-8 text: ASCII letters, digits, '_', and (approximately) any non-ASCII character. */
static int word_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c >= 0x80;
}

/* Python's float(): surrounding blanks allowed. */
static int number(const char *s, size_t len, float *out)
{
    while (len && (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r'))
        s++, len--;
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\n' || s[len - 1] == '\r'))
        len--;
    return lsd_cli_number(s, len, out);
}

static void note(lsd_cli_extra_networks *en, const char *fmt, const char *a, int alen, const char *b, int blen)
{
    size_t used = strlen(en->notes);
    if (used < sizeof en->notes)
        snprintf(en->notes + used, sizeof en->notes - used, fmt, alen, a, blen, b);
}

typedef struct span {
    const char *s;
    int n;
} span;

/* One <lora:ARGS> tag: ARGS split on ':'; an item with exactly one '=' is named (A1111's split('=', 2)). */
static int lora_tag(lsd_cli_extra_networks *en, span tag, span args, char *err, size_t errcap)
{
    span pos[8];
    int npos = 0;
    span te = {0}, unet = {0};
    for (const char *p = args.s, *end = args.s + args.n; p <= end;) {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        span item = {p, (int)((colon ? colon : end) - p)};
        p += item.n + 1;
        const char *eq = memchr(item.s, '=', (size_t)item.n);
        int named = eq && !memchr(eq + 1, '=', (size_t)(item.s + item.n - eq - 1));
        if (!named) {
            if (npos < 8)
                pos[npos] = item;
            npos++;
            continue;
        }
        span key = {item.s, (int)(eq - item.s)}, val = {eq + 1, (int)(item.s + item.n - eq - 1)};
        if (key.n == 2 && !memcmp(key.s, "te", 2))
            te = val;
        else if (key.n == 4 && !memcmp(key.s, "unet", 4))
            unet = val;
        else if (key.n == 3 && !memcmp(key.s, "dyn", 3))
            npos = npos > 4 ? npos : 4; /* refused below, with the positional form */
        else
            note(en, "%.*s: argument '%.*s' ignored\n", tag.s, tag.n, key.s, key.n);
    }
    if (npos > 3)
        return snprintf(err, errcap, "%.*s: dyn (a rank cut) is not supported", tag.n, tag.s), -1;
    if (npos == 0 || pos[0].n == 0)
        return snprintf(err, errcap, "%.*s: no LoRA name", tag.n, tag.s), -1;
    if (en->n_loras == LSD_CLI_MAX_TAGS)
        return snprintf(err, errcap, "%.*s: at most %d LoRAs in a prompt", tag.n, tag.s, LSD_CLI_MAX_TAGS), -1;
    lsd_cli_lora_tag *l = &en->loras[en->n_loras];
    if ((size_t)pos[0].n >= sizeof l->name)
        return snprintf(err, errcap, "%.*s: the name is too long", tag.n, tag.s), -1;
    memcpy(l->name, pos[0].s, (size_t)pos[0].n);
    l->name[pos[0].n] = 0;
    /* te: positional 1, then te=; unet: positional 2, then unet=, else the text-encoder weight */
    span te_arg = te.s ? te : npos > 1 ? pos[1] : (span){0};
    span unet_arg = unet.s ? unet : npos > 2 ? pos[2] : (span){0};
    l->te_weight = 1.0f;
    if (te_arg.s && !number(te_arg.s, (size_t)te_arg.n, &l->te_weight))
        return snprintf(err, errcap, "%.*s: text-encoder weight '%.*s' is not a finite number", tag.n, tag.s,
                        te_arg.n, te_arg.s), -1;
    l->unet_weight = l->te_weight;
    if (unet_arg.s && !number(unet_arg.s, (size_t)unet_arg.n, &l->unet_weight))
        return snprintf(err, errcap, "%.*s: UNet weight '%.*s' is not a finite number", tag.n, tag.s, unet_arg.n,
                        unet_arg.s), -1;
    en->n_loras++;
    return 0;
}

int lsd_cli_extra_networks_parse(const char *prompt, lsd_cli_extra_networks *out, char *err, size_t errcap)
{
    memset(out, 0, sizeof *out);
    size_t len = strlen(prompt), n = 0;
    out->text = malloc(len + 1);
    if (!out->text)
        return snprintf(err, errcap, "out of memory"), -1;
    for (size_t i = 0; i < len;) {
        /* <(\w+):([^>]+)> at i? */
        size_t j = i + 1, k;
        while (prompt[i] == '<' && j < len && word_char((unsigned char)prompt[j]))
            j++;
        int match = prompt[i] == '<' && j > i + 1 && prompt[j] == ':';
        for (k = j + 1; match && k < len && prompt[k] != '>'; k++)
            ;
        match = match && k < len && k > j + 1;
        if (!match) {
            out->text[n++] = prompt[i++];
            continue;
        }
        span tag = {prompt + i, (int)(k + 1 - i)}, kind = {prompt + i + 1, (int)(j - i - 1)};
        span args = {prompt + j + 1, (int)(k - j - 1)};
        if ((kind.n == 4 && !memcmp(kind.s, "lora", 4)) || (kind.n == 4 && !memcmp(kind.s, "lyco", 4))) {
            if (lora_tag(out, tag, args, err, errcap) != 0)
                return -1;
        } else {
            note(out, "%.*s: ignored (%.*s is not supported; only lora is)\n", tag.s, tag.n, kind.s, kind.n);
        }
        i = k + 1;
    }
    out->text[n] = 0;
    return 0;
}

void lsd_cli_extra_networks_free(lsd_cli_extra_networks *en)
{
    free(en->text);
    en->text = NULL;
}
