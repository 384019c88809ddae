// src/cli/cli_common.h: argument parsing, progress lines and the command table of `eqflow`.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace eqflow::cli {

// Thrown for bad command-line usage (exit code 2); eqflow::Error means bad input (exit code 1).
struct UsageError {
    std::string message;
};

// "--key value" options and "--flag" switches. Every option must be declared by the command
// (through the getters or `allow`) before finish() rejects the rest as unknown.
class Args {
  public:
    Args(std::string command, std::vector<std::string> argv);

    bool help() const { return help_; }
    const std::string& command() const { return command_; }

    std::string get(const std::string& key, const std::string& fallback);
    std::string require(const std::string& key);
    int64_t get_int(const std::string& key, int64_t fallback);
    double get_double(const std::string& key, double fallback);
    bool flag(const std::string& key);
    bool has(const std::string& key) const { return values_.count(key) > 0; }
    // Throws UsageError naming any option the command did not read.
    void finish();

  private:
    std::string command_;
    std::map<std::string, std::string> values_;
    std::map<std::string, bool> used_;
    bool help_ = false;
};

// A progress line on stderr: rewritten in place on a terminal, a few plain lines otherwise.
class Progress {
  public:
    Progress(std::string label, int64_t total);
    void update(int64_t done, const std::string& extra = "");
    void finish(const std::string& extra = "");

  private:
    std::string label_;
    int64_t total_;
    bool tty_;
    int last_percent_ = -1;
    std::chrono::steady_clock::time_point start_, last_;
};

// No NaN with exit code 0: throws Error naming `what` and the first row (of `row_size` values)
// holding NaN, or an infinity other than +inf where `allow_plus_inf` (the exact energy of
// coinciding particles). `skip_row`, when given, marks rows already reported as failed.
void check_finite_output(const std::vector<double>& values, int64_t row_size, const char* what,
                         bool allow_plus_inf, const std::vector<char>* skip_row = nullptr);

struct Command {
    const char* name;
    const char* summary;
    const char* usage;  // full --help text
    int (*run)(Args& args);
};

// The commands, in the order `eqflow --help` lists them (defined in main.cpp).
const std::vector<Command>& commands();

// Each command lives in its own file.
int cmd_data(Args& args);
int cmd_energy(Args& args);
int cmd_assign(Args& args);
int cmd_train(Args& args);
int cmd_sample(Args& args);
int cmd_eval(Args& args);
int cmd_demo(Args& args);
int cmd_field(Args& args);

extern const char* const kDataUsage;
extern const char* const kEnergyUsage;
extern const char* const kAssignUsage;
extern const char* const kTrainUsage;
extern const char* const kSampleUsage;
extern const char* const kEvalUsage;
extern const char* const kDemoUsage;
extern const char* const kFieldUsage;

}  // namespace eqflow::cli
