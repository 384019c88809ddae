// The thread pool (eqflow/parallel.h): every index once, exceptions reach the caller, nested
// calls run serially, workers are reused, and the default thread count follows OMP_NUM_THREADS
// and the CPU affinity mask (checked in child processes, since the count is read once).
#include <dirent.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cli_test_util.h"
#include "eqflow/parallel.h"

namespace eqflow {
namespace {

// Runs parallel_for and checks that every index ran exactly once, on at most min(threads, count)
// threads (threads <= 0: default_thread_count()).
void expect_each_index_once(int64_t count, int threads) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(count));
    for (auto& h : hits) h = 0;
    std::mutex mutex;
    std::set<std::thread::id> ids;
    parallel_for(
        count,
        [&](int64_t i) {
            ++hits[static_cast<size_t>(i)];
            std::lock_guard<std::mutex> lock(mutex);
            ids.insert(std::this_thread::get_id());
        },
        threads);
    for (int64_t i = 0; i < count; ++i)
        EXPECT_EQ(hits[i].load(), 1)
            << "index " << i << " of " << count << " on " << threads << " threads";
    const int64_t wanted = threads > 0 ? threads : default_thread_count();
    EXPECT_LE(static_cast<int64_t>(ids.size()), std::min(wanted, count));
}

// The first CPU of this process's affinity mask and the number of CPUs in it.
std::pair<int, int> affinity() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return {-1, 0};
    int first = -1;
    for (int c = 0; c < CPU_SETSIZE && first < 0; ++c)
        if (CPU_ISSET(c, &set)) first = c;
    return {first, CPU_COUNT(&set)};
}

int threads_of_this_process() {
    DIR* dir = ::opendir("/proc/self/task");
    if (!dir) return -1;
    int n = 0;
    while (const dirent* e = ::readdir(dir))
        if (e->d_name[0] != '.') ++n;
    ::closedir(dir);
    return n;
}

std::string this_program() {
    char path[4096];
    const ssize_t n = ::readlink("/proc/self/exe", path, sizeof path - 1);
    if (n <= 0) return "";
    path[n] = '\0';
    return path;
}

TEST(Parallel, EveryIndexExactlyOnce) {
    for (int64_t count : {0, 1, 2, 3, 7, 64, 1000})
        for (int threads : {0, 1, 2, 3, 8}) expect_each_index_once(count, threads);
    // Negative counts run nothing.
    int calls = 0;
    parallel_for(
        -3, [&](int64_t) { ++calls; }, 2);
    EXPECT_EQ(calls, 0);
}

TEST(Parallel, PerIndexOutputsAreIndependentOfTheThreadCount) {
    const int64_t count = 500;
    auto compute = [&](int threads) {
        std::vector<double> out(count);
        parallel_for(
            count,
            [&](int64_t i) {
                double s = 0;
                for (int64_t k = 0; k <= i; ++k) s += 1.0 / (1.0 + static_cast<double>(k * i));
                out[i] = s;
            },
            threads);
        return out;
    };
    const std::vector<double> one = compute(1);
    EXPECT_EQ(one, compute(2));
    EXPECT_EQ(one, compute(5));
}

TEST(Parallel, AnExceptionReachesTheCallerAndThePoolStillWorks) {
    // Each index takes a while, so that the other threads are still busy when index 3 throws:
    // each stops at its next index, far from the 1000.
    const auto pause = std::chrono::microseconds(200);
    for (int threads : {1, 2, 4}) {
        std::atomic<int> ran{0};
        try {
            parallel_for(
                1000,
                [&](int64_t i) {
                    ++ran;
                    if (i == 3) throw std::runtime_error("index 3 failed");
                    std::this_thread::sleep_for(pause);
                },
                threads);
            ADD_FAILURE() << "no exception on " << threads << " threads";
        } catch (const std::runtime_error& e) {
            EXPECT_STREQ(e.what(), "index 3 failed");
        }
        if (threads == 1)
            EXPECT_EQ(ran.load(), 4);
        else
            EXPECT_LT(ran.load(), 100) << threads << " threads";
        expect_each_index_once(100, threads);
    }
    // Every index throwing, and an exception that is no std::exception: one of them arrives.
    EXPECT_THROW(parallel_for(
                     64, [](int64_t i) { throw static_cast<int>(i); }, 4),
                 int);
    expect_each_index_once(100, 4);
}

TEST(Parallel, NestedCallsRunSeriallyOnTheirThread) {
    const int64_t outer = 6, inner = 50;
    std::vector<std::atomic<int>> hits(static_cast<size_t>(outer * inner));
    for (auto& h : hits) h = 0;
    std::atomic<int> foreign{0};
    parallel_for(
        outer,
        [&](int64_t i) {
            const std::thread::id me = std::this_thread::get_id();
            parallel_for(
                inner,
                [&](int64_t j) {
                    if (std::this_thread::get_id() != me) ++foreign;
                    ++hits[static_cast<size_t>(i * inner + j)];
                },
                4);
        },
        3);
    EXPECT_EQ(foreign.load(), 0);
    for (const auto& h : hits) EXPECT_EQ(h.load(), 1);
}

TEST(Parallel, WorkersAreCreatedOnceAndReused) {
    if (threads_of_this_process() < 0) GTEST_SKIP() << "no /proc/self/task";
    expect_each_index_once(100, 3);
    const int after_first = threads_of_this_process();
    for (int k = 0; k < 20; ++k) expect_each_index_once(100, 3);
    EXPECT_EQ(threads_of_this_process(), after_first);
    // A smaller job uses some of the same workers.
    expect_each_index_once(100, 2);
    EXPECT_EQ(threads_of_this_process(), after_first);
}

TEST(Parallel, DefaultThreadCountFollowsTheEnvironmentOrTheAffinityMask) {
    const auto [first, cpus] = affinity();
    ASSERT_GT(cpus, 0);
    const char* omp = std::getenv("OMP_NUM_THREADS");
    char* end = nullptr;
    const long from_env = omp && *omp ? std::strtol(omp, &end, 10) : 0;
    const bool env_is_a_count = from_env > 0 && *end == '\0';
    EXPECT_EQ(default_thread_count(), env_is_a_count ? from_env : cpus);
}

// Child processes of the test below: the program itself, told what to expect.
TEST(ParallelChild, DefaultThreadCount) {
    const char* expect = std::getenv("EQFLOW_TEST_EXPECT_THREADS");
    if (!expect) GTEST_SKIP() << "runs in the child processes of DefaultThreadCountInAChild";
    if (std::getenv("EQFLOW_TEST_PIN_ONE_CPU")) {
        // Before anything reads the count: this process may use one CPU only.
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(affinity().first, &one);
        ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
    }
    const int expected = std::atoi(expect);
    EXPECT_EQ(default_thread_count(), expected);
    expect_each_index_once(200, 0);
}

TEST(Parallel, DefaultThreadCountInAChild) {
    const std::string self = this_program();
    ASSERT_FALSE(self.empty());
    const std::string child = " " + self + " --gtest_filter=ParallelChild.DefaultThreadCount";
    const int cpus = affinity().second;
    struct Case {
        std::string env;
        int expected;
    };
    const std::vector<Case> cases = {
        {"OMP_NUM_THREADS=3", 3},
        {"OMP_NUM_THREADS=1", 1},
        {"OMP_NUM_THREADS=abc", cpus},  // not a positive integer: the affinity mask
        {"OMP_NUM_THREADS=0", cpus},
        {"EQFLOW_TEST_PIN_ONE_CPU=1 OMP_NUM_THREADS=", 1},
        {"EQFLOW_TEST_PIN_ONE_CPU=1 OMP_NUM_THREADS=5", 5},  // the environment wins
    };
    for (const Case& c : cases) {
        const test::Result r = test::sh(
            "env " + c.env + " EQFLOW_TEST_EXPECT_THREADS=" + std::to_string(c.expected) + child);
        EXPECT_EQ(r.code, 0) << c.env << "\n" << r.out;
        EXPECT_NE(r.out.find("[  PASSED  ] 1 test"), std::string::npos) << c.env << "\n" << r.out;
    }
}

}  // namespace
}  // namespace eqflow
