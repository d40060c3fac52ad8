// Scaled dot-product attention: a plain differentiable path for small problems, and for large ones a blocked path
// that never holds the [B*H, Tq, Tk] score matrix (1 GB for SD's 64x64 latents at batch 2), with a backward of its
// own (the flash-attention recurrence: scores are recomputed per block from the saved log-sum-exp of each row).
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/api/include/torch/version.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <limits>

#include "internal.hpp"

using namespace lsdt;

namespace {

// softmax(q k^T * scale [+ causal mask]) v over [B, H, Tq, D] x [B, H, Tk, D], the differentiable way.
at::Tensor attention_autograd(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v, bool causal, double scale,
                              bool upcast)
{
    at::ScalarType out_type = q.scalar_type();
    at::Tensor qq = upcast ? q.to(at::kFloat) : q, kk = upcast ? k.to(at::kFloat) : k;
    at::Tensor scores = at::matmul(qq * scale, kk.transpose(-1, -2));
    if (causal) {
        int64_t tq = q.size(-2), tk = k.size(-2);
        at::Tensor mask = at::ones({tq, tk}, at::TensorOptions(at::kBool).device(q.device())).triu(1 + tk - tq);
        scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
    }
    at::Tensor probs = at::softmax(scores, -1).to(v.scalar_type());
    return at::matmul(probs, v).to(out_type);
}

// Hides the keys a causal query may not see: query i + r of a block starting at i sees keys up to i + r + tk - tq.
void mask_block(at::Tensor &s, int64_t i, int64_t n, int64_t tq, int64_t tk)
{
    for (int64_t r = 0; r < n; r++) {
        int64_t first_hidden = i + r + tk - tq + 1;
        if (first_hidden < tk)
            s[r].narrow(0, first_hidden, tk - first_hidden).fill_(-std::numeric_limits<float>::infinity());
    }
}

// The forward as independent tasks of (head, block of queries) spread over the intra-op threads, each through its
// own small score buffer with the softmax done in place: each block is written, normalised and consumed while it is
// in cache. With the BLAS single-threaded (lsdi_runtime_init) this is 2.6x faster than the plain path on CPU.
// With lse (for the backward) the scores are float32 and each row's log-sum-exp is kept in *lse [B*H, Tq].
at::Tensor attention_blocked(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v, bool causal, double scale,
                             bool upcast, int64_t chunk, at::Tensor *lse)
{
    int64_t bh = q.size(0) * q.size(1), tq = q.size(2), tk = k.size(2), d = q.size(3), dv = v.size(3);
    at::ScalarType st = upcast || lse ? at::kFloat : q.scalar_type();
    at::Tensor qq = q.to(st).contiguous().view({bh, tq, d});
    at::Tensor kt = k.to(st).contiguous().view({bh, tk, d}).transpose(1, 2).contiguous();
    at::Tensor vv = v.contiguous().view({bh, tk, v.size(3)});
    chunk = std::min(chunk > 0 ? chunk : 128, tq);
    int64_t blocks = (tq + chunk - 1) / chunk;
    at::Tensor out = at::empty({bh, tq, dv}, v.options());
    if (lse)
        *lse = at::empty({bh, tq}, qq.options());
    at::parallel_for(0, bh * blocks, 1, [&](int64_t begin, int64_t end) {
        at::Tensor buf = at::empty({chunk, tk}, qq.options());
        for (int64_t task = begin; task < end; task++) {
            int64_t h = task / blocks, i = (task % blocks) * chunk, n = std::min(chunk, tq - i);
            at::Tensor s = buf.narrow(0, 0, n);
            at::mm_out(s, qq[h].narrow(0, i, n), kt[h]);
            s.mul_(scale);
            if (causal)
                mask_block(s, i, n, tq, tk);
            if (lse) { // softmax = exp(s - logsumexp(s)), keeping the log-sum-exp
                at::Tensor l = (*lse)[h].narrow(0, i, n);
                at::logsumexp_out(l, s, {1}, false);
                s.sub_(l.unsqueeze(1)).exp_();
            } else {
                at::_softmax_out(s, s, -1, false);
            }
            at::Tensor o = out[h].narrow(0, i, n);
            at::mm_out(o, s.scalar_type() == vv.scalar_type() ? s : s.to(vv.scalar_type()), vv[h]);
        }
    });
    return out.view({q.size(0), q.size(1), tq, dv}).to(q.scalar_type());
}

// Gradients of the blocked forward, in float32, one task per (batch, head) so the key and value gradients of a head
// accumulate without races: per query block, P = exp(S - lse) is rebuilt, dV += P^T dO, dS = P * (dO V^T - D) with
// D = rowsum(dO * O), dQ = dS K scale, dK += dS^T Q scale. Two [chunk, Tk] buffers per thread are all it holds.
std::vector<at::Tensor> attention_blocked_backward(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v,
                                                   const at::Tensor &out, const at::Tensor &lse,
                                                   const at::Tensor &dout, bool causal, double scale, int64_t chunk)
{
    int64_t bh = q.size(0) * q.size(1), tq = q.size(2), tk = k.size(2), d = q.size(3), dv = v.size(3);
    auto flat = [bh](const at::Tensor &t, int64_t rows, int64_t cols) {
        return t.to(at::kFloat).contiguous().view({bh, rows, cols});
    };
    at::Tensor qf = flat(q, tq, d), kf = flat(k, tk, d), vf = flat(v, tk, dv), gf = flat(dout, tq, dv);
    at::Tensor D = (gf * flat(out, tq, dv)).sum(-1);
    at::Tensor dq = at::empty_like(qf), dk = at::zeros_like(kf), dvv = at::zeros_like(vf);
    chunk = std::min(chunk > 0 ? chunk : 128, tq);
    at::parallel_for(0, bh, 1, [&](int64_t begin, int64_t end) {
        at::Tensor pbuf = at::empty({chunk, tk}, qf.options()), dpbuf = at::empty({chunk, tk}, qf.options());
        for (int64_t h = begin; h < end; h++)
            for (int64_t i = 0; i < tq; i += chunk) {
                int64_t n = std::min(chunk, tq - i);
                at::Tensor p = pbuf.narrow(0, 0, n), dp = dpbuf.narrow(0, 0, n);
                at::Tensor qi = qf[h].narrow(0, i, n), go = gf[h].narrow(0, i, n);
                at::mm_out(p, qi, kf[h].t());
                p.mul_(scale);
                if (causal)
                    mask_block(p, i, n, tq, tk);
                p.sub_(lse[h].narrow(0, i, n).unsqueeze(1)).exp_();
                dvv[h].addmm_(p.t(), go);
                at::mm_out(dp, go, vf[h].t());
                dp.sub_(D[h].narrow(0, i, n).unsqueeze(1)).mul_(p);
                at::Tensor dqi = dq[h].narrow(0, i, n);
                at::mm_out(dqi, dp, kf[h]);
                dqi.mul_(scale);
                dk[h].addmm_(dp.t(), qi, 1.0, scale);
            }
    });
    return {dq.view(q.sizes()).to(q.scalar_type()), dk.view(k.sizes()).to(k.scalar_type()),
            dvv.view(v.sizes()).to(v.scalar_type())};
}

struct BlockedAttention : public torch::autograd::Function<BlockedAttention> {
    static torch::autograd::variable_list forward(torch::autograd::AutogradContext *ctx, const at::Tensor &q,
                                                  const at::Tensor &k, const at::Tensor &v, bool causal,
                                                  double scale, int64_t chunk)
    {
        at::Tensor lse;
        at::Tensor out = attention_blocked(q, k, v, causal, scale, true, chunk, &lse);
        ctx->save_for_backward({q, k, v, out, lse});
        ctx->saved_data["causal"] = causal;
        ctx->saved_data["scale"] = scale;
        ctx->saved_data["chunk"] = chunk;
        return {out};
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                   torch::autograd::variable_list grads)
    {
        auto sv = ctx->get_saved_variables();
        auto g = attention_blocked_backward(sv[0], sv[1], sv[2], sv[3], sv[4], grads[0],
                                            ctx->saved_data["causal"].toBool(), ctx->saved_data["scale"].toDouble(),
                                            ctx->saved_data["chunk"].toInt());
        return {g[0], g[1], g[2], at::Tensor(), at::Tensor(), at::Tensor()};
    }
};

} // namespace

extern "C" {

lsdt_tensor *lsdt_attention(lsdt_scope *s, const lsdt_tensor *q, const lsdt_tensor *k, const lsdt_tensor *v,
                            int causal, double scale, int q_chunk, int upcast)
{
    return op(s, "attention", {q, k, v}, [&] {
        const at::Tensor &qq = q->t, &kk = k->t, &vv = v->t;
        if (qq.dim() != 4 || kk.dim() != 4 || vv.dim() != 4)
            throw std::invalid_argument("attention wants [B, H, T, D] tensors");
        double sc = scale > 0 ? scale : 1.0 / std::sqrt((double)qq.size(-1));
#if TORCH_VERSION_MAJOR >= 2
        // The fused kernel never materialises the score matrix; it matches the explicit path in float32.
        if (!upcast || qq.scalar_type() == at::kFloat) {
            if (q_chunk <= 0 || q_chunk >= qq.size(2))
                return at::scaled_dot_product_attention(qq, kk, vv, {}, 0.0, causal != 0, sc);
        }
#endif
        // For small score matrices (the text encoder, tiny models) the blocked path's task overhead costs more than
        // the memory it saves.
        if (qq.size(0) * qq.size(1) * qq.size(2) * kk.size(2) <= (int64_t(1) << 22))
            return attention_autograd(qq, kk, vv, causal != 0, sc, upcast != 0);
        bool grad = c10::GradMode::is_enabled() && (qq.requires_grad() || kk.requires_grad() || vv.requires_grad());
        if (grad) // the out= kernels of the blocked path are invisible to autograd: it gets a backward of its own
            return BlockedAttention::apply(qq, kk, vv, causal != 0, sc, (int64_t)q_chunk)[0];
        return attention_blocked(qq, kk, vv, causal != 0, sc, upcast != 0, q_chunk, nullptr);
    });
}

} // extern "C"
