// Autograd and gradient clipping.
#include <c10/core/GradMode.h>

#include "internal.hpp"

using namespace lsdt;

namespace {
thread_local int g_no_grad_depth = 0;
thread_local bool g_saved_mode = true;

int null_arg(const char *name)
{
    set_error(nullptr, INVALID, std::string(name) + ": NULL argument");
    return INVALID;
}
} // namespace

extern "C" {

int lsdt_set_requires_grad(lsdt_tensor *t, int on)
{
    if (!t)
        return null_arg("set_requires_grad");
    return call("set_requires_grad", [&] { t->t.requires_grad_(on != 0); });
}

int lsdt_requires_grad(const lsdt_tensor *t) { return t && t->t.requires_grad(); }

void lsdt_no_grad_begin(void)
{
    if (g_no_grad_depth++ == 0) {
        g_saved_mode = c10::GradMode::is_enabled();
        c10::GradMode::set_enabled(false);
    }
}

void lsdt_no_grad_end(void)
{
    if (g_no_grad_depth > 0 && --g_no_grad_depth == 0)
        c10::GradMode::set_enabled(g_saved_mode);
}

int lsdt_backward(lsdt_tensor *loss)
{
    if (!loss)
        return null_arg("backward");
    return call("backward", [&] { loss->t.backward(); });
}

lsdt_tensor *lsdt_grad(lsdt_scope *s, const lsdt_tensor *t)
{
    if (s && s->status)
        return nullptr;
    if (!t) {
        set_error(s, INVALID, "grad: NULL tensor input");
        return nullptr;
    }
    const at::Tensor &g = t->t.grad();
    if (!g.defined())
        return nullptr;
    return op(s, "grad", {t}, [&] { return g.detach(); });
}

int lsdt_zero_grad(lsdt_tensor *const *params, int n)
{
    return call("zero_grad", [&] {
        for (int i = 0; i < n; i++)
            if (params[i] && params[i]->t.grad().defined())
                params[i]->t.mutable_grad().reset();
    });
}

lsdt_tensor *lsdt_detach(lsdt_scope *s, const lsdt_tensor *x)
{
    return op(s, "detach", {x}, [&] { return x->t.detach(); });
}

int lsdt_clip_grad_norm(lsdt_tensor *const *params, int n, double max_norm, double *total_norm_out)
{
    return call("clip_grad_norm", [&] {
        c10::AutoGradMode no_grad(false);
        std::vector<at::Tensor> grads;
        for (int i = 0; i < n; i++)
            if (params[i] && params[i]->t.grad().defined())
                grads.push_back(params[i]->t.grad());
        double total = 0;
        if (!grads.empty()) {
            std::vector<at::Tensor> norms;
            for (auto &g : grads)
                norms.push_back(at::norm(g.to(at::kFloat), 2));
            total = at::norm(at::stack(norms), 2).item<double>();
        }
        if (total_norm_out)
            *total_norm_out = total;
        if (max_norm > 0) {
            // torch.nn.utils.clip_grad_norm_: scale by max_norm / (total + 1e-6) when that is below 1.
            double coef = max_norm / (total + 1e-6);
            if (coef < 1)
                for (auto &g : grads)
                    g.mul_(coef);
        }
    });
}

} // extern "C"
