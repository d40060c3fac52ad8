// libtorch's CPU allocator with transparent huge pages on large blocks.
//
// A training step touches gigabytes of fresh activation memory: glibc maps each large block afresh and returns it on
// free, so every step faults the same memory in again, 4 KiB at a time. On the virtual machines measured, a LoRA step
// at 32x32 latents spent two thirds of its CPU time in those faults (1.1 million of them); with 2 MiB pages the
// step does the same work in a third of the time. The blocks themselves still come from, and go back to, c10's
// default allocator: only the kernel's page size for their aligned interior changes, so the resident memory is the
// same. Where the kernel has transparent huge pages off, the advice is ignored.
#include <c10/core/CPUAllocator.h>

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "lsd_torch.h"

namespace {

constexpr uintptr_t kHuge = 2u << 20;
// Below this a block holds at most one aligned huge page: not worth a system call.
constexpr size_t kMinBlock = 4u << 20;

class HugePageAllocator final : public c10::Allocator {
  public:
    explicit HugePageAllocator(c10::Allocator *base) : base_(base) {}

    c10::DataPtr allocate(size_t n) const override
    {
        c10::DataPtr p = base_->allocate(n);
        if (n >= kMinBlock && p.get()) {
            uintptr_t a = (reinterpret_cast<uintptr_t>(p.get()) + kHuge - 1) & ~(kHuge - 1);
            uintptr_t e = (reinterpret_cast<uintptr_t>(p.get()) + n) & ~(kHuge - 1);
            if (e > a)
                madvise(reinterpret_cast<void *>(a), e - a, MADV_HUGEPAGE); // advice: a failure changes nothing
        }
        return p;
    }

    c10::DeleterFnPtr raw_deleter() const override { return base_->raw_deleter(); }

  private:
    c10::Allocator *base_;
};

} // namespace

int lsdt_huge_pages_install(void)
{
    const char *env = std::getenv("LSD_HUGE_PAGES");
    if (env && !std::strcmp(env, "0"))
        return 0;
    // Once per process, before the first tensor of the library; never freed: tensors of any later moment hold it.
    static HugePageAllocator *alloc = new HugePageAllocator(c10::GetCPUAllocator());
    c10::SetCPUAllocator(alloc, /*priority=*/1);
    return 1;
}
