// Autograd, gradient clipping and AdamW (torch.optim.AdamW's update, written over ATen ops).
#include <c10/core/GradMode.h>

#include <cmath>

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

struct lsdt_adamw {
    std::vector<at::Tensor> params, exp_avg, exp_avg_sq;
    std::vector<int64_t> steps;
    double lr, beta1, beta2, eps, weight_decay;
};

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

lsdt_adamw *lsdt_adamw_new(lsdt_tensor *const *params, int n, double lr, double beta1, double beta2, double eps,
                           double weight_decay)
{
    try {
        auto *o = new lsdt_adamw();
        for (int i = 0; i < n; i++) {
            if (!params[i]) {
                delete o;
                null_arg("adamw_new");
                return nullptr;
            }
            o->params.push_back(params[i]->t);
        }
        o->exp_avg.resize((size_t)n);
        o->exp_avg_sq.resize((size_t)n);
        o->steps.assign((size_t)n, 0);
        o->lr = lr;
        o->beta1 = beta1;
        o->beta2 = beta2;
        o->eps = eps;
        o->weight_decay = weight_decay;
        return o;
    } catch (...) {
        set_error(nullptr, OOM, "adamw_new: allocation failed");
        return nullptr;
    }
}

void lsdt_adamw_free(lsdt_adamw *o) { delete o; }

int lsdt_adamw_set_lr(lsdt_adamw *o, double lr)
{
    if (!o)
        return null_arg("adamw_set_lr");
    o->lr = lr;
    return OK;
}

int lsdt_adamw_step(lsdt_adamw *o)
{
    if (!o)
        return null_arg("adamw_step");
    return call("adamw_step", [&] {
        c10::AutoGradMode no_grad(false);
        for (size_t i = 0; i < o->params.size(); i++) {
            at::Tensor &p = o->params[i];
            if (!p.grad().defined())
                continue;
            at::Tensor g = p.grad();
            if (!o->exp_avg[i].defined()) {
                o->exp_avg[i] = at::zeros_like(p, at::MemoryFormat::Preserve);
                o->exp_avg_sq[i] = at::zeros_like(p, at::MemoryFormat::Preserve);
            }
            int64_t step = ++o->steps[i];
            p.mul_(1 - o->lr * o->weight_decay);
            o->exp_avg[i].lerp_(g, 1 - o->beta1);
            o->exp_avg_sq[i].mul_(o->beta2).addcmul_(g, g, 1 - o->beta2);
            double bc1 = 1 - std::pow(o->beta1, (double)step);
            double bc2 = 1 - std::pow(o->beta2, (double)step);
            at::Tensor denom = (o->exp_avg_sq[i].sqrt() / std::sqrt(bc2)).add_(o->eps);
            p.addcdiv_(o->exp_avg[i], denom, -o->lr / bc1);
        }
    });
}

int lsdt_adamw_state(lsdt_adamw *o, int i, int64_t *step, lsdt_tensor **exp_avg, lsdt_tensor **exp_avg_sq)
{
    if (!o || i < 0 || i >= (int)o->params.size())
        return null_arg("adamw_state");
    return call("adamw_state", [&] {
        if (step)
            *step = o->steps[(size_t)i];
        if (exp_avg)
            *exp_avg = o->exp_avg[(size_t)i].defined() ? wrap(nullptr, o->exp_avg[(size_t)i]) : nullptr;
        if (exp_avg_sq)
            *exp_avg_sq = o->exp_avg_sq[(size_t)i].defined() ? wrap(nullptr, o->exp_avg_sq[(size_t)i]) : nullptr;
    });
}

int lsdt_adamw_set_state(lsdt_adamw *o, int i, int64_t step, const lsdt_tensor *exp_avg, const lsdt_tensor *exp_avg_sq)
{
    if (!o || i < 0 || i >= (int)o->params.size() || !exp_avg || !exp_avg_sq)
        return null_arg("adamw_set_state");
    return call("adamw_set_state", [&] {
        const at::Tensor &p = o->params[(size_t)i];
        if (!exp_avg->t.sizes().equals(p.sizes()) || !exp_avg_sq->t.sizes().equals(p.sizes()))
            throw std::invalid_argument("adamw_set_state: moment shapes differ from parameter " + std::to_string(i));
        o->steps[(size_t)i] = step;
        o->exp_avg[(size_t)i] = exp_avg->t.to(p.options()).clone();
        o->exp_avg_sq[(size_t)i] = exp_avg_sq->t.to(p.options()).clone();
    });
}

} // extern "C"
