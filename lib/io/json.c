#include "io/json.h"

#include <stdio.h>
#include <stdlib.h>

#include "core/error.h"

#define JSON_MAX_BYTES (64L << 20)

lsd_status lsdi_json_load(const char *path, cJSON **out)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return lsdi_error(LSD_ERR_NOT_FOUND, "%s: cannot open JSON file", path);
    long len = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        len = ftell(f);
    if (len < 0 || len > JSON_MAX_BYTES || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return lsdi_error(LSD_ERR_FORMAT, "%s: unreadable or over %ld bytes", path, JSON_MAX_BYTES);
    }
    char *buf = malloc((size_t)len + 1);
    if (!buf) {
        fclose(f);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: out of memory reading JSON", path);
    }
    size_t got = fread(buf, 1, (size_t)len, f);
    fclose(f);
    if (got != (size_t)len) {
        free(buf);
        return lsdi_error(LSD_ERR_IO, "%s: short read", path);
    }
    buf[len] = 0;
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(buf, (size_t)len, &end, 0);
    if (!j || !cJSON_IsObject(j)) {
        long at = end ? (long)(end - buf) : 0;
        cJSON_Delete(j);
        free(buf);
        return lsdi_error(LSD_ERR_FORMAT, "%s: not a JSON object (parse stopped at byte %ld)", path, at);
    }
    free(buf);
    *out = j;
    return LSD_OK;
}
