/* output_dir/loss.png: the training loss (each step, faint, and its running mean), and the validation loss (points
 * joined), against the step: axes with round-number ticks, labels and a legend, drawn with cairo and written
 * atomically through lsd_image_save_png. */
#include <cairo.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train_log.h"

#define MARGIN_L 80
#define MARGIN_R 30
#define MARGIN_T 40
#define MARGIN_B 60

typedef struct frame {
    double x0, x1, y0, y1; /* data range */
    double px0, px1, py0, py1; /* plot area in pixels (py0 bottom) */
} frame;

static double px(const frame *f, double x)
{
    return f->px0 + (x - f->x0) / (f->x1 - f->x0) * (f->px1 - f->px0);
}

static double py(const frame *f, double y)
{
    return f->py0 - (y - f->y0) / (f->y1 - f->y0) * (f->py0 - f->py1);
}

/* A round tick spacing (1, 2 or 5 times a power of ten) giving about `want` ticks over span. */
static double tick_step(double span, int want)
{
    double raw = span / want, mag = pow(10, floor(log10(raw))), r = raw / mag;
    return (r < 1.5 ? 1 : r < 3.5 ? 2 : r < 7.5 ? 5 : 10) * mag;
}

static void text(cairo_t *cr, double x, double y, const char *s, double ax, double ay)
{
    cairo_text_extents_t e;
    cairo_text_extents(cr, s, &e);
    cairo_move_to(cr, x - e.width * ax - e.x_bearing, y + e.height * ay);
    cairo_show_text(cr, s);
}

static void range(const double *v, size_t n, double *lo, double *hi)
{
    for (size_t i = 0; i < n; i++)
        if (isfinite(v[i])) {
            *lo = fmin(*lo, v[i]);
            *hi = fmax(*hi, v[i]);
        }
}

static void axes(cairo_t *cr, const frame *f)
{
    cairo_set_line_width(cr, 1);
    cairo_set_font_size(cr, 13);
    char label[32];
    double sx = tick_step(f->x1 - f->x0, 8), sy = tick_step(f->y1 - f->y0, 6);
    for (double x = ceil(f->x0 / sx) * sx; x <= f->x1 + 1e-9 * sx; x += sx) {
        cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
        cairo_move_to(cr, px(f, x), f->py0);
        cairo_line_to(cr, px(f, x), f->py1);
        cairo_stroke(cr);
        cairo_set_source_rgb(cr, 0, 0, 0);
        cairo_move_to(cr, px(f, x), f->py0);
        cairo_line_to(cr, px(f, x), f->py0 + 5);
        cairo_stroke(cr);
        snprintf(label, sizeof label, "%g", x);
        text(cr, px(f, x), f->py0 + 10, label, 0.5, 1.0);
    }
    for (double y = ceil(f->y0 / sy) * sy; y <= f->y1 + 1e-9 * sy; y += sy) {
        cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
        cairo_move_to(cr, f->px0, py(f, y));
        cairo_line_to(cr, f->px1, py(f, y));
        cairo_stroke(cr);
        cairo_set_source_rgb(cr, 0, 0, 0);
        cairo_move_to(cr, f->px0 - 5, py(f, y));
        cairo_line_to(cr, f->px0, py(f, y));
        cairo_stroke(cr);
        snprintf(label, sizeof label, "%.4g", fabs(y) < 1e-12 * sy ? 0.0 : y);
        text(cr, f->px0 - 9, py(f, y), label, 1.0, 0.5);
    }
    cairo_rectangle(cr, f->px0, f->py1, f->px1 - f->px0, f->py0 - f->py1);
    cairo_stroke(cr);
    text(cr, (f->px0 + f->px1) / 2, f->py0 + 32, "step", 0.5, 1.0);
    cairo_save(cr);
    cairo_translate(cr, 22, (f->py0 + f->py1) / 2);
    cairo_rotate(cr, -M_PI / 2);
    text(cr, 0, 0, "loss", 0.5, 0.5);
    cairo_restore(cr);
}

static void line(cairo_t *cr, const frame *f, const double *x, const double *y, size_t n)
{
    int pen = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(y[i])) {
            pen = 0;
            continue;
        }
        if (pen)
            cairo_line_to(cr, px(f, x[i]), py(f, y[i]));
        else
            cairo_move_to(cr, px(f, x[i]), py(f, y[i]));
        pen = 1;
    }
    cairo_stroke(cr);
}

typedef struct legend_item {
    const char *label;
    double r, g, b, width;
    int dot;
} legend_item;

static void legend(cairo_t *cr, const frame *f, const legend_item *it, int n)
{
    cairo_set_font_size(cr, 13);
    double w = 0;
    for (int i = 0; i < n; i++) {
        cairo_text_extents_t e;
        cairo_text_extents(cr, it[i].label, &e);
        w = fmax(w, e.x_advance);
    }
    double x = f->px1 - w - 60, y = f->py1 + 10, h = 22.0 * n + 8;
    cairo_set_source_rgba(cr, 1, 1, 1, 0.9);
    cairo_rectangle(cr, x, y, w + 50, h);
    cairo_fill_preserve(cr);
    cairo_set_source_rgb(cr, 0.6, 0.6, 0.6);
    cairo_set_line_width(cr, 1);
    cairo_stroke(cr);
    for (int i = 0; i < n; i++) {
        double cy = y + 15 + 22.0 * i;
        cairo_set_source_rgb(cr, it[i].r, it[i].g, it[i].b);
        cairo_set_line_width(cr, it[i].width);
        cairo_move_to(cr, x + 8, cy);
        cairo_line_to(cr, x + 34, cy);
        cairo_stroke(cr);
        if (it[i].dot) {
            cairo_arc(cr, x + 21, cy, 3.5, 0, 2 * M_PI);
            cairo_fill(cr);
        }
        cairo_set_source_rgb(cr, 0, 0, 0);
        text(cr, x + 42, cy, it[i].label, 0.0, 0.5);
    }
}

/* The surface (opaque ARGB32) as RGB8, saved with the library's atomic PNG writer. */
static int save(cairo_surface_t *surf, const char *path)
{
    cairo_surface_flush(surf);
    int w = cairo_image_surface_get_width(surf), h = cairo_image_surface_get_height(surf);
    int stride = cairo_image_surface_get_stride(surf);
    const unsigned char *src = cairo_image_surface_get_data(surf);
    lsd_image img = {sizeof img, w, h, 3, malloc((size_t)w * h * 3)};
    if (!img.data || !src) {
        free(img.data);
        return -1;
    }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint32_t p;
            memcpy(&p, src + (size_t)y * stride + 4 * (size_t)x, 4);
            uint8_t *d = img.data + ((size_t)y * w + x) * 3;
            d[0] = (uint8_t)(p >> 16);
            d[1] = (uint8_t)(p >> 8);
            d[2] = (uint8_t)p;
        }
    const char *keys[1] = {"Software"}, *vals[1] = {"lora-sd train"};
    int rc = lsd_image_save_png(path, &img, keys, vals, 1) == LSD_OK ? 0 : -1;
    free(img.data);
    return rc;
}

int plot_losses(const loss_series *s, const char *png_path)
{
    cairo_surface_t *surf = cairo_image_surface_create(CAIRO_FORMAT_RGB24, LOSS_PLOT_WIDTH, LOSS_PLOT_HEIGHT);
    cairo_t *cr = cairo_create(surf);
    if (cairo_status(cr) != CAIRO_STATUS_SUCCESS) {
        cairo_destroy(cr);
        cairo_surface_destroy(surf);
        return -1;
    }
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_paint(cr);
    cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    frame f = {INFINITY, -INFINITY, INFINITY, -INFINITY, MARGIN_L, LOSS_PLOT_WIDTH - MARGIN_R,
               LOSS_PLOT_HEIGHT - MARGIN_B, MARGIN_T};
    range(s->step, s->n, &f.x0, &f.x1);
    range(s->val_step, s->n_val, &f.x0, &f.x1);
    range(s->loss, s->n, &f.y0, &f.y1);
    range(s->val_loss, s->n_val, &f.y0, &f.y1);
    if (!(f.x0 <= f.x1)) /* nothing to plot: empty axes over one step */
        f.x0 = 0, f.x1 = 1, f.y0 = 0, f.y1 = 1;
    if (f.x1 - f.x0 < 1)
        f.x0 -= 0.5, f.x1 += 0.5;
    double pad = (f.y1 - f.y0) * 0.05;
    if (pad <= 0)
        pad = fmax(fabs(f.y0) * 0.05, 1e-3);
    f.y0 = fmax(f.y0 - pad, f.y0 >= 0 ? 0 : -INFINITY);
    f.y1 += pad;
    axes(cr, &f);
    cairo_save(cr);
    cairo_rectangle(cr, f.px0, f.py1, f.px1 - f.px0, f.py0 - f.py1);
    cairo_clip(cr);
    legend_item items[3];
    int n_items = 0;
    cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
    if (s->n) {
        cairo_set_source_rgb(cr, 0.65, 0.78, 0.93);
        cairo_set_line_width(cr, 1);
        line(cr, &f, s->step, s->loss, s->n);
        items[n_items++] = (legend_item){"training loss", 0.65, 0.78, 0.93, 1, 0};
    }
    /* The running mean over a window of a tenth of the run shows the trend through the per-step noise. */
    size_t win = s->n / 10;
    double *mean = win >= 2 ? malloc(s->n * sizeof *mean) : NULL;
    if (mean) {
        double sum = 0;
        for (size_t i = 0; i < s->n; i++) {
            sum += s->loss[i] - (i >= win ? s->loss[i - win] : 0);
            mean[i] = sum / (double)(i + 1 < win ? i + 1 : win);
        }
        cairo_set_source_rgb(cr, 0.12, 0.35, 0.75);
        cairo_set_line_width(cr, 2);
        line(cr, &f, s->step, mean, s->n);
        items[n_items++] = (legend_item){"training loss (running mean)", 0.12, 0.35, 0.75, 2, 0};
        free(mean);
    }
    if (s->n_val) {
        cairo_set_source_rgb(cr, 0.9, 0.45, 0.05);
        cairo_set_line_width(cr, 2);
        line(cr, &f, s->val_step, s->val_loss, s->n_val);
        for (size_t i = 0; i < s->n_val; i++) {
            cairo_arc(cr, px(&f, s->val_step[i]), py(&f, s->val_loss[i]), 3.5, 0, 2 * M_PI);
            cairo_fill(cr);
        }
        items[n_items++] = (legend_item){"validation loss", 0.9, 0.45, 0.05, 2, 1};
    }
    cairo_restore(cr);
    if (n_items)
        legend(cr, &f, items, n_items);
    int rc = cairo_status(cr) == CAIRO_STATUS_SUCCESS ? save(surf, png_path) : -1;
    cairo_destroy(cr);
    cairo_surface_destroy(surf);
    return rc;
}
