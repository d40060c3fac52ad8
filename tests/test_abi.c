/* The numbers the soname promises (docs/ABI.md): enum values never change, params structs start with struct_size
 * and only grow, and a caller built against an older, smaller struct still gets correct defaults. */
#include <stddef.h>

#include "test.h"

TEST(abi_enum_values_are_pinned)
{
    CHECK(LSD_OK == 0 && LSD_ERR_INVALID_ARGUMENT == 1 && LSD_ERR_IO == 2 && LSD_ERR_FORMAT == 3 &&
          LSD_ERR_UNSUPPORTED == 4 && LSD_ERR_SHAPE_MISMATCH == 5 && LSD_ERR_OUT_OF_MEMORY == 6 && LSD_ERR_DEVICE == 7 &&
          LSD_ERR_CANCELLED == 8 && LSD_ERR_NOT_FOUND == 9 && LSD_ERR_NUMERIC == 10 && LSD_ERR_INTERNAL == 11);
    CHECK(LSD_F32 == 0 && LSD_F16 == 1 && LSD_BF16 == 2);
    CHECK(LSD_SAMPLER_PNDM == 0 && LSD_SAMPLER_DDIM == 1 && LSD_SAMPLER_EULER == 2 && LSD_SAMPLER_EULER_A == 3 &&
          LSD_SAMPLER_DPMPP_2M == 4 && LSD_SAMPLER_DPMPP_2M_KARRAS == 5);
    CHECK(LSD_LORA_FORMAT_AUTO == 0 && LSD_LORA_FORMAT_KOHYA == 1 && LSD_LORA_FORMAT_PEFT == 2 &&
          LSD_LORA_FORMAT_DIFFUSERS == 3 && LSD_LORA_FORMAT_ATTN_PROCS == 4);
    CHECK(LSD_MODEL_SINGLE_FILE == 0 && LSD_MODEL_DIFFUSERS == 1);
    CHECK(LSD_PROMPT_PLAIN == 0 && LSD_PROMPT_A1111 == 1);
    CHECK(LSD_TARGET_UNET_ATTN == 1 && LSD_TARGET_UNET_FF == 2 && LSD_TARGET_UNET_PROJ == 4 &&
          LSD_TARGET_UNET_CONV == 8 && LSD_TARGET_TE_ATTN == 16 && LSD_TARGET_TE_MLP == 32);
    CHECK(LSD_LOG_DEBUG == 0 && LSD_LOG_INFO == 1 && LSD_LOG_WARN == 2 && LSD_LOG_ERROR == 3);
    CHECK(LSD_STAGE_LOAD == 0 && LSD_STAGE_ENCODE == 1 && LSD_STAGE_DENOISE == 2 && LSD_STAGE_DECODE == 3 &&
          LSD_STAGE_TRAIN_STEP == 4 && LSD_STAGE_CHECKPOINT == 5);
    for (int s = 0; s <= 11; s++)
        CHECK(strcmp(lsd_status_string((lsd_status)s), "unknown status") != 0, "status %d has a name", s);
    for (int s = LSD_SAMPLER_PNDM; s <= LSD_SAMPLER_DPMPP_2M_KARRAS; s++) {
        lsd_sampler back;
        CHECK_OK(lsd_sampler_from_name(lsd_sampler_name((lsd_sampler)s), &back));
        CHECK(back == (lsd_sampler)s, "sampler %d round-trips by name", s);
    }
}

TEST(abi_struct_size_comes_first)
{
    CHECK(offsetof(lsd_model_params, struct_size) == 0 && offsetof(lsd_sample_params, struct_size) == 0 &&
          offsetof(lsd_lora_params, struct_size) == 0 && offsetof(lsd_train_params, struct_size) == 0 &&
          offsetof(lsd_dataset_params, struct_size) == 0 && offsetof(lsd_model_info, struct_size) == 0 &&
          offsetof(lsd_runtime_info, struct_size) == 0 && offsetof(lsd_load_report, struct_size) == 0 &&
          offsetof(lsd_image, struct_size) == 0 && offsetof(lsd_progress, struct_size) == 0 &&
          offsetof(lsd_lora_save_params, struct_size) == 0);
}

/* A program built against 0.1, when lsd_model_params ended before dtype_policy: the fields it does not know take
 * their defaults; and 0.1's lsd_runtime_info, which ended before cpu_model, is never written past. */
TEST(abi_older_smaller_params_get_defaults)
{
    lsd_model_params old;
    memset(&old, 0xAB, sizeof old); /* garbage past the old end must never be read */
    lsd_model_params_init(&old);
    memset((char *)&old + offsetof(lsd_model_params, dtype_policy), 0xAB,
           sizeof old - offsetof(lsd_model_params, dtype_policy));
    old.struct_size = offsetof(lsd_model_params, dtype_policy);
    lsd_model *m = NULL;
    CHECK_OK(lsd_model_load(data_path("sd-tiny"), &old, &m));
    lsd_runtime_info info;
    memset(&info, 0xCD, sizeof info);
    info.struct_size = offsetof(lsd_runtime_info, cpu_model);
    CHECK_OK(lsd_runtime_info_get(&info));
    CHECK(info.num_threads > 0 && info.struct_size == offsetof(lsd_runtime_info, cpu_model));
    const unsigned char *tail = (const unsigned char *)&info + offsetof(lsd_runtime_info, cpu_model);
    CHECK(tail[0] == 0xCD, "lsd_runtime_info_get wrote past the caller's struct_size");
    lsd_model_free(m);
    lsd_sample_params sp;
    memset(&sp, 0, sizeof sp);
    CHECK_STATUS(lsd_sample(NULL, &sp, NULL, NULL), LSD_ERR_INVALID_ARGUMENT, NULL);
}
