// eqflow/parallel.h: the library's one thread pool.
//
// Every multi-threaded loop of the CPU path runs through parallel_for. The worker threads are
// created once, on first use, growing to the largest count ever asked for, and are reused by
// every later call; they are joined when the program exits. Thread counts come from option
// structs (`threads`, 0: default_thread_count()).
#pragma once

#include <cstdint>
#include <functional>

#include "eqflow/export.h"

namespace eqflow {

// Threads used when a call asks for 0: OMP_NUM_THREADS when set to a positive integer, else the
// number of CPUs in this process's affinity mask (sched_getaffinity), at least 1. Read once.
EQFLOW_API int default_thread_count();

// Runs fn(i) once for every i in [0, count) on min(threads, count) threads (threads <= 0:
// default_thread_count()), the calling thread included; returns when all are done. If any fn
// throws, the remaining indices are skipped and the first exception is rethrown in the caller
// (never std::terminate). A call made from inside fn runs serially on that thread. Which thread
// runs which index is unspecified: callers that need results independent of the thread count
// write per-index outputs and reduce them in index order.
EQFLOW_API void parallel_for(int64_t count, const std::function<void(int64_t)>& fn,
                             int threads = 0);

}  // namespace eqflow
