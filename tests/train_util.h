/* Helpers for the trainer's tests that read its internals. */
#ifndef LSD_TESTS_TRAIN_UTIL_H
#define LSD_TESTS_TRAIN_UTIL_H

#include <stddef.h>

#include "train/train.h"

/* Every trained tensor of the trainer, in order, as one malloc'd float32 array of *count values (NULL if out of
 * memory). */
float *trainer_weights(const lsd_trainer *tr, size_t *count);

#endif
