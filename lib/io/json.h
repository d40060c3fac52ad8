/* JSON files through cJSON. */
#ifndef LSD_IO_JSON_H
#define LSD_IO_JSON_H

#include <cjson/cJSON.h>

#include "lora_sd.h"

/* Parses a JSON file (at most 64 MB) whose top level is an object; errors name the path. Free with cJSON_Delete. */
lsd_status lsdi_json_load(const char *path, cJSON **out);

#endif
