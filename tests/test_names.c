/* Whole names beside the 0.1 info structs' fixed char[] (lsd_model_get_name, lsd_adapter_set_get_name,
 * lsd_safetensors_tensor_name): a name longer than its field comes back whole from the function (and from
 * `lora-sd inspect`) while the field keeps its first bytes, and bad arguments are named. */
#include <stdlib.h>
#include <unistd.h>

#include "test.h"

/* n bytes of UTF-8: "é" (two bytes each) for the first half, then ASCII digits. */
static void long_name(char *out, size_t n)
{
    size_t i = 0;
    for (; i + 2 <= n / 2; i += 2)
        memcpy(out + i, "\xc3\xa9", 2);
    for (; i < n; i++)
        out[i] = (char)('0' + i % 10);
    out[n] = 0;
}

TEST(names_adapter_whole)
{
    lsd_model *m = NULL;
    lsd_adapter_set *set = NULL;
    if (!CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)) || !CHECK_OK(lsd_adapter_set_new(m, &set)))
        goto out;
    char name[301];
    long_name(name, 300);
    if (!CHECK_OK(lsd_adapter_set_add(set, name, NULL)) || !CHECK_OK(lsd_adapter_set_add(set, "short", NULL)))
        goto out;
    const char *got = NULL;
    CHECK_OK(lsd_adapter_set_get_name(set, 0, &got));
    CHECK(got && strcmp(got, name) == 0, "adapter 0: %s", got ? got : "(null)");
    CHECK_OK(lsd_adapter_set_get_name(set, 1, &got));
    CHECK(got && strcmp(got, "short") == 0, "adapter 1: %s", got ? got : "(null)");
    lsd_adapter_info info = {.struct_size = sizeof info};
    CHECK_OK(lsd_adapter_set_get_info(set, 0, &info));
    CHECK(strlen(info.name) == sizeof info.name - 1 && memcmp(info.name, name, sizeof info.name - 1) == 0,
          "info.name holds the first %zu bytes: %s", sizeof info.name - 1, info.name);

    CHECK_STATUS(lsd_adapter_set_get_name(set, 2, &got), LSD_ERR_INVALID_ARGUMENT,
                 "lsd_adapter_set_get_name: index 2 is not in 0..1");
    CHECK_STATUS(lsd_adapter_set_get_name(set, 0, NULL), LSD_ERR_INVALID_ARGUMENT,
                 "lsd_adapter_set_get_name: name is NULL");
    CHECK_STATUS(lsd_adapter_set_get_name(NULL, 0, &got), LSD_ERR_INVALID_ARGUMENT,
                 "lsd_adapter_set_get_name: set is NULL");
    lsd_status st = LSD_OK;
    char buf[256];
    lsd_adapter_set_last_error(set, &st, buf, sizeof buf);
    CHECK(st == LSD_ERR_INVALID_ARGUMENT && strstr(buf, "name is NULL"), "the set's record: %d %s", (int)st, buf);
out:
    lsd_adapter_set_free(set);
    lsd_model_free(m);
}

TEST(names_model_whole)
{
    /* A diffusers folder is named after its directory: a link with a 200-byte name to sd-tiny. */
    char name[201], link[1400], target[1024];
    long_name(name, 200);
    snprintf(link, sizeof link, "%s/%s", temp_dir(), name);
    CHECK(realpath(data_path("sd-tiny"), target) != NULL && symlink(target, link) == 0, "%s", link);
    lsd_model *m = NULL;
    if (!CHECK_OK(lsd_model_load(link, NULL, &m)))
        return;
    const char *got = NULL;
    CHECK_OK(lsd_model_get_name(m, &got));
    CHECK(got && strcmp(got, name) == 0, "model name: %s", got ? got : "(null)");
    lsd_model_info info = {.struct_size = sizeof info};
    CHECK_OK(lsd_model_get_info(m, &info));
    CHECK(strlen(info.name) == sizeof info.name - 1 && memcmp(info.name, name, sizeof info.name - 1) == 0,
          "info.name holds the first %zu bytes: %s", sizeof info.name - 1, info.name);
    CHECK_STATUS(lsd_model_get_name(m, NULL), LSD_ERR_INVALID_ARGUMENT, "lsd_model_get_name: name is NULL");
    CHECK_STATUS(lsd_model_get_name(NULL, &got), LSD_ERR_INVALID_ARGUMENT, "lsd_model_get_name: model is NULL");
    lsd_model_free(m);
}

TEST(names_tensor_whole)
{
    /* One F32 tensor of shape [1] named by 300 bytes, written by hand (the safetensors layout: 8-byte little-endian
     * header length, the JSON header, the data). */
    char name[301], header[600], path[1100];
    long_name(name, 300);
    int n = snprintf(header, sizeof header, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", name);
    unsigned char file[8 + sizeof header + 4];
    for (int i = 0; i < 8; i++)
        file[i] = (unsigned char)(((uint64_t)n >> (8 * i)) & 0xff);
    memcpy(file + 8, header, (size_t)n);
    const float one = 1.0f;
    memcpy(file + 8 + n, &one, 4);
    snprintf(path, sizeof path, "%s/long-name.safetensors", temp_dir());
    CHECK(write_file(path, file, 8 + (size_t)n + 4), "%s", path);

    lsd_safetensors *f = NULL;
    if (!CHECK_OK(lsd_safetensors_open(path, &f)))
        return;
    const char *got = NULL;
    CHECK_OK(lsd_safetensors_tensor_name(f, 0, &got));
    CHECK(got && strcmp(got, name) == 0, "tensor name: %s", got ? got : "(null)");
    lsd_tensor_info info = {.struct_size = sizeof info};
    CHECK_OK(lsd_safetensors_tensor_info(f, 0, &info));
    CHECK(strlen(info.name) == sizeof info.name - 1 && memcmp(info.name, name, sizeof info.name - 1) == 0,
          "info.name holds the first %zu bytes: %s", sizeof info.name - 1, info.name);
    char want[1200];
    snprintf(want, sizeof want, "%s: tensor index 1 out of range (1 tensors)", path);
    CHECK_STATUS(lsd_safetensors_tensor_name(f, 1, &got), LSD_ERR_INVALID_ARGUMENT, want);
    CHECK_STATUS(lsd_safetensors_tensor_name(f, 0, NULL), LSD_ERR_INVALID_ARGUMENT,
                 "lsd_safetensors_tensor_name: name is NULL");
    CHECK_STATUS(lsd_safetensors_tensor_name(NULL, 0, &got), LSD_ERR_INVALID_ARGUMENT,
                 "lsd_safetensors_tensor_name: file is NULL");
    lsd_safetensors_close(f);

    /* lora-sd inspect prints the whole name */
    char cmd[3000], log[1100];
    snprintf(log, sizeof log, "%s/inspect.log", temp_dir());
    snprintf(cmd, sizeof cmd, "%s inspect %s >%s 2>&1", getenv("LSD_CLI") ? getenv("LSD_CLI") : "build/lora-sd", path,
             log);
    CHECK(system(cmd) == 0, "%s", cmd);
    char *out = read_file(log, NULL);
    CHECK(out && strstr(out, name), "%s", out ? out : "(no output)");
    free(out);
}
