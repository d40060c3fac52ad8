// Tensor operations: layout, arithmetic, reductions and the neural-network primitives.
#include <c10/core/GradMode.h>
#include <cmath>

#include "internal.hpp"

using namespace lsdt;

namespace {

const at::Tensor &T(const lsdt_tensor *x) { return x->t; }

int norm_dim(int d, int64_t nd)
{
    return d < 0 ? d + (int)nd : d;
}

// On CPU, oneDNN's 1x1 convolution runs fp32 GEMMs at twice the speed of the BLAS behind at::linear (measured
// 194 vs 107 GFLOP/s for SD's feed-forward). A row-major [N, C] input is exactly the channels-last storage of a
// [1, C, N, 1] image and a [O, C] weight that of a [O, C, 1, 1] kernel, so the convolution runs on views of the same
// memory and its channels-last output is the [N, O] result: no copies, and autograd sees ordinary view ops.
bool linear_as_conv_pays(const at::Tensor &x, const at::Tensor &w)
{
    return x.device().is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) &&
           w.scalar_type() == x.scalar_type() && x.dim() >= 2 && x.is_contiguous() && w.is_contiguous() &&
           x.numel() / x.size(-1) >= 64 && x.size(-1) >= 64 && w.size(0) >= 64;
}

at::Tensor linear_as_conv(const at::Tensor &x, const at::Tensor &w, const at::Tensor *b)
{
    int64_t c = x.size(-1), n = x.numel() / c, o = w.size(0);
    at::Tensor xc = x.as_strided({1, c, n, 1}, {n * c, 1, c, c});
    at::Tensor wc = w.as_strided({o, c, 1, 1}, {c, 1, c, c});
    at::Tensor y = at::conv2d(xc, wc, b ? c10::optional<at::Tensor>(*b) : c10::nullopt);
    if (!y.is_contiguous(at::MemoryFormat::ChannelsLast))
        y = y.contiguous(at::MemoryFormat::ChannelsLast);
    std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end()), strides(sizes.size());
    sizes.back() = o;
    int64_t stride = 1;
    for (size_t i = sizes.size(); i-- > 0; stride *= sizes[i])
        strides[i] = stride;
    return y.as_strided(sizes, strides);
}

// An input its caller declares dead after the op can take the op's result in its own memory, when nothing else can
// see that memory (s owns the only handle, no view shares the storage) and no gradient will need its old values.
bool reusable(const lsdt_scope *s, const lsdt_tensor *x)
{
    const at::Tensor &t = x->t;
    return x->owner == s && t.use_count() == 1 && t.storage().use_count() == 1 &&
           !(at::GradMode::is_enabled() && t.requires_grad());
}

} // namespace

extern "C" {

lsdt_tensor *lsdt_reshape(lsdt_scope *s, const lsdt_tensor *x, const int64_t *shape, int ndim)
{
    return op(s, "reshape", {x}, [&] { return T(x).reshape(dims(shape, ndim)); });
}

lsdt_tensor *lsdt_permute(lsdt_scope *s, const lsdt_tensor *x, const int *d, int ndim)
{
    return op(s, "permute", {x}, [&] {
        std::vector<int64_t> p(d, d + ndim);
        return T(x).permute(p);
    });
}

lsdt_tensor *lsdt_transpose(lsdt_scope *s, const lsdt_tensor *x, int d0, int d1)
{
    return op(s, "transpose", {x}, [&] { return T(x).transpose(d0, d1); });
}

lsdt_tensor *lsdt_contiguous(lsdt_scope *s, const lsdt_tensor *x)
{
    return op(s, "contiguous", {x}, [&] { return T(x).contiguous(); });
}

lsdt_tensor *lsdt_channels_last(lsdt_scope *s, const lsdt_tensor *x)
{
    return op(s, "channels_last", {x}, [&] { return T(x).contiguous(at::MemoryFormat::ChannelsLast); });
}

lsdt_tensor *lsdt_cat(lsdt_scope *s, lsdt_tensor *const *xs, int n, int dim)
{
    std::vector<at::Tensor> v;
    for (int i = 0; i < n; i++) {
        if (!xs || !xs[i])
            return op(s, "cat", {nullptr}, [] { return at::Tensor(); });
        v.push_back(xs[i]->t);
    }
    return op(s, "cat", {}, [&] { return at::cat(v, dim); });
}

lsdt_tensor *lsdt_chunk(lsdt_scope *s, const lsdt_tensor *x, int n, int idx, int dim)
{
    return op(s, "chunk", {x}, [&] {
        auto parts = T(x).chunk(n, dim);
        if (idx < 0 || idx >= (int)parts.size())
            throw std::invalid_argument("chunk index " + std::to_string(idx) + " of " + std::to_string(parts.size()));
        return parts[(size_t)idx];
    });
}

lsdt_tensor *lsdt_narrow(lsdt_scope *s, const lsdt_tensor *x, int dim, int64_t start, int64_t length)
{
    return op(s, "narrow", {x}, [&] { return T(x).narrow(dim, start, length); });
}

lsdt_tensor *lsdt_unsqueeze(lsdt_scope *s, const lsdt_tensor *x, int dim)
{
    return op(s, "unsqueeze", {x}, [&] { return T(x).unsqueeze(dim); });
}

lsdt_tensor *lsdt_expand(lsdt_scope *s, const lsdt_tensor *x, const int64_t *shape, int ndim)
{
    return op(s, "expand", {x}, [&] { return T(x).expand(dims(shape, ndim)); });
}

lsdt_tensor *lsdt_to_dtype(lsdt_scope *s, const lsdt_tensor *x, lsdt_dtype dt)
{
    return op(s, "to_dtype", {x}, [&] { return T(x).to(scalar_type(dt)); });
}

lsdt_tensor *lsdt_to_device(lsdt_scope *s, const lsdt_tensor *x, const char *dev)
{
    return op(s, "to_device", {x}, [&] { return T(x).to(device(dev)); });
}

lsdt_tensor *lsdt_alias(lsdt_scope *s, const lsdt_tensor *x)
{
    return op(s, "alias", {x}, [&] { return T(x); });
}

lsdt_tensor *lsdt_clone(lsdt_scope *s, const lsdt_tensor *x)
{
    return op(s, "clone", {x}, [&] { return T(x).clone(); });
}

lsdt_tensor *lsdt_embedding(lsdt_scope *s, const lsdt_tensor *ids, const lsdt_tensor *weight)
{
    return op(s, "embedding", {ids, weight}, [&] {
        int64_t v = T(weight).size(0);
        if (T(ids).numel() && (T(ids).min().item<int64_t>() < 0 || T(ids).max().item<int64_t>() >= v))
            throw std::invalid_argument("embedding: token id outside [0, " + std::to_string(v) + ")");
        return at::embedding(T(weight), T(ids));
    });
}

lsdt_tensor *lsdt_index_select(lsdt_scope *s, const lsdt_tensor *x, int dim, const lsdt_tensor *index)
{
    return op(s, "index_select", {x, index}, [&] { return at::index_select(T(x), dim, T(index)); });
}

lsdt_tensor *lsdt_add(lsdt_scope *s, const lsdt_tensor *a, const lsdt_tensor *b)
{
    return op(s, "add", {a, b}, [&] { return T(a) + T(b); });
}

lsdt_tensor *lsdt_sub(lsdt_scope *s, const lsdt_tensor *a, const lsdt_tensor *b)
{
    return op(s, "sub", {a, b}, [&] { return T(a) - T(b); });
}

lsdt_tensor *lsdt_mul(lsdt_scope *s, const lsdt_tensor *a, const lsdt_tensor *b)
{
    return op(s, "mul", {a, b}, [&] { return T(a) * T(b); });
}

lsdt_tensor *lsdt_div(lsdt_scope *s, const lsdt_tensor *a, const lsdt_tensor *b)
{
    return op(s, "div", {a, b}, [&] { return T(a) / T(b); });
}

lsdt_tensor *lsdt_add_scaled(lsdt_scope *s, const lsdt_tensor *a, const lsdt_tensor *b, double alpha)
{
    return op(s, "add_scaled", {a, b}, [&] { return at::add(T(a), T(b), alpha); });
}

lsdt_tensor *lsdt_add_scalar(lsdt_scope *s, const lsdt_tensor *a, double v)
{
    return op(s, "add_scalar", {a}, [&] { return T(a) + v; });
}

lsdt_tensor *lsdt_mul_scalar(lsdt_scope *s, const lsdt_tensor *a, double v)
{
    return op(s, "mul_scalar", {a}, [&] { return T(a) * v; });
}

lsdt_tensor *lsdt_pow_scalar(lsdt_scope *s, const lsdt_tensor *a, double p)
{
    return op(s, "pow_scalar", {a}, [&] { return at::pow(T(a), p); });
}

#define UNARY(name, expr)                                                      \
    lsdt_tensor *lsdt_##name(lsdt_scope *s, const lsdt_tensor *a)              \
    {                                                                          \
        return op(s, #name, {a}, [&] { return expr; });                        \
    }
UNARY(neg, -T(a))
UNARY(exp, at::exp(T(a)))
UNARY(log, at::log(T(a)))
UNARY(sqrt, at::sqrt(T(a)))
UNARY(sin, at::sin(T(a)))
UNARY(cos, at::cos(T(a)))
UNARY(silu, at::silu(T(a)))
UNARY(gelu, at::gelu(T(a)))
UNARY(quick_gelu, T(a) * at::sigmoid(T(a) * 1.702))
UNARY(sum, T(a).sum())
UNARY(mean, T(a).mean())
#undef UNARY

lsdt_tensor *lsdt_clamp(lsdt_scope *s, const lsdt_tensor *a, double lo, double hi)
{
    return op(s, "clamp", {a}, [&] { return at::clamp(T(a), lo, hi); });
}

lsdt_tensor *lsdt_matmul(lsdt_scope *s, const lsdt_tensor *a, const lsdt_tensor *b)
{
    return op(s, "matmul", {a, b}, [&] { return at::matmul(T(a), T(b)); });
}

int lsdt_add_(lsdt_tensor *dst, const lsdt_tensor *src, double alpha)
{
    return inplace("add_", dst, src, true, [&] { dst->t.add_(src->t.to(dst->t.scalar_type()), alpha); });
}

int lsdt_mul_scalar_(lsdt_tensor *dst, double v)
{
    return inplace("mul_scalar_", dst, nullptr, false, [&] { dst->t.mul_(v); });
}

int lsdt_zero_(lsdt_tensor *dst)
{
    return inplace("zero_", dst, nullptr, false, [&] { dst->t.zero_(); });
}

lsdt_tensor *lsdt_mean_dims(lsdt_scope *s, const lsdt_tensor *x, const int *d, int n)
{
    return op(s, "mean_dims", {x}, [&] {
        std::vector<int64_t> v(d, d + n);
        return T(x).mean(v);
    });
}

lsdt_tensor *lsdt_mse_loss(lsdt_scope *s, const lsdt_tensor *a, const lsdt_tensor *b)
{
    return op(s, "mse_loss", {a, b}, [&] { return at::mse_loss(T(a), T(b)); });
}

int lsdt_all_finite(const lsdt_tensor *x, int *out)
{
    if (!x || !out) {
        set_error(nullptr, INVALID, "all_finite: NULL argument");
        return INVALID;
    }
    return call("all_finite", [&] { *out = at::isfinite(x->t).all().item<bool>() ? 1 : 0; });
}

int lsdt_item(const lsdt_tensor *x, double *out)
{
    if (!x || !out) {
        set_error(nullptr, INVALID, "item: NULL argument");
        return INVALID;
    }
    return call("item", [&] { *out = x->t.item<double>(); });
}

lsdt_tensor *lsdt_linear(lsdt_scope *s, const lsdt_tensor *x, const lsdt_tensor *w, const lsdt_tensor *b)
{
    return op(s, "linear", {x, w}, [&] {
        if (linear_as_conv_pays(T(x), T(w)))
            return linear_as_conv(T(x), T(w), b ? &T(b) : nullptr);
        return b ? at::linear(T(x), T(w), T(b)) : at::linear(T(x), T(w));
    });
}

lsdt_tensor *lsdt_conv2d(lsdt_scope *s, const lsdt_tensor *x, const lsdt_tensor *w, const lsdt_tensor *b, int stride,
                         int padding)
{
    return op(s, "conv2d", {x, w}, [&] {
        c10::optional<at::Tensor> bias;
        if (b)
            bias = T(b);
        return at::conv2d(T(x), T(w), bias, {stride, stride}, {padding, padding});
    });
}

lsdt_tensor *lsdt_group_norm(lsdt_scope *s, const lsdt_tensor *x, int groups, const lsdt_tensor *w,
                             const lsdt_tensor *b, double eps)
{
    return op(s, "group_norm", {x}, [&] {
        c10::optional<at::Tensor> ww, bb;
        if (w)
            ww = T(w);
        if (b)
            bb = T(b);
        return at::group_norm(T(x), groups, ww, bb, eps);
    });
}

lsdt_tensor *lsdt_group_norm_silu(lsdt_scope *s, const lsdt_tensor *x, int groups, const lsdt_tensor *w,
                                  const lsdt_tensor *b, double eps)
{
    return op(s, "group_norm_silu", {x}, [&] {
        at::Tensor y = at::group_norm(T(x), groups, w ? c10::optional<at::Tensor>(T(w)) : c10::nullopt,
                                      b ? c10::optional<at::Tensor>(T(b)) : c10::nullopt, eps);
        // The norm's output is fresh and used only here, so without autograd the SiLU can overwrite it: one
        // activation-sized allocation less per ResNet half (VAE decoding at 512x512 moves 134 MB per call).
        return y.requires_grad() ? at::silu(y) : at::silu_(y);
    });
}

lsdt_tensor *lsdt_group_norm_silu_reuse(lsdt_scope *s, lsdt_tensor *x, int groups, const lsdt_tensor *w,
                                        const lsdt_tensor *b, double eps)
{
    if (!x || !reusable(s, x) || x->t.dim() < 3 || groups < 1 || x->t.size(1) % groups)
        return lsdt_group_norm_silu(s, x, groups, w, b, eps);
    return op(s, "group_norm_silu_", {x}, [&] {
        at::Tensor t = T(x);
        int64_t n = t.size(0), c = t.size(1);
        // [N, G, C/G, spatial] is a view in either memory format: splitting C and merging the spatial dims keep
        // their strides. The statistics reduce in double (var_mean's CPU accumulator), as native group_norm's do.
        at::Tensor v = t.view({n, groups, c / groups, -1});
        auto [var, mean] = at::var_mean(v, {2, 3}, /*unbiased=*/false, /*keepdim=*/true);
        at::Tensor scale = (var + eps).rsqrt_();
        if (w)
            scale = scale * T(w).view({1, groups, c / groups, 1});
        at::Tensor shift = -mean * scale;
        if (b)
            shift = shift + T(b).view({1, groups, c / groups, 1});
        v.mul_(scale).add_(shift);
        return at::silu_(t);
    });
}

lsdt_tensor *lsdt_add_reuse(lsdt_scope *s, lsdt_tensor *a, const lsdt_tensor *b)
{
    if (!a || !b || !reusable(s, a) || (at::GradMode::is_enabled() && b->t.requires_grad()) ||
        a->t.scalar_type() != b->t.scalar_type() || at::infer_size(a->t.sizes(), b->t.sizes()) != a->t.sizes())
        return lsdt_add(s, a, b);
    return op(s, "add_", {a, b}, [&] { return T(a).add_(T(b)); });
}

lsdt_tensor *lsdt_layer_norm(lsdt_scope *s, const lsdt_tensor *x, const lsdt_tensor *w, const lsdt_tensor *b,
                             double eps)
{
    return op(s, "layer_norm", {x}, [&] {
        c10::optional<at::Tensor> ww, bb;
        if (w)
            ww = T(w);
        if (b)
            bb = T(b);
        return at::layer_norm(T(x), {T(x).size(-1)}, ww, bb, eps);
    });
}

lsdt_tensor *lsdt_softmax(lsdt_scope *s, const lsdt_tensor *x, int dim)
{
    return op(s, "softmax", {x}, [&] { return at::softmax(T(x), norm_dim(dim, T(x).dim())); });
}

lsdt_tensor *lsdt_upsample_nearest2x(lsdt_scope *s, const lsdt_tensor *x)
{
    return op(s, "upsample_nearest2x", {x}, [&] {
        return at::upsample_nearest2d(T(x), {T(x).size(2) * 2, T(x).size(3) * 2});
    });
}

lsdt_tensor *lsdt_pad2d(lsdt_scope *s, const lsdt_tensor *x, int left, int right, int top, int bottom)
{
    return op(s, "pad2d", {x}, [&] {
        // constant_pad_nd answers in NCHW; keep the caller's (channels-last) layout for the convolution that follows.
        return at::constant_pad_nd(T(x), {left, right, top, bottom}, 0).contiguous(T(x).suggest_memory_format());
    });
}

} // extern "C"
