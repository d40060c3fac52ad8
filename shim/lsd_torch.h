/*
 * A small C API over libtorch: the only door from lib/ (C11) to the tensor library.
 *
 * Ownership. A tensor made by an op belongs to the scope passed to it and is freed by lsdt_scope_end, unless
 * lsdt_scope_keep moved it out first; then (as for tensors made with scope NULL) the caller frees it with
 * lsdt_free. Model weights are such owned tensors.
 *
 * Errors are sticky. An op that fails returns NULL and records its status and message in its scope; an op given
 * a NULL input, or run in a scope that has already failed, returns NULL at once. lsdt_scope_end returns the
 * first status (0 = ok) and lsdt_last_error() its message. Ops run with scope NULL report through the
 * thread-local lsdt_last_status()/lsdt_last_error() instead. Status numbers are lsd_status's.
 *
 * Nothing here throws: every body catches every C++ exception.
 */
#ifndef LSD_TORCH_H
#define LSD_TORCH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lsdt_tensor lsdt_tensor;
typedef struct lsdt_scope lsdt_scope;
typedef struct lsdt_generator lsdt_generator;

typedef enum lsdt_dtype {
    LSDT_F32 = 0,
    LSDT_F16 = 1,
    LSDT_BF16 = 2,
    LSDT_I64 = 3,
    LSDT_F64 = 4,
    LSDT_I32 = 5,
    LSDT_I16 = 6,
    LSDT_I8 = 7,
    LSDT_U8 = 8,
    LSDT_BOOL = 9
} lsdt_dtype;

#define LSDT_MAX_DIMS 8

/* ---- runtime ------------------------------------------------------------------------------------ */
const char *lsdt_last_error(void);
int lsdt_last_status(void);
const char *lsdt_torch_version(void);
int lsdt_set_num_threads(int n);
int lsdt_get_num_threads(void);
/* Makes libtorch's CPU allocator ask for transparent huge pages on blocks of 4 MiB and more (shim/allocator.cpp);
 * LSD_HUGE_PAGES=0 in the environment leaves it alone. Once per process, before the first tensor. 1 if installed. */
int lsdt_huge_pages_install(void);
int lsdt_cuda_device_count(void);
size_t lsdt_dtype_size(lsdt_dtype dt);
/* Checks a device string ("cpu", "cuda", "cuda:N"); 0 if usable here. */
int lsdt_device_check(const char *device);

/* Per-op wall-time accounting (for benchmarks): enable clears the table; report writes "seconds  op xN" lines,
 * slowest first, into buf and returns the full length. */
void lsdt_profile_enable(int on);
size_t lsdt_profile_report(char *buf, size_t n);

/* ---- scopes ------------------------------------------------------------------------------------- */
lsdt_scope *lsdt_scope_begin(void);
/* Moves t out of s: it survives lsdt_scope_end and is freed with lsdt_free. Returns t (NULL stays NULL). */
lsdt_tensor *lsdt_scope_keep(lsdt_scope *s, lsdt_tensor *t);
/* Records an error in s from C code (a wrong shape found by lib/), so it ends like an op failure. */
void lsdt_scope_fail(lsdt_scope *s, int status, const char *message);
int lsdt_scope_status(const lsdt_scope *s);
/* Frees every tensor still in s and s itself; returns the first error status (0 = ok). */
int lsdt_scope_end(lsdt_scope *s);
void lsdt_free(lsdt_tensor *t);
/* A scope for the intermediates of one block inside s (s may be NULL: the result is then the caller's). Without
 * autograd, ending it frees them at once, so the live memory of a forward pass is one block's, not the sum of all;
 * under autograd the graph keeps what backward needs either way. A child of a failed scope starts failed. */
lsdt_scope *lsdt_scope_child(lsdt_scope *parent);
/* Moves t (made in child, or anywhere) into child's parent, frees child and everything else in it, and hands its
 * first error to the parent. Returns t, or NULL when the child failed. */
lsdt_tensor *lsdt_scope_return(lsdt_scope *child, lsdt_tensor *t);
/* Frees t now if s owns it (an intermediate the caller knows is dead); anything else is left alone. */
void lsdt_scope_drop(lsdt_scope *s, lsdt_tensor *t);

/* ---- creation and host transfer ----------------------------------------------------------------- */
/* Copies host data of dtype src into a new tensor of dtype dst on device (NULL = cpu). */
lsdt_tensor *lsdt_from_host(lsdt_scope *s, const void *data, lsdt_dtype src, const int64_t *shape, int ndim,
                            lsdt_dtype dst, const char *device);
/* Wraps host memory without copying; release(ctx) is called when the last reference goes. CPU only. */
lsdt_tensor *lsdt_from_blob(lsdt_scope *s, void *data, lsdt_dtype dt, const int64_t *shape, int ndim,
                            void (*release)(void *ctx), void *ctx);
lsdt_tensor *lsdt_zeros(lsdt_scope *s, const int64_t *shape, int ndim, lsdt_dtype dt, const char *device);
lsdt_tensor *lsdt_full(lsdt_scope *s, const int64_t *shape, int ndim, double value, lsdt_dtype dt, const char *device);
lsdt_tensor *lsdt_arange(lsdt_scope *s, double start, double end, double step, lsdt_dtype dt, const char *device);
lsdt_tensor *lsdt_scalar(lsdt_scope *s, double value, lsdt_dtype dt, const char *device);
/* Copies t (any dtype/device/layout) into host memory as dst dtype, C-contiguous; n = element count of out. */
int lsdt_to_host(const lsdt_tensor *t, void *out, lsdt_dtype dst, size_t n);
/* Copies src into dst in place (same shape; dtype/device converted). Not recorded by autograd. */
int lsdt_copy_(lsdt_tensor *dst, const lsdt_tensor *src);

/* ---- metadata ----------------------------------------------------------------------------------- */
int lsdt_ndim(const lsdt_tensor *t);
int64_t lsdt_size(const lsdt_tensor *t, int dim); /* negative dim counts from the end */
int64_t lsdt_numel(const lsdt_tensor *t);
lsdt_dtype lsdt_get_dtype(const lsdt_tensor *t);
/* Writes "cpu" / "cuda:0" into buf. */
void lsdt_get_device(const lsdt_tensor *t, char *buf, size_t n);

/* ---- random ------------------------------------------------------------------------------------- */
/* A CPU generator with torch's semantics: lsdt_randn with generator seeded s draws exactly what
 * torch.randn(shape, generator=torch.Generator().manual_seed(s)) draws (mt19937, Box-Muller as torch's CPU
 * kernel), then moves the values to the device — so a seed gives the same image on CPU and CUDA. */
lsdt_generator *lsdt_generator_new(uint64_t seed);
void lsdt_generator_free(lsdt_generator *g);
lsdt_tensor *lsdt_randn(lsdt_scope *s, lsdt_generator *g, const int64_t *shape, int ndim, lsdt_dtype dt,
                        const char *device);
lsdt_tensor *lsdt_rand(lsdt_scope *s, lsdt_generator *g, const int64_t *shape, int ndim, lsdt_dtype dt,
                       const char *device);
/* uniform(-bound, bound) in place, e.g. kaiming-uniform init. */
int lsdt_uniform_(lsdt_tensor *t, lsdt_generator *g, double low, double high);
int lsdt_normal_(lsdt_tensor *t, lsdt_generator *g, double mean, double std);
lsdt_tensor *lsdt_randint(lsdt_scope *s, lsdt_generator *g, int64_t low, int64_t high, const int64_t *shape,
                          int ndim, const char *device);

/* ---- layout and shape --------------------------------------------------------------------------- */
lsdt_tensor *lsdt_reshape(lsdt_scope *s, const lsdt_tensor *x, const int64_t *shape, int ndim);
lsdt_tensor *lsdt_permute(lsdt_scope *s, const lsdt_tensor *x, const int *dims, int ndim);
lsdt_tensor *lsdt_transpose(lsdt_scope *s, const lsdt_tensor *x, int d0, int d1);
lsdt_tensor *lsdt_contiguous(lsdt_scope *s, const lsdt_tensor *x);
/* NCHW tensors stored channels-last (NHWC in memory); oneDNN's fast convolution path on CPU. */
lsdt_tensor *lsdt_channels_last(lsdt_scope *s, const lsdt_tensor *x);
lsdt_tensor *lsdt_cat(lsdt_scope *s, lsdt_tensor *const *xs, int n, int dim);
/* Piece idx of n equal chunks along dim. */
lsdt_tensor *lsdt_chunk(lsdt_scope *s, const lsdt_tensor *x, int n, int idx, int dim);
lsdt_tensor *lsdt_narrow(lsdt_scope *s, const lsdt_tensor *x, int dim, int64_t start, int64_t length);
lsdt_tensor *lsdt_unsqueeze(lsdt_scope *s, const lsdt_tensor *x, int dim);
lsdt_tensor *lsdt_expand(lsdt_scope *s, const lsdt_tensor *x, const int64_t *shape, int ndim);
lsdt_tensor *lsdt_to_dtype(lsdt_scope *s, const lsdt_tensor *x, lsdt_dtype dt);
lsdt_tensor *lsdt_to_device(lsdt_scope *s, const lsdt_tensor *x, const char *device);
/* Another handle on the same storage (for keeping a weight in a scope-owned list, e.g.). */
lsdt_tensor *lsdt_alias(lsdt_scope *s, const lsdt_tensor *x);
lsdt_tensor *lsdt_clone(lsdt_scope *s, const lsdt_tensor *x);
/* Rows of weight selected by integer ids: weight [V, D], ids [...] -> [..., D]. */
lsdt_tensor *lsdt_embedding(lsdt_scope *s, const lsdt_tensor *ids, const lsdt_tensor *weight);
lsdt_tensor *lsdt_index_select(lsdt_scope *s, const lsdt_tensor *x, int dim, const lsdt_tensor *index);

/* ---- arithmetic (broadcasting as torch) --------------------------------------------------------- */
lsdt_tensor *lsdt_add(lsdt_scope *s, const lsdt_tensor *a, const lsdt_tensor *b);
lsdt_tensor *lsdt_sub(lsdt_scope *s, const lsdt_tensor *a, const lsdt_tensor *b);
lsdt_tensor *lsdt_mul(lsdt_scope *s, const lsdt_tensor *a, const lsdt_tensor *b);
lsdt_tensor *lsdt_div(lsdt_scope *s, const lsdt_tensor *a, const lsdt_tensor *b);
/* a + alpha * b */
lsdt_tensor *lsdt_add_scaled(lsdt_scope *s, const lsdt_tensor *a, const lsdt_tensor *b, double alpha);
lsdt_tensor *lsdt_add_scalar(lsdt_scope *s, const lsdt_tensor *a, double v);
lsdt_tensor *lsdt_mul_scalar(lsdt_scope *s, const lsdt_tensor *a, double v);
lsdt_tensor *lsdt_pow_scalar(lsdt_scope *s, const lsdt_tensor *a, double p);
lsdt_tensor *lsdt_neg(lsdt_scope *s, const lsdt_tensor *a);
lsdt_tensor *lsdt_exp(lsdt_scope *s, const lsdt_tensor *a);
lsdt_tensor *lsdt_log(lsdt_scope *s, const lsdt_tensor *a);
lsdt_tensor *lsdt_sqrt(lsdt_scope *s, const lsdt_tensor *a);
lsdt_tensor *lsdt_sin(lsdt_scope *s, const lsdt_tensor *a);
lsdt_tensor *lsdt_cos(lsdt_scope *s, const lsdt_tensor *a);
lsdt_tensor *lsdt_clamp(lsdt_scope *s, const lsdt_tensor *a, double lo, double hi);
lsdt_tensor *lsdt_matmul(lsdt_scope *s, const lsdt_tensor *a, const lsdt_tensor *b);
/* In place: dst += alpha * src (no autograd). Used to fuse adapters into base weights. */
int lsdt_add_(lsdt_tensor *dst, const lsdt_tensor *src, double alpha);
int lsdt_mul_scalar_(lsdt_tensor *dst, double v);
int lsdt_zero_(lsdt_tensor *dst);

/* ---- reductions --------------------------------------------------------------------------------- */
lsdt_tensor *lsdt_sum(lsdt_scope *s, const lsdt_tensor *x);
lsdt_tensor *lsdt_mean(lsdt_scope *s, const lsdt_tensor *x);
/* Mean over the given dims (keepdim false). */
lsdt_tensor *lsdt_mean_dims(lsdt_scope *s, const lsdt_tensor *x, const int *dims, int n);
lsdt_tensor *lsdt_mse_loss(lsdt_scope *s, const lsdt_tensor *a, const lsdt_tensor *b); /* mean */
/* 1 if every element is finite. */
int lsdt_all_finite(const lsdt_tensor *x, int *out);
/* The value of a one-element tensor. */
int lsdt_item(const lsdt_tensor *x, double *out);

/* ---- neural-network primitives ------------------------------------------------------------------ */
/* y = x W^T + b; b may be NULL. */
lsdt_tensor *lsdt_linear(lsdt_scope *s, const lsdt_tensor *x, const lsdt_tensor *w, const lsdt_tensor *b);
lsdt_tensor *lsdt_conv2d(lsdt_scope *s, const lsdt_tensor *x, const lsdt_tensor *w, const lsdt_tensor *b,
                         int stride, int padding);
lsdt_tensor *lsdt_group_norm(lsdt_scope *s, const lsdt_tensor *x, int groups, const lsdt_tensor *w,
                             const lsdt_tensor *b, double eps);
/* silu(group_norm(x)), as every ResNet block and network tail has it (in place when nothing needs the gradient). */
lsdt_tensor *lsdt_group_norm_silu(lsdt_scope *s, const lsdt_tensor *x, int groups, const lsdt_tensor *w,
                                  const lsdt_tensor *b, double eps);
lsdt_tensor *lsdt_layer_norm(lsdt_scope *s, const lsdt_tensor *x, const lsdt_tensor *w, const lsdt_tensor *b,
                             double eps);
/* Ops on an input the caller declares dead after the call (x, a): when s owns it, nothing else shares its memory and
 * no gradient needs it, the result is computed into that memory (a new handle on it; the caller still drops x or a);
 * otherwise they are lsdt_group_norm_silu and lsdt_add. One activation-sized allocation less each: at the VAE
 * decoder's full resolution, that is what sets the peak. */
lsdt_tensor *lsdt_group_norm_silu_reuse(lsdt_scope *s, lsdt_tensor *x, int groups, const lsdt_tensor *w,
                                        const lsdt_tensor *b, double eps);
lsdt_tensor *lsdt_add_reuse(lsdt_scope *s, lsdt_tensor *a, const lsdt_tensor *b);
lsdt_tensor *lsdt_silu(lsdt_scope *s, const lsdt_tensor *x);
lsdt_tensor *lsdt_gelu(lsdt_scope *s, const lsdt_tensor *x); /* exact (erf) */
lsdt_tensor *lsdt_quick_gelu(lsdt_scope *s, const lsdt_tensor *x); /* x * sigmoid(1.702 x) */
lsdt_tensor *lsdt_softmax(lsdt_scope *s, const lsdt_tensor *x, int dim);
lsdt_tensor *lsdt_upsample_nearest2x(lsdt_scope *s, const lsdt_tensor *x);
/* Zero padding of the last two dims of NCHW, in x's memory layout. */
lsdt_tensor *lsdt_pad2d(lsdt_scope *s, const lsdt_tensor *x, int left, int right, int top, int bottom);
/* softmax(q k^T * scale [+ causal mask]) v over [B, H, T, D]; scale <= 0 means 1/sqrt(D).
 * Without autograd the queries go through in blocks of q_chunk rows (<= 0: 128), one (head, block) task per
 * intra-op thread at a time, so the full score matrix never exists. upcast computes q k^T and the softmax in float32 whatever the input dtype.
 * Uses scaled_dot_product_attention where libtorch has it (2.x). */
lsdt_tensor *lsdt_attention(lsdt_scope *s, const lsdt_tensor *q, const lsdt_tensor *k, const lsdt_tensor *v,
                            int causal, double scale, int q_chunk, int upcast);

/* ---- autograd ----------------------------------------------------------------------------------- */
int lsdt_set_requires_grad(lsdt_tensor *t, int on);
int lsdt_requires_grad(const lsdt_tensor *t);
/* Thread-local no-grad region (nestable). Inference runs inside one. */
void lsdt_no_grad_begin(void);
void lsdt_no_grad_end(void);
int lsdt_backward(lsdt_tensor *loss);
/* The accumulated gradient of t as a new tensor in s (NULL with status 0 if there is none). */
lsdt_tensor *lsdt_grad(lsdt_scope *s, const lsdt_tensor *t);
int lsdt_zero_grad(lsdt_tensor *const *params, int n);
lsdt_tensor *lsdt_detach(lsdt_scope *s, const lsdt_tensor *x);
/* Clips the joint L2 norm of the grads of params to max_norm (max_norm <= 0: only measures). */
int lsdt_clip_grad_norm(lsdt_tensor *const *params, int n, double max_norm, double *total_norm_out);

/* ---- optimizer pieces (shim/optim.cpp): in place, outside autograd, as torch's Tensor methods ---------- */
int lsdt_lerp_(lsdt_tensor *dst, const lsdt_tensor *end, double weight);            /* dst += weight (end - dst) */
int lsdt_addcmul_(lsdt_tensor *dst, const lsdt_tensor *a, const lsdt_tensor *b, double value); /* += value a b */
int lsdt_addcdiv_(lsdt_tensor *dst, const lsdt_tensor *a, const lsdt_tensor *b, double value); /* += value a / b */
int lsdt_add_scalar_(lsdt_tensor *dst, double v);
lsdt_tensor *lsdt_div_scalar(lsdt_scope *s, const lsdt_tensor *a, double v);
lsdt_tensor *lsdt_sign(lsdt_scope *s, const lsdt_tensor *a);
lsdt_tensor *lsdt_abs(lsdt_scope *s, const lsdt_tensor *a);
lsdt_tensor *lsdt_rsqrt(lsdt_scope *s, const lsdt_tensor *a);

/* ---- gradient checkpointing -------------------------------------------------------------------- */
/* A block of a network as a function of its input tensors: its result, made in s. */
typedef lsdt_tensor *(*lsdt_block_fn)(lsdt_scope *s, const lsdt_tensor *const *in, int n, const void *user);
/* fn(in) without keeping its activations for backward: the result's graph holds only the inputs, and backward runs
 * fn again with autograd to get the gradients of the inputs and of every tensor fn reads that requires them (the
 * adapters inside the block, which need not be among the inputs). Gradients equal the plain call's. The block runs
 * once with autograd now to see whether anything in it needs a gradient; if nothing does (or in a no-grad region)
 * this is the plain call. fn and user must stay valid until backward has run. */
lsdt_tensor *lsdt_checkpoint(lsdt_scope *s, lsdt_block_fn fn, const void *user, const lsdt_tensor *const *in,
                             int n);

/* ---- data-parallel groups (shim/dist.cpp): c10d's store and process group -------------------------- */
typedef struct lsdt_dist lsdt_dist;
/* The rendezvous store: a FileStore at file (when non-empty), else a TCPStore at host:port that rank 0 serves.
 * Its calls, and the group's collectives, fail after timeout_s. NULL on failure (lsdt_last_error). */
lsdt_dist *lsdt_dist_store_new(const char *host, int port, const char *file, int rank, int world, double timeout_s);
/* Forms the process group over the store: backend "gloo" (over iface's address, or GLOO_SOCKET_IFNAME's
 * interface, or the host name's) or "nccl" (CUDA builds with LSD_WITH_NCCL). */
int lsdt_dist_group_new(lsdt_dist *d, const char *backend, const char *iface);
void lsdt_dist_free(lsdt_dist *d);
/* Store keys: set; get (waiting up to wait_s for the key, or, with wait_s <= 0, NOT_FOUND at once when it is not
 * there) into buf as a C string; add (atomic counter, the new value in *out). */
int lsdt_dist_set(lsdt_dist *d, const char *key, const char *value);
int lsdt_dist_get(lsdt_dist *d, const char *key, double wait_s, char *buf, size_t n);
int lsdt_dist_add(lsdt_dist *d, const char *key, int64_t delta, int64_t *out);
/* Sums, over the group, the gradients of params (a missing gradient counts as zeros and is then set) followed by
 * extra[n_extra], as one flat float32 buffer: one collective. */
int lsdt_dist_allreduce_grads(lsdt_dist *d, lsdt_tensor *const *params, int n, float *extra, int n_extra);
/* Copies root's tensors t (in place, outside autograd) and host[n_host] to every rank: one collective. */
int lsdt_dist_broadcast(lsdt_dist *d, lsdt_tensor *const *t, int n, int64_t *host, int n_host, int root);

#ifdef __cplusplus
}
#endif
#endif
