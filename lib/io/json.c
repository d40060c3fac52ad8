#include "io/json.h"

#include <stdlib.h>

#include "core/error.h"
#include "io/file.h"

#define JSON_MAX_BYTES ((size_t)64 << 20)

lsd_status lsdi_json_load(const char *path, cJSON **out)
{
    *out = NULL;
    char *buf = NULL;
    size_t len = 0;
    LSDI_TRY(lsdi_read_file(path, JSON_MAX_BYTES, &buf, &len));
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
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
