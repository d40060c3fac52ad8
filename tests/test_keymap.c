/* The key map between the original single-file layout and diffusers names, against the converter's own output
 * for the tiny model (keymap.json) and known SD 1.4 names. */
#include <cjson/cJSON.h>
#include <stdlib.h>

#include "io/json.h"
#include "model/config.h"
#include "model/keymap.h"
#include "test.h"

/* dir: a folder with unet/, vae/ and text_encoder/ configs. */
static lsdi_keymap *build(const char *dir)
{
    char p[1200];
    lsdi_unet_config u;
    lsdi_vae_config v;
    lsdi_text_config t;
    snprintf(p, sizeof(p), "%s/unet/config.json", dir);
    CHECK_OK(lsdi_unet_config_load(p, &u));
    snprintf(p, sizeof(p), "%s/vae/config.json", dir);
    CHECK_OK(lsdi_vae_config_load(p, &v));
    snprintf(p, sizeof(p), "%s/text_encoder/config.json", dir);
    CHECK_OK(lsdi_text_config_load(p, &t));
    lsdi_keymap *km = NULL;
    CHECK_OK(lsdi_keymap_build(&u, &v, &t, &km));
    return km;
}

static size_t count_part(const lsdi_keymap *km, lsdi_km_part part)
{
    size_t n = 0;
    for (size_t i = 0; i < lsdi_keymap_count(km); i++)
        n += lsdi_keymap_at(km, i)->part == part;
    return n;
}

static void check_section(const lsdi_keymap *km, const cJSON *sec, lsdi_km_part part)
{
    CHECK(cJSON_IsObject(sec));
    size_t n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, sec)
    {
        n++;
        const lsdi_km_entry *e = lsdi_keymap_to_original(km, part, it->string);
        CHECK(e && !strcmp(e->original, it->valuestring), "%s -> %s, want %s", it->string,
              e ? e->original : "(none)", it->valuestring);
        const lsdi_km_entry *back = lsdi_keymap_to_diffusers(km, it->valuestring);
        CHECK(back && back->part == part && !strcmp(back->diffusers, it->string), "%s <- %s", it->valuestring,
              back ? back->diffusers : "(none)");
    }
    CHECK(count_part(km, part) == n, "part %d: table has %zu names, keymap.json %zu", (int)part,
          count_part(km, part), n);
}

TEST(keymap_tiny_equals_converter)
{
    lsdi_keymap *km = build(data_path("sd-tiny-sf/model"));
    cJSON *j = NULL;
    CHECK_OK(lsdi_json_load(data_path("sd-tiny-sf/single-file/keymap.json"), &j));
    if (!km || !j)
        goto out;
    CHECK(lsdi_keymap_count(km) == 703, "got %zu", lsdi_keymap_count(km));
    check_section(km, cJSON_GetObjectItemCaseSensitive(j, "unet"), LSDI_KM_UNET);
    check_section(km, cJSON_GetObjectItemCaseSensitive(j, "vae"), LSDI_KM_VAE);
    check_section(km, cJSON_GetObjectItemCaseSensitive(j, "text_encoder"), LSDI_KM_TEXT);
    /* The 1x1-conv flags are exactly the listed VAE attention weights. */
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(j, "vae_reshaped_to_1x1_conv"), *it;
    size_t flagged = 0, listed = 0;
    for (size_t i = 0; i < lsdi_keymap_count(km); i++)
        flagged += lsdi_keymap_at(km, i)->reshape_1x1 != 0;
    cJSON_ArrayForEach(it, rs)
    {
        listed++;
        const lsdi_km_entry *e = lsdi_keymap_to_diffusers(km, it->valuestring);
        CHECK(e && e->reshape_1x1 && e->part == LSDI_KM_VAE, "%s", it->valuestring);
    }
    CHECK(flagged == 8 && listed == 8, "flagged %zu, listed %zu", flagged, listed);
    const lsdi_km_entry *e = lsdi_keymap_to_original(km, LSDI_KM_TEXT, "text_model.embeddings.position_ids");
    CHECK(e && e->buffer);
    e = lsdi_keymap_to_original(km, LSDI_KM_VAE, "decoder.mid_block.attentions.0.to_out.0.weight");
    CHECK(e && e->reshape_1x1 && !strcmp(e->original, "first_stage_model.decoder.mid.attn_1.proj_out.weight"));
    /* Names of one part are not found in another. */
    CHECK(lsdi_keymap_to_original(km, LSDI_KM_VAE, "conv_in.weight") == NULL);
    CHECK(lsdi_keymap_to_original(km, LSDI_KM_UNET, "conv_in.weight") != NULL);
    CHECK(lsdi_keymap_to_diffusers(km, "model_ema.decay") == NULL);
out:
    cJSON_Delete(j);
    lsdi_keymap_free(km);
}

TEST(keymap_sd14_structure)
{
    /* The installed configs (data/configs, LSD_DATA_DIR under make check). */
    const char *root = getenv("LSD_DATA_DIR");
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s/configs/sd-v1-4", root ? root : "data");
    lsdi_keymap *km = build(dir);
    if (!km)
        return;
    /* 4 levels, 2 layers, attention on the three upper levels: 686 UNet tensors (diffusers' UNet2DConditionModel
     * has as many), the VAE 248 with its 8 attention weights flagged, CLIP ViT-L/14's 12 layers 197. */
    CHECK(count_part(km, LSDI_KM_UNET) == 686, "UNet: %zu", count_part(km, LSDI_KM_UNET));
    CHECK(count_part(km, LSDI_KM_VAE) == 248, "VAE: %zu", count_part(km, LSDI_KM_VAE));
    CHECK(count_part(km, LSDI_KM_TEXT) == 197, "text: %zu", count_part(km, LSDI_KM_TEXT));
    static const char *const pairs[][2] = {
        {"up_blocks.0.upsamplers.0.conv.weight", "model.diffusion_model.output_blocks.2.1.conv.weight"},
        {"down_blocks.0.downsamplers.0.conv.weight", "model.diffusion_model.input_blocks.3.0.op.weight"},
        {"mid_block.attentions.0.proj_in.weight", "model.diffusion_model.middle_block.1.proj_in.weight"},
        {"up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k.weight",
         "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight"},
        {"up_blocks.1.upsamplers.0.conv.bias", "model.diffusion_model.output_blocks.5.2.conv.bias"},
        {"up_blocks.2.resnets.0.conv_shortcut.weight", "model.diffusion_model.output_blocks.6.0.skip_connection.weight"},
        {"down_blocks.1.resnets.0.conv_shortcut.weight", "model.diffusion_model.input_blocks.4.0.skip_connection.weight"},
        {"down_blocks.3.resnets.1.time_emb_proj.bias", "model.diffusion_model.input_blocks.11.0.emb_layers.1.bias"},
        {"time_embedding.linear_2.weight", "model.diffusion_model.time_embed.2.weight"},
        {"conv_out.bias", "model.diffusion_model.out.2.bias"},
    };
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        const lsdi_km_entry *e = lsdi_keymap_to_original(km, LSDI_KM_UNET, pairs[i][0]);
        CHECK(e && !strcmp(e->original, pairs[i][1]), "%s -> %s", pairs[i][0], e ? e->original : "(none)");
        e = lsdi_keymap_to_diffusers(km, pairs[i][1]);
        CHECK(e && !strcmp(e->diffusers, pairs[i][0]), "%s <- %s", pairs[i][1], e ? e->diffusers : "(none)");
    }
    /* SD 1.4 has no shortcut where channels do not change, and no downsampler on the deepest level. */
    CHECK(lsdi_keymap_to_original(km, LSDI_KM_UNET, "down_blocks.0.resnets.0.conv_shortcut.weight") == NULL);
    CHECK(lsdi_keymap_to_original(km, LSDI_KM_UNET, "down_blocks.3.downsamplers.0.conv.weight") == NULL);
    CHECK(lsdi_keymap_to_original(km, LSDI_KM_UNET, "up_blocks.3.upsamplers.0.conv.weight") == NULL);
    const lsdi_km_entry *e = lsdi_keymap_to_original(km, LSDI_KM_VAE, "decoder.up_blocks.0.upsamplers.0.conv.weight");
    CHECK(e && !strcmp(e->original, "first_stage_model.decoder.up.3.upsample.conv.weight"));
    e = lsdi_keymap_to_original(km, LSDI_KM_VAE, "encoder.down_blocks.1.resnets.0.conv_shortcut.bias");
    CHECK(e && !strcmp(e->original, "first_stage_model.encoder.down.1.block.0.nin_shortcut.bias"));
    lsdi_keymap_free(km);
}

TEST(keymap_other_structures)
{
    /* N=5, L=1, attention only on levels 1 and 3 (down) and their mirrors (up): the general formulas. */
    lsdi_unet_config u = {0};
    u.n_blocks = 5;
    u.layers_per_block = 1;
    u.transformer_layers = 2;
    u.mid_attn = 1;
    for (int i = 0; i < 5; i++)
        u.block_out_channels[i] = 8 << i;
    u.down_attn[1] = u.down_attn[3] = 1;
    u.up_attn[1] = u.up_attn[3] = 1;
    lsdi_keymap *km = NULL;
    CHECK_OK(lsdi_keymap_build(&u, NULL, NULL, &km));
    if (!km)
        return;
    static const char *const pairs[][2] = {
        {"down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q.weight",
         "input_blocks.3.1.transformer_blocks.1.attn1.to_q.weight"},
        {"down_blocks.4.resnets.0.conv1.weight", "input_blocks.9.0.in_layers.2.weight"},
        {"down_blocks.3.downsamplers.0.conv.weight", "input_blocks.8.0.op.weight"},
        {"up_blocks.0.upsamplers.0.conv.weight", "output_blocks.1.1.conv.weight"},
        {"up_blocks.1.upsamplers.0.conv.weight", "output_blocks.3.2.conv.weight"},
        {"up_blocks.4.resnets.1.conv2.bias", "output_blocks.9.0.out_layers.3.bias"},
        {"up_blocks.3.attentions.1.proj_out.weight", "output_blocks.7.1.proj_out.weight"},
    };
    char want[256];
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        snprintf(want, sizeof(want), "model.diffusion_model.%s", pairs[i][1]);
        const lsdi_km_entry *e = lsdi_keymap_to_original(km, LSDI_KM_UNET, pairs[i][0]);
        CHECK(e && !strcmp(e->original, want), "%s -> %s", pairs[i][0], e ? e->original : "(none)");
    }
    CHECK(lsdi_keymap_to_original(km, LSDI_KM_UNET, "up_blocks.2.attentions.0.norm.weight") == NULL);
    CHECK(count_part(km, LSDI_KM_VAE) == 0 && count_part(km, LSDI_KM_TEXT) == 0);
    lsdi_keymap_free(km);
    u.mid_attn = 0;
    CHECK_STATUS(lsdi_keymap_build(&u, NULL, NULL, &km), LSD_ERR_UNSUPPORTED, "mid-block attention");
}
