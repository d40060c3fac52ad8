/* What `lora-sd train` writes about a run, from the library's metrics callback alone: metrics.jsonl, TensorBoard
 * event files, the progress line, and loss.png at the end; and how it stops on SIGINT / SIGTERM. */
#ifndef LSD_CLI_TRAIN_LOG_H
#define LSD_CLI_TRAIN_LOG_H

#include <stdio.h>

#include "lora_sd.h"

/* ---- metrics_jsonl.c: one JSON object a line, flushed after each ---- */
typedef struct jsonl_log jsonl_log;
/* Opens path for appending after keeping (atomically) only the lines of steps <= keep_through: a resumed run
 * continues the history of its checkpoint, a new run (keep_through 0) starts it afresh. */
int jsonl_open(const char *path, int keep_through, jsonl_log **out);
void jsonl_write(jsonl_log *l, const lsd_train_metrics *m);
void jsonl_close(jsonl_log *l);

/* Losses read back from a metrics.jsonl, in file order. */
typedef struct loss_series {
    double *step, *loss;       /* training steps */
    size_t n;
    double *val_step, *val_loss;
    size_t n_val;
} loss_series;
int jsonl_read_losses(const char *path, loss_series *out);
void loss_series_free(loss_series *s);

/* ---- tensorboard.c: events.out.tfevents.<time>.<host>, the TFRecord-framed Event protos TensorBoard reads ---- */
typedef struct tb_writer tb_writer;
/* A new event file in dir; resumed_at > 0 writes a SessionLog START there, which makes TensorBoard drop the
 * earlier files' events after that step. */
int tb_open(const char *dir, int resumed_at, tb_writer **out);
/* train/loss, train/lr, train/grad_norm, ... for a step; val/loss for a validation. */
void tb_write(tb_writer *w, const lsd_train_metrics *m);
void tb_close(tb_writer *w);

/* ---- plot.c: loss (and validation loss) against steps, with axes, ticks and a legend ---- */
#define LOSS_PLOT_WIDTH 900
#define LOSS_PLOT_HEIGHT 540
int plot_losses(const loss_series *s, const char *png_path);

/* ---- progress_line.c: one line rewritten in place on a terminal, a plain line per step otherwise ---- */
typedef struct progress_line {
    FILE *out;
    int tty;
    int max_steps;
    int first_step;   /* the step this process started from (resume) */
    double t0;        /* monotonic seconds when the first step of this process began */
    int open;         /* a \r line is on the terminal, not yet ended */
} progress_line;
void progress_init(progress_line *p, int tty, int first_step, int max_steps);
void progress_metrics(progress_line *p, const lsd_train_metrics *m);
/* Ends the line in place (a message can follow). */
void progress_break(progress_line *p);

/* ---- stop.c: SIGINT / SIGTERM ask the run to stop after the current step; a second one exits at once ---- */
void stop_install(void);
/* The signal that asked to stop, or 0. */
int stop_requested(void);

/* ---- launch.c: lora-sd train --nproc_per_node N ---- */
/* Runs N workers `lora-sd <argv...>` (argv: "train" and its arguments, without --nproc_per_node) with torchrun's
 * environment on this machine, forwards SIGINT/SIGTERM to them, and kills those still running `grace` seconds
 * after one failed. master_port 0: a free one. Returns the first failing worker's exit status, or 0. */
int train_launch(int nproc, const char *master_addr, int master_port, double grace, int argc, char **argv);

#endif
