#include "model/config.h"
#include "test.h"

TEST(config_sd14_unet_vae_text)
{
    lsdi_unet_config u;
    lsdi_vae_config v;
    lsdi_text_config t;
    CHECK_OK(lsdi_unet_config_load("data/configs/sd-v1-4/unet/config.json", &u));
    CHECK(u.n_blocks == 4 && u.block_out_channels[0] == 320 && u.block_out_channels[3] == 1280);
    CHECK(u.down_attn[0] && u.down_attn[2] && !u.down_attn[3] && !u.up_attn[0] && u.up_attn[3]);
    CHECK(u.heads[0] == 8 && u.cross_attention_dim == 768 && u.layers_per_block == 2 && u.norm_num_groups == 32);
    CHECK(u.flip_sin_to_cos == 1 && u.freq_shift == 0 && !u.use_linear_projection && !u.upcast_attention);
    CHECK_OK(lsdi_vae_config_load("data/configs/sd-v1-4/vae/config.json", &v));
    CHECK(v.n_blocks == 4 && v.layers_per_block == 2 && fabsf(v.scaling_factor - 0.18215f) < 1e-7f,
          "scaling_factor defaults to 0.18215 when absent: %g", v.scaling_factor);
    CHECK_OK(lsdi_text_config_load("data/configs/sd-v1-4/text_encoder/config.json", &t));
    CHECK(t.hidden_size == 768 && t.num_layers == 12 && t.num_heads == 12 && t.intermediate_size == 3072 &&
          t.quick_gelu && t.max_positions == 77);
    CHECK_OK(lsdi_unet_config_load(data_path("sd-tiny/unet/config.json"), &u));
    CHECK(u.n_blocks == 3 && u.heads[1] == 4 && u.norm_num_groups == 4 && !u.down_attn[2] && u.up_attn[1]);
}

TEST(config_rejections_name_file_and_key)
{
    lsdi_unet_config u;
    lsdi_text_config t;
    const char *no_blocks = "{\"down_block_types\": []}";
    CHECK_STATUS(lsdi_unet_config_parse(no_blocks, strlen(no_blocks), "u.json", &u), LSD_ERR_FORMAT,
                 "u.json: missing key \"block_out_channels\"");
    const char *sdxl = "{\"block_out_channels\": [32], \"down_block_types\": [\"DownBlock2D\"],"
                       "\"up_block_types\": [\"UpBlock2D\"], \"addition_embed_type\": \"text_time\"}";
    CHECK_STATUS(lsdi_unet_config_parse(sdxl, strlen(sdxl), "xl.json", &u), LSD_ERR_UNSUPPORTED, "text_time");
    const char *bad_type = "{\"block_out_channels\": [32], \"down_block_types\": [\"AttnDownBlock2D\"],"
                           "\"up_block_types\": [\"UpBlock2D\"]}";
    CHECK_STATUS(lsdi_unet_config_parse(bad_type, strlen(bad_type), "b.json", &u), LSD_ERR_UNSUPPORTED,
                 "AttnDownBlock2D");
    const char *groups = "{\"block_out_channels\": [30], \"norm_num_groups\": 32, \"down_block_types\": "
                         "[\"DownBlock2D\"], \"up_block_types\": [\"UpBlock2D\"]}";
    CHECK_STATUS(lsdi_unet_config_parse(groups, strlen(groups), "g.json", &u), LSD_ERR_FORMAT, "norm_num_groups");
    const char *neg = "{\"hidden_size\": -1, \"intermediate_size\": 4, \"num_hidden_layers\": 1, "
                      "\"num_attention_heads\": 1}";
    CHECK_STATUS(lsdi_text_config_parse(neg, strlen(neg), "t.json", &t), LSD_ERR_FORMAT, "hidden_size");
    CHECK_STATUS(lsdi_text_config_parse("[1]", 3, "arr.json", &t), LSD_ERR_FORMAT, "arr.json");
    CHECK_STATUS(lsdi_unet_config_load("/nonexistent/config.json", &u), LSD_ERR_NOT_FOUND, "/nonexistent/config.json");
}

/* Found by fuzz_config: numbers far outside int range were cast before the range check (undefined behaviour). */
TEST(config_fuzz_regression_huge_numbers)
{
    lsdi_unet_config u;
    const char *huge = "{\"block_out_channels\": [1e300], \"down_block_types\": [\"DownBlock2D\"],"
                       "\"up_block_types\": [\"UpBlock2D\"]}";
    CHECK_STATUS(lsdi_unet_config_parse(huge, strlen(huge), "h.json", &u), LSD_ERR_FORMAT, "block_out_channels");
    const char *neg = "{\"block_out_channels\": [32], \"layers_per_block\": -1e19, \"down_block_types\": "
                      "[\"DownBlock2D\"], \"up_block_types\": [\"UpBlock2D\"]}";
    CHECK_STATUS(lsdi_unet_config_parse(neg, strlen(neg), "n.json", &u), LSD_ERR_FORMAT, "layers_per_block");
}

/* Found by fuzz_config in a longer run: a boolean where a count belongs became 0 and divided by zero. */
TEST(config_fuzz_regression_boolean_group_count)
{
    lsdi_unet_config u;
    const char *cfg = "{\"block_out_channels\": [32], \"norm_num_groups\": false, \"down_block_types\": "
                      "[\"DownBlock2D\"], \"up_block_types\": [\"UpBlock2D\"]}";
    CHECK_STATUS(lsdi_unet_config_parse(cfg, strlen(cfg), "b.json", &u), LSD_ERR_FORMAT, "norm_num_groups");
}
