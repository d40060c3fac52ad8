// The elementwise pieces optimizers are written with (lib/optim/): in-place updates of parameters and their state,
// outside autograd, and the few pointwise functions their rules use. Each is the ATen call its reference makes, so
// an update written with them rounds as the reference's does.
#include "internal.hpp"

using namespace lsdt;

extern "C" {

int lsdt_lerp_(lsdt_tensor *dst, const lsdt_tensor *end, double weight)
{
    return inplace("lerp_", dst, end, true, [&] { dst->t.lerp_(end->t, weight); });
}

int lsdt_addcmul_(lsdt_tensor *dst, const lsdt_tensor *a, const lsdt_tensor *b, double value)
{
    return inplace("addcmul_", dst, a && b ? a : nullptr, true, [&] { dst->t.addcmul_(a->t, b->t, value); });
}

int lsdt_addcdiv_(lsdt_tensor *dst, const lsdt_tensor *a, const lsdt_tensor *b, double value)
{
    return inplace("addcdiv_", dst, a && b ? a : nullptr, true, [&] { dst->t.addcdiv_(a->t, b->t, value); });
}

int lsdt_add_scalar_(lsdt_tensor *dst, double v)
{
    return inplace("add_scalar_", dst, nullptr, false, [&] { dst->t.add_(v); });
}

lsdt_tensor *lsdt_div_scalar(lsdt_scope *s, const lsdt_tensor *a, double v)
{
    return op(s, "div_scalar", {a}, [&] { return a->t / v; });
}

lsdt_tensor *lsdt_sign(lsdt_scope *s, const lsdt_tensor *a)
{
    return op(s, "sign", {a}, [&] { return at::sign(a->t); });
}

lsdt_tensor *lsdt_abs(lsdt_scope *s, const lsdt_tensor *a)
{
    return op(s, "abs", {a}, [&] { return at::abs(a->t); });
}

lsdt_tensor *lsdt_rsqrt(lsdt_scope *s, const lsdt_tensor *a)
{
    return op(s, "rsqrt", {a}, [&] { return at::rsqrt(a->t); });
}

} // extern "C"
