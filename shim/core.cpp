// Runtime, scopes, errors, tensor creation, host transfer and random numbers.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/api/include/torch/version.h>

#include <cstring>
#include <map>
#include <mutex>
#include <algorithm>
#include <new>

#include "internal.hpp"

#if defined(LSD_WITH_CUDA)
#include <ATen/cuda/CUDAContext.h>
#endif

namespace {
thread_local std::string g_message;
thread_local int g_status = 0;
} // namespace

namespace lsdt {

std::atomic<bool> g_profiling{false};

namespace {
std::mutex g_profile_mutex;
std::map<std::string, std::pair<long, double>> g_profile;
} // namespace

void profile_add(const char *name, double seconds)
{
    std::lock_guard<std::mutex> lock(g_profile_mutex);
    auto &e = g_profile[name];
    e.first++;
    e.second += seconds;
}

void set_error(lsdt_scope *s, int status, const std::string &msg)
{
    if (s) {
        if (!s->status) {
            s->status = status;
            s->message = msg;
        }
    }
    g_status = status;
    g_message = msg;
}

void clear_error()
{
    g_status = 0;
}

int classify(const std::exception &e, std::string &msg)
{
    if (auto *ce = dynamic_cast<const c10::Error *>(&e)) {
        msg = ce->what_without_backtrace();
        if (msg.find("out of memory") != std::string::npos)
            return OOM;
        if (msg.find("CUDA") != std::string::npos || msg.find("cuda") != std::string::npos)
            return DEVICE;
        return SHAPE;
    }
    msg = e.what();
    if (auto *se = dynamic_cast<const status_error *>(&e))
        return se->status;
    if (dynamic_cast<const std::bad_alloc *>(&e))
        return OOM;
    if (dynamic_cast<const std::invalid_argument *>(&e))
        return INVALID;
    return INTERNAL;
}

lsdt_tensor *wrap(lsdt_scope *s, at::Tensor t)
{
    auto *h = new lsdt_tensor{std::move(t), s};
    if (s)
        s->items.push_back(h);
    return h;
}

at::ScalarType scalar_type(lsdt_dtype dt)
{
    switch (dt) {
    case LSDT_F32: return at::kFloat;
    case LSDT_F16: return at::kHalf;
    case LSDT_BF16: return at::kBFloat16;
    case LSDT_I64: return at::kLong;
    case LSDT_F64: return at::kDouble;
    case LSDT_I32: return at::kInt;
    case LSDT_I16: return at::kShort;
    case LSDT_I8: return at::kChar;
    case LSDT_U8: return at::kByte;
    case LSDT_BOOL: return at::kBool;
    }
    throw std::invalid_argument("unknown dtype " + std::to_string((int)dt));
}

lsdt_dtype from_scalar_type(at::ScalarType st)
{
    switch (st) {
    case at::kFloat: return LSDT_F32;
    case at::kHalf: return LSDT_F16;
    case at::kBFloat16: return LSDT_BF16;
    case at::kLong: return LSDT_I64;
    case at::kDouble: return LSDT_F64;
    case at::kInt: return LSDT_I32;
    case at::kShort: return LSDT_I16;
    case at::kChar: return LSDT_I8;
    case at::kByte: return LSDT_U8;
    case at::kBool: return LSDT_BOOL;
    default: return LSDT_F32;
    }
}

c10::Device device(const char *name)
{
    if (!name || !*name)
        return c10::Device(c10::kCPU);
    return c10::Device(std::string(name));
}

std::vector<int64_t> dims(const int64_t *shape, int ndim)
{
    if (ndim < 0 || ndim > LSDT_MAX_DIMS || (ndim && !shape))
        throw std::invalid_argument("bad shape: ndim " + std::to_string(ndim));
    return std::vector<int64_t>(shape, shape + ndim);
}

} // namespace lsdt

using namespace lsdt;

extern "C" {

const char *lsdt_last_error(void) { return g_message.c_str(); }
int lsdt_last_status(void) { return g_status; }

const char *lsdt_torch_version(void)
{
    static const std::string v = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) +
                                 "." + std::to_string(TORCH_VERSION_PATCH);
    return v.c_str();
}

int lsdt_set_num_threads(int n)
{
    return call("lsdt_set_num_threads", [&] {
        if (n > 0)
            at::set_num_threads(n);
    });
}

int lsdt_get_num_threads(void) { return at::get_num_threads(); }

int lsdt_cuda_device_count(void)
{
#if defined(LSD_WITH_CUDA)
    try {
        return (int)at::cuda::getNumGPUs();
    } catch (...) {
        return 0;
    }
#else
    return 0;
#endif
}

size_t lsdt_dtype_size(lsdt_dtype dt)
{
    try {
        return c10::elementSize(scalar_type(dt));
    } catch (...) {
        return 0;
    }
}

int lsdt_device_check(const char *name)
{
    return call("device", [&] {
        c10::Device d = device(name);
        if (d.is_cpu())
            return;
        if (!d.is_cuda())
            throw std::invalid_argument(std::string("unsupported device '") + name + "'");
        int n = lsdt_cuda_device_count();
        if (n == 0)
            throw c10::Error({__func__, __FILE__, __LINE__},
                             std::string("device '") + name + "': no CUDA device (this build or machine has none)");
        if (d.has_index() && d.index() >= n)
            throw c10::Error({__func__, __FILE__, __LINE__}, std::string("device '") + name + "': only " +
                                                                 std::to_string(n) + " CUDA device(s)");
    });
}

void lsdt_profile_enable(int on)
{
    std::lock_guard<std::mutex> lock(g_profile_mutex);
    g_profile.clear();
    g_profiling.store(on != 0);
}

size_t lsdt_profile_report(char *buf, size_t n)
{
    std::lock_guard<std::mutex> lock(g_profile_mutex);
    std::vector<std::pair<double, std::string>> rows;
    for (auto &e : g_profile)
        rows.emplace_back(e.second.second, e.first + " x" + std::to_string(e.second.first));
    std::sort(rows.rbegin(), rows.rend());
    std::string out;
    for (auto &r : rows) {
        char line[160];
        std::snprintf(line, sizeof line, "%9.3f s  %s\n", r.first, r.second.c_str());
        out += line;
    }
    if (buf && n)
        std::snprintf(buf, n, "%s", out.c_str());
    return out.size();
}

namespace {
// What lsdt_scope_child hands out when it cannot allocate: failed from the start, so ops return at once and
// lsdt_scope_return leaves it alone.
lsdt_scope g_failed_child = [] {
    lsdt_scope f;
    f.status = OOM;
    f.message = "scope allocation failed";
    return f;
}();

// Removes t from s's list (searching from the end: the result is usually the newest item); false if absent.
bool unlist(lsdt_scope *s, lsdt_tensor *t)
{
    for (size_t i = s->items.size(); i-- > 0;)
        if (s->items[i] == t) {
            s->items.erase(s->items.begin() + (long)i);
            return true;
        }
    return false;
}
} // namespace

lsdt_scope *lsdt_scope_begin(void)
{
    try {
        return new lsdt_scope();
    } catch (...) {
        return nullptr;
    }
}

lsdt_tensor *lsdt_scope_keep(lsdt_scope *s, lsdt_tensor *t)
{
    if (t && s && unlist(s, t))
        t->owner = nullptr;
    return t;
}

void lsdt_scope_fail(lsdt_scope *s, int status, const char *message)
{
    set_error(s, status ? status : INTERNAL, message ? message : "failure");
}

int lsdt_scope_status(const lsdt_scope *s) { return s ? s->status : INVALID; }

int lsdt_scope_end(lsdt_scope *s)
{
    if (!s) {
        set_error(nullptr, OOM, "scope allocation failed");
        return OOM;
    }
    if (s == &g_failed_child) // ended by mistake instead of returned: it owns nothing and is not ours to delete
        return s->status;
    for (lsdt_tensor *t : s->items)
        delete t;
    int st = s->status;
    if (st) {
        g_status = st;
        g_message = s->message;
    }
    delete s;
    return st;
}

lsdt_scope *lsdt_scope_child(lsdt_scope *parent)
{
    if (parent && parent->status)
        return &g_failed_child;
    try {
        auto *c = new lsdt_scope();
        c->parent = parent;
        return c;
    } catch (...) {
        set_error(parent, OOM, "scope allocation failed");
        return &g_failed_child;
    }
}

lsdt_tensor *lsdt_scope_return(lsdt_scope *c, lsdt_tensor *t)
{
    if (!c || c == &g_failed_child)
        return nullptr;
    lsdt_scope *parent = c->parent;
    int st = c->status;
    if (st)
        set_error(parent, st, c->message);
    else if (t && t->owner == c) {
        unlist(c, t);
        t->owner = parent;
        if (parent) {
            try {
                parent->items.push_back(t);
            } catch (...) {
                t->owner = nullptr;
                delete t;
                set_error(parent, OOM, "scope allocation failed");
                t = nullptr;
            }
        }
    }
    for (lsdt_tensor *x : c->items)
        delete x;
    delete c;
    return st ? nullptr : t;
}

void lsdt_scope_drop(lsdt_scope *s, lsdt_tensor *t)
{
    if (s && t && t->owner == s && unlist(s, t))
        delete t;
}

void lsdt_free(lsdt_tensor *t)
{
    if (t && !t->owner)
        delete t;
}

lsdt_tensor *lsdt_from_host(lsdt_scope *s, const void *data, lsdt_dtype src, const int64_t *shape, int ndim,
                            lsdt_dtype dst, const char *dev)
{
    return op(s, "from_host", {data}, [&] {
        auto src_t = at::from_blob(const_cast<void *>(data), dims(shape, ndim), at::TensorOptions(scalar_type(src)));
        return src_t.to(device(dev), scalar_type(dst), false, /*copy=*/true);
    });
}

lsdt_tensor *lsdt_from_blob(lsdt_scope *s, void *data, lsdt_dtype dt, const int64_t *shape, int ndim,
                            void (*release)(void *ctx), void *ctx)
{
    return op(s, "from_blob", {data}, [&] {
        return at::from_blob(
            data, dims(shape, ndim), [release, ctx](void *) { if (release) release(ctx); },
            at::TensorOptions(scalar_type(dt)));
    });
}

lsdt_tensor *lsdt_zeros(lsdt_scope *s, const int64_t *shape, int ndim, lsdt_dtype dt, const char *dev)
{
    return op(s, "zeros", {}, [&] {
        return at::zeros(dims(shape, ndim), at::TensorOptions(scalar_type(dt)).device(device(dev)));
    });
}

lsdt_tensor *lsdt_full(lsdt_scope *s, const int64_t *shape, int ndim, double value, lsdt_dtype dt, const char *dev)
{
    return op(s, "full", {}, [&] {
        return at::full(dims(shape, ndim), value, at::TensorOptions(scalar_type(dt)).device(device(dev)));
    });
}

lsdt_tensor *lsdt_arange(lsdt_scope *s, double start, double end, double step, lsdt_dtype dt, const char *dev)
{
    return op(s, "arange", {}, [&] {
        return at::arange(start, end, step, at::TensorOptions(scalar_type(dt)).device(device(dev)));
    });
}

lsdt_tensor *lsdt_scalar(lsdt_scope *s, double value, lsdt_dtype dt, const char *dev)
{
    return op(s, "scalar", {}, [&] {
        return at::scalar_tensor(value, at::TensorOptions(scalar_type(dt)).device(device(dev)));
    });
}

int lsdt_to_host(const lsdt_tensor *t, void *out, lsdt_dtype dst, size_t n)
{
    if (!t || !out) {
        set_error(nullptr, INVALID, "to_host: NULL argument");
        return INVALID;
    }
    return call("to_host", [&] {
        if ((size_t)t->t.numel() != n)
            throw std::invalid_argument("to_host: tensor has " + std::to_string(t->t.numel()) +
                                        " elements, buffer " + std::to_string(n));
        at::Tensor c = t->t.detach().to(at::kCPU, scalar_type(dst)).contiguous();
        if (n) /* an empty tensor's data_ptr may be NULL, which memcpy must not get */
            std::memcpy(out, c.data_ptr(), n * c.element_size());
    });
}

int lsdt_copy_(lsdt_tensor *dst, const lsdt_tensor *src)
{
    if (!dst || !src) {
        set_error(nullptr, INVALID, "copy_: NULL argument");
        return INVALID;
    }
    return call("copy_", [&] {
        c10::AutoGradMode no_grad(false);
        dst->t.copy_(src->t);
    });
}

int lsdt_ndim(const lsdt_tensor *t) { return t ? (int)t->t.dim() : 0; }

int64_t lsdt_size(const lsdt_tensor *t, int d)
{
    if (!t)
        return 0;
    int nd = (int)t->t.dim();
    if (d < 0)
        d += nd;
    return d >= 0 && d < nd ? t->t.size(d) : 0;
}

int64_t lsdt_numel(const lsdt_tensor *t) { return t ? t->t.numel() : 0; }
lsdt_dtype lsdt_get_dtype(const lsdt_tensor *t) { return t ? from_scalar_type(t->t.scalar_type()) : LSDT_F32; }

void lsdt_get_device(const lsdt_tensor *t, char *buf, size_t n)
{
    if (!buf || !n)
        return;
    std::string d = t ? t->t.device().str() : "";
    std::snprintf(buf, n, "%s", d.c_str());
}

struct lsdt_generator {
    at::Generator g;
};

lsdt_generator *lsdt_generator_new(uint64_t seed)
{
    try {
        return new lsdt_generator{at::make_generator<at::CPUGeneratorImpl>(seed)};
    } catch (...) {
        set_error(nullptr, OOM, "generator allocation failed");
        return nullptr;
    }
}

void lsdt_generator_free(lsdt_generator *g) { delete g; }

// Draws on the CPU in float32 (torch's CPU kernels define the sequence for a seed), then converts and moves.
lsdt_tensor *lsdt_randn(lsdt_scope *s, lsdt_generator *g, const int64_t *shape, int ndim, lsdt_dtype dt,
                        const char *dev)
{
    return op(s, "randn", {g}, [&] {
        return at::randn(dims(shape, ndim), g->g, at::TensorOptions(at::kFloat)).to(device(dev), scalar_type(dt));
    });
}

lsdt_tensor *lsdt_rand(lsdt_scope *s, lsdt_generator *g, const int64_t *shape, int ndim, lsdt_dtype dt,
                       const char *dev)
{
    return op(s, "rand", {g}, [&] {
        return at::rand(dims(shape, ndim), g->g, at::TensorOptions(at::kFloat)).to(device(dev), scalar_type(dt));
    });
}

lsdt_tensor *lsdt_randint(lsdt_scope *s, lsdt_generator *g, int64_t low, int64_t high, const int64_t *shape, int ndim,
                          const char *dev)
{
    return op(s, "randint", {g}, [&] {
        return at::randint(low, high, dims(shape, ndim), g->g, at::TensorOptions(at::kLong)).to(device(dev));
    });
}

int lsdt_uniform_(lsdt_tensor *t, lsdt_generator *g, double low, double high)
{
    if (!t || !g) {
        set_error(nullptr, INVALID, "uniform_: NULL argument");
        return INVALID;
    }
    return call("uniform_", [&] {
        c10::AutoGradMode no_grad(false);
        at::Tensor cpu = at::empty(t->t.sizes(), at::TensorOptions(at::kFloat));
        cpu.uniform_(low, high, g->g);
        t->t.copy_(cpu);
    });
}

int lsdt_normal_(lsdt_tensor *t, lsdt_generator *g, double mean, double std)
{
    if (!t || !g) {
        set_error(nullptr, INVALID, "normal_: NULL argument");
        return INVALID;
    }
    return call("normal_", [&] {
        c10::AutoGradMode no_grad(false);
        at::Tensor cpu = at::empty(t->t.sizes(), at::TensorOptions(at::kFloat));
        cpu.normal_(mean, std, g->g);
        t->t.copy_(cpu);
    });
}

} // extern "C"
