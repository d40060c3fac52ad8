/* Process-wide runtime defaults. */
#ifndef LSD_CORE_RUNTIME_H
#define LSD_CORE_RUNTIME_H

/* Applies the defaults (threads) once; called before the first model is built. */
void lsdi_runtime_init(void);

#endif
