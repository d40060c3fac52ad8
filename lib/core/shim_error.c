#include <stdio.h>

#include "core/error.h"
#include "lsd_torch.h"

lsd_status lsdi_error_from_shim(int shim_status)
{
    if (shim_status == LSD_OK)
        return LSD_OK;
    return lsdi_error((lsd_status)shim_status, "%s", lsdt_last_error());
}
