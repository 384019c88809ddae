// The thread pool behind eqflow/parallel.h: the only place in the library that creates threads.
//
// One job at a time. The caller publishes (fn, count) under the mutex, bumps the generation and
// wakes the workers; every participant (the caller and `helpers_` workers) takes indices from an
// atomic counter until none are left or one of them has thrown. The caller then waits until
// every helper has reported back, so nothing of the job (fn lives in the caller's frame) is
// touched after parallel_for returns. Everything a worker reads of a job is written under the
// mutex before it wakes, and everything it writes is published by its report under the mutex.
//
// A second thread that calls parallel_for while the pool runs another caller's job runs its loop
// serially on its own thread rather than waiting for the pool. So does a process forked after
// the pool started (the workers were not copied into it).
#include "eqflow/parallel.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace eqflow {

namespace {

// True on pool workers, and on any thread while it runs fn: parallel_for there runs serially.
thread_local bool t_inside = false;

class InsideScope {
  public:
    InsideScope() : saved_(t_inside) { t_inside = true; }
    ~InsideScope() { t_inside = saved_; }
    InsideScope(const InsideScope&) = delete;
    InsideScope& operator=(const InsideScope&) = delete;

  private:
    bool saved_;
};

// OMP_NUM_THREADS as a positive integer, or 0 when it is unset or anything else.
int omp_num_threads() {
    const char* s = std::getenv("OMP_NUM_THREADS");
    if (!s || !*s) return 0;
    char* end = nullptr;
    const long v = std::strtol(s, &end, 10);
    if (*end != '\0' || v <= 0 || v > 1 << 20) return 0;
    return static_cast<int>(v);
}

// CPUs in this process's affinity mask; 0 when it cannot be read.
int affinity_cpu_count() {
    // The mask may be wider than cpu_set_t on machines with more than 1024 CPUs.
    for (int cpus = CPU_SETSIZE; cpus <= (1 << 16); cpus *= 2) {
        cpu_set_t* set = CPU_ALLOC(cpus);
        if (!set) return 0;
        const size_t bytes = CPU_ALLOC_SIZE(cpus);
        CPU_ZERO_S(bytes, set);
        const int rc = sched_getaffinity(0, bytes, set);
        const int count = rc == 0 ? CPU_COUNT_S(bytes, set) : 0;
        CPU_FREE(set);
        if (rc == 0) return count;
        if (errno != EINVAL) return 0;
    }
    return 0;
}

class Pool {
  public:
    Pool() : owner_(::getpid()), workers_(new std::vector<std::thread>) {}

    ~Pool() {
        // In a forked child the workers do not exist: leave them alone (and leak their handles).
        if (::getpid() != owner_) return;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        wake_.notify_all();
        for (std::thread& t : *workers_) t.join();
        delete workers_;
    }

    Pool(const Pool&) = delete;
    Pool& operator=(const Pool&) = delete;

    // Runs the job on `threads` threads (the caller included) and returns true, or returns false
    // without running anything when the pool is busy with another caller's job.
    bool run(int64_t count, const std::function<void(int64_t)>& fn, int threads) {
        if (::getpid() != owner_) return false;
        std::unique_lock<std::mutex> job(job_mutex_, std::try_to_lock);
        if (!job.owns_lock()) return false;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            grow(threads - 1);
            fn_ = &fn;
            count_ = count;
            next_.store(0);
            failed_.store(false);
            error_ = nullptr;
            helpers_ = std::min(threads - 1, static_cast<int>(workers_->size()));
            finished_ = 0;
            ++generation_;
        }
        wake_.notify_all();
        {
            InsideScope inside;
            work();
        }
        std::exception_ptr error;
        {
            std::unique_lock<std::mutex> lock(mutex_);
            done_.wait(lock, [&] { return finished_ == helpers_; });
            fn_ = nullptr;
            std::swap(error, error_);
        }
        if (error) std::rethrow_exception(error);
        return true;
    }

  private:
    // Called with mutex_ held. A thread that cannot be created leaves the pool smaller.
    void grow(int size) {
        while (static_cast<int>(workers_->size()) < size) {
            const int id = static_cast<int>(workers_->size());
            try {
                workers_->emplace_back([this, id, seen = generation_] { loop(id, seen); });
            } catch (const std::system_error&) {
                return;
            }
        }
    }

    // Worker `id` takes part in every job that asks for more than `id` helpers.
    void loop(int id, uint64_t seen) {
        t_inside = true;
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            wake_.wait(lock, [&] { return stop_ || (generation_ != seen && id < helpers_); });
            if (stop_) return;
            seen = generation_;
            lock.unlock();
            work();
            lock.lock();
            if (++finished_ == helpers_) done_.notify_one();
        }
    }

    void work() {
        while (!failed_.load()) {
            const int64_t i = next_.fetch_add(1);
            if (i >= count_) return;
            try {
                (*fn_)(i);
            } catch (...) {
                std::lock_guard<std::mutex> lock(mutex_);
                if (!error_) error_ = std::current_exception();
                failed_.store(true);
            }
        }
    }

    const pid_t owner_;
    std::vector<std::thread>* const workers_;  // owned; a pointer so a forked child can leak it
    std::mutex job_mutex_;                     // held by the caller whose job the pool runs
    std::mutex mutex_;                         // guards everything below but the atomics
    std::condition_variable wake_;             // workers: a new job, or stop
    std::condition_variable done_;             // caller: every helper has finished
    bool stop_ = false;
    uint64_t generation_ = 0;
    int helpers_ = 0;
    int finished_ = 0;
    const std::function<void(int64_t)>* fn_ = nullptr;
    int64_t count_ = 0;
    std::atomic<int64_t> next_{0};
    std::atomic<bool> failed_{false};
    std::exception_ptr error_;
};

Pool& pool() {
    static Pool p;
    return p;
}

}  // namespace

int default_thread_count() {
    static const int count = [] {
        const int omp = omp_num_threads();
        if (omp > 0) return omp;
        const int cpus = affinity_cpu_count();
        if (cpus > 0) return cpus;
        return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    }();
    return count;
}

void parallel_for(int64_t count, const std::function<void(int64_t)>& fn, int threads) {
    if (count <= 0) return;
    if (threads <= 0) threads = default_thread_count();
    const int used = static_cast<int>(std::min<int64_t>(threads, count));
    if (used > 1 && !t_inside && pool().run(count, fn, used)) return;
    InsideScope inside;
    for (int64_t i = 0; i < count; ++i) fn(i);
}

}  // namespace eqflow
