// emu/include/cub/block/block_scan.cuh: cub::BlockScan::ExclusiveSum for the emulation build,
// with CUB's contract (every thread of the block calls it; TempStorage in shared memory; the
// storage may be reused after a barrier). A plain O(threads) prefix per thread: the emulator
// needs it correct, not fast.
#pragma once

namespace cub {

template <class T, int kBlockThreads>
class BlockScan {
  public:
    struct TempStorage {
        T values[kBlockThreads];
    };

    explicit BlockScan(TempStorage& storage) : storage_(storage) {}

    void ExclusiveSum(T input, T& output, T& aggregate) {
        const int me = static_cast<int>(threadIdx.x);
        storage_.values[me] = input;
        __syncthreads();
        T prefix{}, total{};
        for (int k = 0; k < kBlockThreads; ++k) {
            if (k < me) prefix += storage_.values[k];
            total += storage_.values[k];
        }
        output = prefix;
        aggregate = total;
        __syncthreads();  // every thread has read before anyone reuses the storage
    }

  private:
    TempStorage& storage_;
};

}  // namespace cub
