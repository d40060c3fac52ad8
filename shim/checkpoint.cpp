// Gradient checkpointing (libtorch's C++ API has no torch.utils.checkpoint): a custom autograd Function whose
// forward hands out a block's result computed beforehand and keeps only the block's inputs, and whose backward runs
// the block again with autograd and backpropagates through it. As in PyTorch's reentrant checkpoint, that inner
// backward accumulates straight into the leaves the block reads (the adapters), which are not inputs of the
// Function; so that the outer backward reaches the Function even when none of the block's inputs needs a gradient
// (the first adapted block of a network), the Function also takes an empty "anchor" leaf that always does.
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "internal.hpp"

using namespace lsdt;

namespace {

struct block {
    lsdt_block_fn fn;
    const void *user;
};

// fn over handles on xs in a scope of its own; its error, if any, is thrown with its status.
at::Tensor run(const block &b, const std::vector<at::Tensor> &xs)
{
    lsdt_scope *s = new lsdt_scope();
    std::vector<const lsdt_tensor *> in;
    for (const at::Tensor &x : xs)
        in.push_back(wrap(s, x));
    lsdt_tensor *out = b.fn(s, in.data(), (int)in.size(), b.user);
    at::Tensor r = out && !s->status ? out->t : at::Tensor();
    int st = s->status ? s->status : INTERNAL;
    std::string msg = s->status ? s->message : "checkpointed block returned no tensor";
    lsdt_scope_end(s);
    if (!r.defined())
        throw status_error(st, msg);
    return r;
}

const at::Tensor &anchor()
{
    static const at::Tensor a = at::empty({0}).requires_grad_(true);
    return a;
}

struct Checkpoint : public torch::autograd::Function<Checkpoint> {
    // inputs: the block's inputs, then the anchor.
    static torch::autograd::variable_list forward(torch::autograd::AutogradContext *ctx, const block *b,
                                                  const at::Tensor *value, const at::TensorList &inputs)
    {
        ctx->save_for_backward(std::vector<at::Tensor>(inputs.begin(), inputs.end() - 1));
        ctx->saved_data["fn"] = (int64_t)(intptr_t)b->fn;
        ctx->saved_data["user"] = (int64_t)(intptr_t)b->user;
        return {*value};
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                   torch::autograd::variable_list grads)
    {
        block b{(lsdt_block_fn)(intptr_t)ctx->saved_data["fn"].toInt(),
                (const void *)(intptr_t)ctx->saved_data["user"].toInt()};
        std::vector<at::Tensor> xs;
        for (const at::Tensor &t : ctx->get_saved_variables())
            xs.push_back(t.detach().requires_grad_(t.requires_grad()));
        {
            c10::AutoGradMode grad_mode(true);
            at::Tensor out = run(b, xs);
            if (out.requires_grad())
                torch::autograd::backward({out}, {grads[0]});
        }
        torch::autograd::variable_list r = {at::Tensor(), at::Tensor()}; // b, value
        for (const at::Tensor &x : xs)
            r.push_back(x.requires_grad() ? x.grad() : at::Tensor());
        r.push_back(at::Tensor()); // anchor
        return r;
    }
};

} // namespace

extern "C" {

lsdt_tensor *lsdt_checkpoint(lsdt_scope *s, lsdt_block_fn fn, const void *user, const lsdt_tensor *const *in,
                             int n)
{
    if (s && s->status)
        return nullptr;
    bool null = !fn || n < 1 || !in;
    for (int i = 0; !null && i < n; i++)
        null = !in[i];
    if (null) {
        set_error(s, INVALID, "checkpoint: NULL block or input");
        return nullptr;
    }
    if (!c10::GradMode::is_enabled()) // nothing to keep or recompute
        return fn(s, in, n, user);
    return op(s, "checkpoint", {}, [&] {
        block b{fn, user};
        std::vector<at::Tensor> xs;
        for (int i = 0; i < n; i++)
            xs.push_back(in[i]->t);
        // The block runs once with autograd: if its result needs no gradient it is the answer (and no graph was
        // kept); otherwise only its value is, and the graph of this run goes with `probe`.
        at::Tensor probe = run(b, xs);
        if (!probe.requires_grad())
            return probe;
        at::Tensor value = probe.detach();
        probe.reset();
        xs.push_back(anchor());
        return Checkpoint::apply(&b, &value, at::TensorList(xs))[0];
    });
}

} // extern "C"
