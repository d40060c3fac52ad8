/* The smallest program against the installed library: prints the version and the runtime, then loads the model
 * given on the command line (if any) and reports its size.
 *     cc hello.c $(pkg-config --cflags --libs lora_sd) -o hello && ./hello [MODEL] */
#include <stdio.h>

#include <lora_sd.h>

int main(int argc, char **argv)
{
    lsd_runtime_info info = {.struct_size = sizeof info};
    if (lsd_runtime_info_get(&info) != LSD_OK) {
        fprintf(stderr, "runtime: %s\n", lsd_last_error());
        return 1;
    }
    printf("liblora_sd %s, libtorch %s, %d threads, BLAS %s\n", lsd_version_string(), info.torch_version,
           info.num_threads, info.blas);
    if (argc < 2)
        return 0;
    lsd_model *m;
    lsd_status st = lsd_model_load(argv[1], NULL, &m);
    if (st != LSD_OK) {
        fprintf(stderr, "%s: %s\n", lsd_status_string(st), lsd_last_error());
        return 1;
    }
    lsd_model_info mi = {.struct_size = sizeof mi};
    lsd_model_get_info(m, &mi);
    printf("UNet %lld, VAE %lld, text encoder %lld parameters\n", (long long)mi.unet_params, (long long)mi.vae_params,
           (long long)mi.text_encoder_params);
    lsd_model_free(m);
    return 0;
}
