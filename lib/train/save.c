/* The LoRA files of a run: lsd_trainer_save_lora (the final file, and each checkpoint's
 * pytorch_lora_weights.safetensors) at save_precision with kohya's ss_* metadata, and kohya's per-epoch files
 * <output_name>-<epoch, 6 digits>.safetensors (sd-scripts' EPOCH_FILE_NAME "{}-{:06d}"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "train/train.h"

#define DEFAULT_OUTPUT_NAME "pytorch_lora_weights"

static lsd_status trainer_save_lora(lsd_trainer *tr, const char *path, lsd_lora_format format)
{
    if (!tr || !path || !*path)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_trainer_save_lora: %s is NULL", !tr ? "trainer" : "path");
    lsdi_kv kv = {0};
    LSDI_TRY(lsdi_train_metadata(tr, &kv));
    lsd_lora_save_params sp;
    lsd_lora_save_params_init(&sp);
    sp.format = format;
    sp.dtype = tr->p.save_precision;
    sp.metadata_keys = (const char *const *)kv.keys;
    sp.metadata_values = (const char *const *)kv.values;
    sp.n_metadata = kv.n;
    lsd_status st = lsd_adapter_set_save_ex(tr->set, tr->adapter, path, &sp);
    lsdi_kv_free(&kv);
    return st;
}

lsd_status lsd_trainer_save_lora(lsd_trainer *tr, const char *path, lsd_lora_format format)
{
    return lsdi_trainer_record(tr, trainer_save_lora(tr, path, format));
}

lsd_status lsdi_trainer_epoch_save(lsd_trainer *tr)
{
    int spe = tr->steps_per_epoch, every = tr->p.save_every_n_epochs;
    if (!tr->output_dir || every <= 0 || spe <= 0 || tr->step % spe)
        return LSD_OK;
    int epoch = tr->step / spe, epochs = (tr->p.max_train_steps + spe - 1) / spe;
    if (epoch % every || epoch >= epochs) /* kohya: (epoch + 1) % n == 0 and (epoch + 1) < num_train_epochs */
        return LSD_OK;
    const char *name = tr->p.output_name ? tr->p.output_name : DEFAULT_OUTPUT_NAME;
    size_t len = strlen(tr->output_dir) + strlen(name) + 32;
    char *path = malloc(len);
    if (!path)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "epoch %d file", epoch);
    snprintf(path, len, "%s/%s-%06d.safetensors", tr->output_dir, name, epoch);
    lsd_status st = lsd_trainer_save_lora(tr, path, LSD_LORA_FORMAT_KOHYA);
    free(path);
    return st;
}
