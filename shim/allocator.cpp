// libtorch's CPU allocator, with large blocks mapped by the library itself on transparent huge pages.
//
// glibc serves a block under its dynamic mmap threshold (which climbs to 32 MiB as big blocks are freed) from its
// heaps, and a freed block there stays resident; a block over it is mapped afresh and faulted in 4 KiB at a time on
// every use. So a training step either faulted in gigabytes per step (1.1 million faults, two thirds of a LoRA
// step's CPU time at 32x32 latents on the machines measured) or a VAE decode kept 0.4 GB of freed activations
// resident into the next phase. Blocks of 4 MiB and more are therefore mapped here, 2 MiB aligned, advised to use
// huge pages (one fault per 2 MiB), and unmapped when freed (nothing stays resident). Smaller blocks go to the
// allocator that was installed before. Where the kernel has transparent huge pages off, the advice is ignored and
// the blocks are still returned on free.
#include <c10/core/CPUAllocator.h>

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "lsd_torch.h"

namespace {

constexpr uintptr_t kHuge = 2u << 20;
constexpr size_t kMinBlock = 4u << 20;

// Never destroyed: libtorch's threads (Gloo's among them) may still allocate and free while the process runs its
// static destructors at exit.
std::mutex &blocks_mutex()
{
    static std::mutex *m = new std::mutex;
    return *m;
}

std::unordered_map<void *, size_t> &mapped_blocks() // block -> mapped length
{
    static auto *m = new std::unordered_map<void *, size_t>;
    return *m;
}

c10::DeleterFnPtr g_base_free;

// c10 requires one deleter for both kinds (raw_deleter): a block is ours when it is in the map.
void free_block(void *p)
{
    size_t len = 0;
    {
        std::lock_guard<std::mutex> lock(blocks_mutex());
        auto &blocks = mapped_blocks();
        auto it = blocks.find(p);
        if (it != blocks.end()) {
            len = it->second;
            blocks.erase(it);
        }
    }
    if (len)
        munmap(p, len);
    else if (g_base_free)
        g_base_free(p);
}

// n bytes on a 2 MiB boundary (the slack around it unmapped again), or nullptr; *len gets the mapped length.
void *map_block(size_t n, size_t *len_out)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t len = (n + page - 1) / page * page, span = len + kHuge;
    *len_out = len;
    void *m = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return nullptr;
    uintptr_t lo = reinterpret_cast<uintptr_t>(m), a = (lo + kHuge - 1) & ~(kHuge - 1);
    if (a > lo)
        munmap(m, a - lo);
    if (lo + span > a + len)
        munmap(reinterpret_cast<void *>(a + len), lo + span - (a + len));
    madvise(reinterpret_cast<void *>(a), len, MADV_HUGEPAGE); // advice: a failure changes nothing
    return reinterpret_cast<void *>(a);
}

class BlockAllocator final : public c10::Allocator {
  public:
    explicit BlockAllocator(c10::Allocator *base) : base_(base) {}

    c10::DataPtr allocate(size_t n) const override
    {
        size_t len = 0;
        void *p = n >= kMinBlock ? map_block(n, &len) : nullptr;
        if (!p)
            return base_->allocate(n);
        try {
            std::lock_guard<std::mutex> lock(blocks_mutex());
            mapped_blocks().emplace(p, len);
        } catch (...) {
            munmap(p, len);
            throw;
        }
        return {p, p, &free_block, c10::Device(c10::DeviceType::CPU)};
    }

    c10::DeleterFnPtr raw_deleter() const override { return &free_block; }

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
    c10::Allocator *base = c10::GetCPUAllocator();
    g_base_free = base->raw_deleter();
    static BlockAllocator *alloc = new BlockAllocator(base);
    c10::SetCPUAllocator(alloc, /*priority=*/1);
    return 1;
}
