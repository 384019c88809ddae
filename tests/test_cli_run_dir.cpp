// One run directory, one run: a failing run into a directory that holds a run leaves it as it
// was, two concurrent runs cannot share a directory, a kill during a checkpoint leaves no
// temporary file behind for good, SIGTERM checkpoints like SIGINT, and a run killed in its first
// second resumes (issue 17).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

#include "cli_test_util.h"
#include "eqflow/io.h"

namespace eqflow {
namespace {

using test::sh;  // run, exists and Result come with the fixture

class CliRunDir : public test::TempDirTest {
  protected:
    void SetUp() override {
        TempDirTest::SetUp();
        const Result r =
            run("data --system dw4 --samples 60 --seed 5 --burn-in 100 --threads 1 "
                "--out " +
                file("train.npy"));
        ASSERT_EQ(r.code, 0) << r.out;
    }
    std::string train(const std::string& run_dir, const std::string& extra = "") const {
        return "train --system dw4 --data " + file("train.npy") + " --objective fm --out " +
               file(run_dir) + " --epochs 2 --batch 16 --hidden 8 --layers 1 --threads 1 " + extra;
    }
    // A run far too long to finish, in the background; the shell prints its exit code.
    std::string long_run(const std::string& run_dir, const std::string& log) const {
        return std::string(EQFLOW_CLI_PATH) + " train --system dw4 --data " + file("train.npy") +
               " --objective fm --out " + file(run_dir) +
               " --epochs 1000000 --batch 16 --hidden 8 --layers 1 --threads 1 > " + file(log) +
               " 2>&1 & pid=$!; ";
    }
};

TEST_F(CliRunDir, FailingRunLeavesAnExistingRunAlone) {
    Result r = run(train("run"));
    ASSERT_EQ(r.code, 0) << r.out;
    const std::string model = read_file(file("run/model.safetensors"));
    const std::string ckpt = read_file(file("run/checkpoint.safetensors"));
    const std::string log = read_file(file("run/train_log.jsonl"));
    ASSERT_FALSE(log.empty());
    // A new run, even one that would fail later (unknown objective options aside), is refused
    // before it touches anything.
    r = run(train("run", "--lr 1e-3"));
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_NE(r.out.find("already holds a run"), std::string::npos) << r.out;
    EXPECT_EQ(read_file(file("run/model.safetensors")), model);
    EXPECT_EQ(read_file(file("run/checkpoint.safetensors")), ckpt);
    EXPECT_EQ(read_file(file("run/train_log.jsonl")), log);
    // A bad data file into the same directory: the same, and nothing is truncated.
    r = run("train --system dw4 --data " + file("missing.npy") + " --objective fm --out " +
            file("run"));
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_EQ(read_file(file("run/train_log.jsonl")), log);
    // --overwrite replaces the run on purpose.
    r = run(train("run", "--lr 1e-3 --overwrite"));
    EXPECT_EQ(r.code, 0) << r.out;
    EXPECT_NE(read_file(file("run/model.safetensors")), model);
}

TEST_F(CliRunDir, AFailedRunLeavesNoEmptyLog) {
    // The run fails after it has taken the directory (nothing to resume): no empty log stays.
    const Result r = run(train("bad", "--resume"));
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_FALSE(exists(file("bad/train_log.jsonl")));
    EXPECT_FALSE(exists(file("bad/model.safetensors")));
}

TEST_F(CliRunDir, TwoConcurrentRunsCannotShareADirectory) {
    const Result r = sh(long_run("shared", "first.log") + "sleep 1; " + EQFLOW_CLI_PATH + " " +
                        train("shared", "--overwrite") +
                        " 2>&1; echo second=$?; kill -TERM $pid; wait $pid; echo first=$?");
    EXPECT_NE(r.out.find("second=1"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("in use by another training run"), std::string::npos) << r.out;
    // SIGTERM is handled like SIGINT: a checkpoint, then 128 + 15.
    EXPECT_NE(r.out.find("first=143"), std::string::npos) << r.out << read_file(file("first.log"));
    EXPECT_NE(read_file(file("first.log")).find("--resume"), std::string::npos);
    const Result resumed = run(train("shared", "--resume"));
    // The long run's options differ (epochs): the checkpoint is found and refused by name.
    EXPECT_NE(resumed.out.find("eqflow.train.epochs"), std::string::npos) << resumed.out;
}

TEST_F(CliRunDir, KilledEarlyResumesAndStaleTemporariesGo) {
    // SIGKILL as soon as the step-0 checkpoint appears (no handler runs): it stays, and the run
    // resumes from it. Polled rather than a fixed half second, which a loaded CI machine missed
    // (the process had not started training yet); the next checkpoint would come a minute
    // later, so one seen within 20 s is the step-0 one.
    Result r = sh(long_run("killed", "killed.log") + "for i in $(seq 400); do [ -f " +
                  file("killed/checkpoint.safetensors") +
                  " ] && break; sleep 0.05; done; kill -KILL $pid; wait $pid");
    ASSERT_TRUE(exists(file("killed/checkpoint.safetensors"))) << read_file(file("killed.log"));
    // A temporary file of a process killed during a checkpoint write (a pid that is gone).
    const pid_t child = ::fork();
    if (child == 0) ::_exit(0);
    ::waitpid(child, nullptr, 0);
    const std::string stale =
        file("killed/checkpoint.safetensors.tmp." + std::to_string(child) + ".0");
    write_file_atomic(stale, "half a checkpoint");
    r = sh(std::string(EQFLOW_CLI_PATH) + " train --system dw4 --data " + file("train.npy") +
           " --objective fm --out " + file("killed") +
           " --epochs 1000000 --batch 16 --hidden 8 --layers 1 --threads 1 --resume "
           "--stop-after 3");
    EXPECT_EQ(r.code, 0) << r.out;
    EXPECT_FALSE(exists(stale));
}

}  // namespace
}  // namespace eqflow
