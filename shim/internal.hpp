// Shared by the shim's translation units: the tensor/scope structs and the exception-to-status wrapper.
#pragma once

#include <ATen/ATen.h>

#include <c10/core/GradMode.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

#include "lsd_torch.h"

struct lsdt_tensor {
    at::Tensor t;
    lsdt_scope *owner; // nullptr once kept (or when made without a scope)
};

struct lsdt_scope {
    std::vector<lsdt_tensor *> items;
    int status = 0;
    std::string message;
    lsdt_scope *parent = nullptr; // set for lsdt_scope_child
};

namespace lsdt {

// lsd_status numbers (the shim does not include the public header).
enum : int { OK = 0, INVALID = 1, SHAPE = 5, OOM = 6, DEVICE = 7, INTERNAL = 11 };

// An error with its lsd_status, thrown through libtorch code (a checkpointed block failing inside backward).
struct status_error : std::runtime_error {
    int status;
    status_error(int st, const std::string &msg) : std::runtime_error(msg), status(st) {}
};

void set_error(lsdt_scope *s, int status, const std::string &msg);
void clear_error();
int classify(const std::exception &e, std::string &msg);
lsdt_tensor *wrap(lsdt_scope *s, at::Tensor t);
at::ScalarType scalar_type(lsdt_dtype dt);
lsdt_dtype from_scalar_type(at::ScalarType st);
c10::Device device(const char *name);
std::vector<int64_t> dims(const int64_t *shape, int ndim);

// Per-op wall time, for the benchmark's breakdown (lsdt_profile_enable); off, it costs one load per op.
extern std::atomic<bool> g_profiling;
void profile_add(const char *name, double seconds);

// Runs f (returning at::Tensor) with the sticky-error rules: a failed scope or a NULL input short-circuits.
template <typename F> lsdt_tensor *op(lsdt_scope *s, const char *name, std::initializer_list<const void *> inputs, F f)
{
    if (s && s->status)
        return nullptr;
    for (const void *p : inputs)
        if (!p) {
            set_error(s, INVALID, std::string(name) + ": NULL tensor input");
            return nullptr;
        }
    try {
        if (g_profiling.load(std::memory_order_relaxed)) {
            auto t0 = std::chrono::steady_clock::now();
            at::Tensor r = f();
            profile_add(name, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
            return wrap(s, std::move(r));
        }
        return wrap(s, f());
    } catch (const std::exception &e) {
        std::string msg;
        int st = classify(e, msg);
        set_error(s, st, std::string(name) + ": " + msg);
    } catch (...) {
        set_error(s, INTERNAL, std::string(name) + ": unknown C++ exception");
    }
    return nullptr;
}

// Same for calls returning a status.
template <typename F> int call(const char *name, F f)
{
    try {
        f();
        clear_error();
        return OK;
    } catch (const std::exception &e) {
        std::string msg;
        int st = classify(e, msg);
        set_error(nullptr, st, std::string(name) + ": " + msg);
        return st;
    } catch (...) {
        set_error(nullptr, INTERNAL, std::string(name) + ": unknown C++ exception");
        return INTERNAL;
    }
}

// An in-place update outside autograd (dst may be a leaf that requires grad): NULL dst, or NULL src when the op
// takes one, fails as INVALID.
template <typename F> int inplace(const char *name, lsdt_tensor *dst, const lsdt_tensor *src, bool need_src, F f)
{
    if (!dst || (need_src && !src)) {
        set_error(nullptr, INVALID, std::string(name) + ": NULL argument");
        return INVALID;
    }
    return call(name, [&] {
        c10::AutoGradMode no_grad(false);
        f();
    });
}

} // namespace lsdt
