/* diffusers / PEFT names: unet.<path>.lora_A.weight / lora_B.weight (PEFT, diffusers >= 0.2x), and the layout
 * older diffusers training scripts save: unet.<path>.lora.down.weight, text_encoder.<path>.lora_linear_layer.down.
 * weight. Their alpha, when present, is in __metadata__. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "lora/lora.h"

static const char *const net_prefix[LSDI_NET_COUNT] = {"unet.", "text_encoder."};

int lsdi_lora_find_module(const lsd_model *m, int net, const char *path, size_t len)
{
    const lsdi_params *p = lsdi_lora_net_params(m, net);
    char buf[600];
    if (!p || len >= sizeof buf)
        return -1;
    memcpy(buf, path, len);
    buf[len] = 0;
    const lsdi_module *mod = lsdi_params_find_module(p, buf);
    return mod ? (int)(mod - p->mods) : -1;
}

typedef struct suffix_role {
    const char *suffix;
    int role;
} suffix_role;

static int parse(const lsd_model *m, const char *name, const suffix_role *roles, size_t n_roles, lsdi_lora_key *key)
{
    for (int net = 0; net < LSDI_NET_COUNT; net++) {
        size_t pl = strlen(net_prefix[net]);
        if (strncmp(name, net_prefix[net], pl))
            continue;
        const char *path = name + pl;
        size_t n = strlen(path);
        for (size_t i = 0; i < n_roles; i++) {
            size_t sl = strlen(roles[i].suffix);
            if (n <= sl || strcmp(path + n - sl, roles[i].suffix))
                continue;
            int mod = lsdi_lora_find_module(m, net, path, n - sl);
            if (mod < 0)
                return 0;
            *key = (lsdi_lora_key){net, mod, roles[i].role};
            return 1;
        }
    }
    return 0;
}

int lsdi_peft_parse(const lsd_model *m, const char *name, lsdi_lora_key *key)
{
    static const suffix_role roles[] = {
        {".lora_A.weight", LSDI_ROLE_DOWN}, {".lora_B.weight", LSDI_ROLE_UP}, {".alpha", LSDI_ROLE_ALPHA}};
    return parse(m, name, roles, sizeof roles / sizeof roles[0], key);
}

int lsdi_diffusers_parse(const lsd_model *m, const char *name, lsdi_lora_key *key)
{
    static const suffix_role roles[] = {{".lora.down.weight", LSDI_ROLE_DOWN},
                                        {".lora.up.weight", LSDI_ROLE_UP},
                                        {".lora_linear_layer.down.weight", LSDI_ROLE_DOWN},
                                        {".lora_linear_layer.up.weight", LSDI_ROLE_UP},
                                        {".alpha", LSDI_ROLE_ALPHA}};
    return parse(m, name, roles, sizeof roles / sizeof roles[0], key);
}

static float number(const cJSON *v)
{
    if (cJSON_IsNumber(v))
        return (float)v->valuedouble;
    if (cJSON_IsString(v) && v->valuestring) {
        char *end;
        double d = strtod(v->valuestring, &end);
        if (end != v->valuestring && !*end)
            return (float)d;
    }
    return 0.0f;
}

/* A PEFT LoraConfig as JSON: alpha_pattern (exact module path, with or without the component prefix), then the
 * component's "<prefix>lora_alpha" (diffusers' lora_adapter_metadata), then "lora_alpha". */
static float config_alpha(const char *json, int net, const char *path)
{
    cJSON *root = cJSON_Parse(json);
    if (!root)
        return 0.0f;
    float a = 0.0f;
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(root, "alpha_pattern");
    if (cJSON_IsObject(pat)) {
        a = number(cJSON_GetObjectItemCaseSensitive(pat, path));
        if (a <= 0.0f) {
            char full[640];
            snprintf(full, sizeof full, "%s%s", net_prefix[net], path);
            a = number(cJSON_GetObjectItemCaseSensitive(pat, full));
        }
    }
    if (a <= 0.0f) {
        char key[64];
        snprintf(key, sizeof key, "%slora_alpha", net_prefix[net]);
        a = number(cJSON_GetObjectItemCaseSensitive(root, key));
    }
    if (a <= 0.0f)
        a = number(cJSON_GetObjectItemCaseSensitive(root, "lora_alpha"));
    cJSON_Delete(root);
    return a;
}

float lsdi_peft_metadata_alpha(const lsdi_st_file *f, int net, const char *path)
{
    static const char *const json_keys[] = {"lora_config", "peft_config", "lora_adapter_metadata"};
    for (size_t i = 0; i < sizeof json_keys / sizeof json_keys[0]; i++) {
        const char *v = lsdi_st_metadata_get(f, json_keys[i]);
        float a = v ? config_alpha(v, net, path) : 0.0f;
        if (a > 0.0f)
            return a;
    }
    static const char *const plain[] = {"lora_alpha", "network_alpha"};
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
        const char *v = lsdi_st_metadata_get(f, plain[i]);
        if (!v)
            continue;
        char *end;
        double d = strtod(v, &end);
        if (end != v && !*end && d > 0.0)
            return (float)d;
    }
    return 0.0f;
}
