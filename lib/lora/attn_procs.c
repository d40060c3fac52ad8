/* Legacy diffusers attention processors: <attention>.processor.to_q_lora.down.weight / .up.weight (to_k, to_v,
 * to_out -> to_out.0), optionally under "unet."; and diffusers 0.1x text-encoder patches:
 * text_encoder.<layer>.self_attn.to_q_lora.down.weight -> self_attn.q_proj. No alpha: scale 1. */
#include <string.h>

#include "lora/lora.h"

static const char *const procs[4] = {"to_q_lora.", "to_k_lora.", "to_v_lora.", "to_out_lora."};
static const char *const unet_targets[4] = {"to_q", "to_k", "to_v", "to_out.0"};
static const char *const te_targets[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};

int lsdi_attn_procs_parse(const lsd_model *m, const char *name, lsdi_lora_key *key)
{
    int net = LSDI_NET_UNET;
    if (!strncmp(name, "unet.", 5)) {
        name += 5;
    } else if (!strncmp(name, "text_encoder.", 13)) {
        name += 13;
        net = LSDI_NET_TE;
    }
    size_t n = strlen(name);
    int role;
    size_t tail;
    if (n > 12 && !strcmp(name + n - 12, ".down.weight")) {
        role = LSDI_ROLE_DOWN;
        tail = 11;
    } else if (n > 10 && !strcmp(name + n - 10, ".up.weight")) {
        role = LSDI_ROLE_UP;
        tail = 9;
    } else {
        return 0;
    }
    /* name = <base><sep><proc>down.weight with sep ".processor." (UNet) or "." (text encoder) */
    size_t head = n - tail;
    for (int i = 0; i < 4; i++) {
        size_t pl = strlen(procs[i]);
        if (head < pl || strncmp(name + head - pl, procs[i], pl))
            continue;
        size_t base = head - pl;
        const char *sep = net == LSDI_NET_UNET ? ".processor." : ".";
        size_t sl = strlen(sep);
        if (base < sl || strncmp(name + base - sl, sep, sl))
            return 0;
        base -= sl;
        char path[600];
        const char *target = net == LSDI_NET_UNET ? unet_targets[i] : te_targets[i];
        if (base + 1 + strlen(target) >= sizeof path)
            return 0;
        memcpy(path, name, base);
        path[base] = '.';
        strcpy(path + base + 1, target);
        int mod = lsdi_lora_find_module(m, net, path, strlen(path));
        if (mod < 0)
            return 0;
        *key = (lsdi_lora_key){net, mod, role};
        return 1;
    }
    return 0;
}
