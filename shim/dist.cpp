// c10d: a rendezvous store (TCPStore served by rank 0, or a FileStore) and a process group (Gloo; NCCL on CUDA
// builds made with LSD_WITH_NCCL), with the few collectives data-parallel training needs. Compiled with
// -DUSE_C10D_GLOO, which CMake's Torch target would add: without it ProcessGroupGloo.hpp declares nothing.
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef LSD_WITH_NCCL
#include <ATen/cuda/CUDAContext.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <cstdlib>
#include <cstring>

#include "internal.hpp"

using namespace lsdt;

struct lsdt_dist {
    c10::intrusive_ptr<c10d::Store> store;
    c10::intrusive_ptr<c10d::ProcessGroup> pg;
    int rank = 0, world = 1;
    std::chrono::milliseconds timeout{0};
};

namespace {

enum : int { IO = 2, UNSUPPORTED = 4, NOT_FOUND = 9 };

std::chrono::milliseconds to_ms(double seconds)
{
    return std::chrono::milliseconds((int64_t)(seconds * 1000.0 + 0.5));
}

// Collectives and store calls fail by c10::Error (timeouts, closed connections): for the caller those are I/O
// failures of the group, not the shape errors classify() takes c10::Errors for.
template <typename F> int net(const char *name, F f)
{
    try {
        f();
        clear_error();
        return OK;
    } catch (const status_error &e) {
        set_error(nullptr, e.status, std::string(name) + ": " + e.what());
        return e.status;
    } catch (const c10::Error &e) {
        set_error(nullptr, IO, std::string(name) + ": " + e.what_without_backtrace());
        return IO;
    } catch (const std::exception &e) {
        std::string msg;
        int st = classify(e, msg);
        set_error(nullptr, st == SHAPE || st == INTERNAL ? IO : st, std::string(name) + ": " + msg);
        return st == SHAPE || st == INTERNAL ? IO : st;
    } catch (...) {
        set_error(nullptr, INTERNAL, std::string(name) + ": unknown C++ exception");
        return INTERNAL;
    }
}

c10::intrusive_ptr<c10d::ProcessGroup> gloo_group(const c10::intrusive_ptr<c10d::Store> &store, int rank, int world,
                                                  const char *iface, std::chrono::milliseconds timeout)
{
    auto opts = c10d::ProcessGroupGloo::Options::create();
    // As torch.distributed: GLOO_SOCKET_IFNAME names the interface; else the given address; else the host name's.
    const char *ifname = std::getenv("GLOO_SOCKET_IFNAME");
    if (ifname && *ifname)
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    else if (iface && *iface)
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(iface));
    else
        opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    opts->timeout = timeout;
    return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
}

// The buffer the collectives run on: on the device of the tensors it carries (NCCL needs CUDA tensors).
at::TensorOptions buffer_options(lsdt_tensor *const *t, int n)
{
    auto o = at::TensorOptions().dtype(at::kFloat);
    return n > 0 && t[0] ? o.device(t[0]->t.device()) : o;
}

void wait(lsdt_dist *d, c10::intrusive_ptr<c10d::Work> w)
{
    if (!w->wait(d->timeout))
        throw status_error(IO, "timed out");
}

} // namespace

extern "C" {

lsdt_dist *lsdt_dist_store_new(const char *host, int port, const char *file, int rank, int world, double timeout_s)
{
    lsdt_dist *d = nullptr;
    int st = net("rendezvous store", [&] {
        auto timeout = to_ms(timeout_s);
        c10::intrusive_ptr<c10d::Store> store;
        if (file && *file) {
            store = c10::make_intrusive<c10d::FileStore>(file, world);
        } else {
            c10d::TCPStoreOptions o;
            o.port = (uint16_t)port;
            o.isServer = rank == 0;
            o.waitWorkers = false; // who joined is checked by the caller, so that a missing rank can be named
            o.timeout = timeout;
            store = c10::make_intrusive<c10d::TCPStore>(host, o);
        }
        store->setTimeout(timeout);
        d = new lsdt_dist;
        d->store = store;
        d->rank = rank;
        d->world = world;
        d->timeout = timeout;
    });
    return st ? nullptr : d;
}

int lsdt_dist_group_new(lsdt_dist *d, const char *backend, const char *iface)
{
    if (!d || !backend)
        return call("process group", [] { throw std::invalid_argument("NULL argument"); });
    return net("process group", [&] {
        // Its own key space, so that the caller's keys (lsd/...) never meet the backend's.
        auto store = c10::make_intrusive<c10d::PrefixStore>("pg", d->store);
        if (!std::strcmp(backend, "gloo")) {
            d->pg = gloo_group(store, d->rank, d->world, iface, d->timeout);
            return;
        }
        if (!std::strcmp(backend, "nccl")) {
#ifdef LSD_WITH_NCCL
            if (!at::cuda::is_available())
                throw status_error(UNSUPPORTED, "backend nccl: no CUDA device is visible");
            auto opts = c10d::ProcessGroupNCCL::Options::create();
            opts->timeout = d->timeout;
            d->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, d->rank, d->world, opts);
            return;
#else
            throw status_error(UNSUPPORTED, "backend nccl: this build has no NCCL (build with NCCL=1 against a CUDA "
                                            "libtorch)");
#endif
        }
        throw status_error(INVALID, std::string("backend \"") + backend + "\": expected gloo or nccl");
    });
}

void lsdt_dist_free(lsdt_dist *d)
{
    if (!d)
        return;
    try {
        d->pg.reset();
        d->store.reset();
    } catch (...) {
    }
    delete d;
}

int lsdt_dist_set(lsdt_dist *d, const char *key, const char *value)
{
    return net("store set", [&] {
        std::string v(value);
        d->store->set(key, std::vector<uint8_t>(v.begin(), v.end()));
    });
}

int lsdt_dist_get(lsdt_dist *d, const char *key, double wait_s, char *buf, size_t n)
{
    return net("store get", [&] {
        if (wait_s <= 0 && !d->store->check({key}))
            throw status_error(NOT_FOUND, std::string("no key ") + key);
        if (wait_s > 0)
            d->store->wait({key}, to_ms(wait_s));
        auto v = d->store->get(key);
        size_t len = v.size() < n - 1 ? v.size() : n - 1;
        std::memcpy(buf, v.data(), len);
        buf[len] = 0;
    });
}

int lsdt_dist_add(lsdt_dist *d, const char *key, int64_t delta, int64_t *out)
{
    return net("store add", [&] { *out = d->store->add(key, delta); });
}

int lsdt_dist_allreduce_grads(lsdt_dist *d, lsdt_tensor *const *params, int n, float *extra, int n_extra)
{
    return net("all-reduce", [&] {
        c10::AutoGradMode no_grad(false);
        std::vector<at::Tensor> parts;
        auto o = buffer_options(params, n);
        for (int i = 0; i < n; i++) {
            const at::Tensor &g = params[i]->t.grad();
            parts.push_back(g.defined() ? g.reshape(-1).to(at::kFloat) : at::zeros({params[i]->t.numel()}, o));
        }
        parts.push_back(at::from_blob(extra, {n_extra}, at::kFloat).to(o.device()));
        std::vector<at::Tensor> flat{at::cat(parts)};
        wait(d, d->pg->allreduce(flat));
        int64_t off = 0;
        for (int i = 0; i < n; i++) {
            at::Tensor &p = params[i]->t;
            at::Tensor part = flat[0].narrow(0, off, p.numel()).view(p.sizes()).to(p.scalar_type());
            off += p.numel();
            if (p.grad().defined())
                p.mutable_grad().copy_(part);
            else
                p.mutable_grad() = part.clone();
        }
        at::Tensor e = flat[0].narrow(0, off, n_extra).cpu();
        std::memcpy(extra, e.data_ptr<float>(), (size_t)n_extra * sizeof *extra);
    });
}

int lsdt_dist_broadcast(lsdt_dist *d, lsdt_tensor *const *t, int n, int64_t *host, int n_host, int root)
{
    return net("broadcast", [&] {
        c10::AutoGradMode no_grad(false);
        // Integers travel as their bytes in the float buffer, so one collective carries both.
        int64_t host_floats = (int64_t)((size_t)n_host * sizeof *host / sizeof(float));
        std::vector<at::Tensor> parts;
        auto o = buffer_options(t, n);
        for (int i = 0; i < n; i++)
            parts.push_back(t[i]->t.detach().reshape(-1).to(at::kFloat));
        parts.push_back(at::from_blob(host, {host_floats}, at::kFloat).to(o.device()));
        std::vector<at::Tensor> flat{at::cat(parts)};
        c10d::BroadcastOptions bo;
        bo.rootRank = root;
        bo.timeout = d->timeout;
        wait(d, d->pg->broadcast(flat, bo));
        int64_t off = 0;
        for (int i = 0; i < n; i++) {
            at::Tensor &x = t[i]->t;
            x.detach().copy_(flat[0].narrow(0, off, x.numel()).view(x.sizes()));
            off += x.numel();
        }
        at::Tensor h = flat[0].narrow(0, off, host_floats).cpu();
        std::memcpy(host, h.data_ptr<float>(), (size_t)n_host * sizeof *host);
    });
}

} // extern "C"
