// Flow-matching training over the field interface (fast CPU, CPU reference or CUDA): see
// eqflow/trainer.h.
#include "eqflow/trainer.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>

#include "common/eqot_exhaustive.h"
#include "common/train_math.h"
#include "eqflow/buffer.h"
#include "eqflow/coupling.h"
#include "eqflow/error.h"
#include "eqflow/field.h"
#include "eqflow/flow.h"
#include "eqflow/flow_model.h"
#include "eqflow/io.h"
#include "eqflow/json.h"
#include "eqflow/likelihood.h"
#include "eqflow/model_io.h"
#include "eqflow/optim.h"
#include "eqflow/philox.h"
#include "eqflow/train_step.h"
#include "train_ops.h"

namespace eqflow {

bool coupling_available(CouplingKind) {
    return true;
}

namespace {

const char* objective_name(CouplingKind kind) {
    return kind == CouplingKind::fm ? "fm" : kind == CouplingKind::ot ? "ot" : "eqot";
}

// Independent seeds per purpose, so that streams of different purposes never overlap.
uint64_t derive_seed(uint64_t seed, uint64_t purpose) {
    const PhiloxBlock b = philox_block(seed, 0xE0F10000ull + purpose, 0);
    return (static_cast<uint64_t>(b.v[0]) << 32) | b.v[1];
}
enum : uint64_t { kPurposeSplit = 1, kPurposeEpoch = 2, kPurposeDraws = 3, kPurposeValidation = 4 };

// Fisher-Yates shuffle of 0..count-1 with one Philox stream.
std::vector<int64_t> permutation(int64_t count, uint64_t seed, uint64_t stream) {
    std::vector<int64_t> p(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) p[static_cast<size_t>(i)] = i;
    Philox rng(seed, stream);
    for (int64_t i = count - 1; i > 0; --i) {
        // Two words give a 64-bit draw: no bias worth the name for any data set size.
        const uint64_t r = (static_cast<uint64_t>(rng.next_u32()) << 32) | rng.next_u32();
        const int64_t j = static_cast<int64_t>(r % static_cast<uint64_t>(i + 1));
        std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(j)]);
    }
    return p;
}

std::string fmt(double x) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", x);
    return buf;
}

uint64_t data_checksum(const std::vector<double>& x) {
    return fnv1a64(x.data(), x.size() * sizeof(double));
}

// The first periodic checkpoint comes after at most this long, whatever the interval: a run
// killed in its first minutes still resumes from more than step 0.
constexpr double kFirstCheckpointSeconds = 60.0;
const char* const kRunFiles[] = {"model.safetensors", "checkpoint.safetensors", "train_log.jsonl"};

bool file_exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
}

// An exclusive flock on RUN/.eqflow.lock for the run's lifetime. The kernel drops it when the
// process dies, however it dies, so a killed run never leaves the directory locked.
class RunLock {
  public:
    explicit RunLock(const std::string& dir) {
        const std::string path = dir + "/.eqflow.lock";
        fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        EQFLOW_CHECK(fd_ >= 0, "cannot open the run lock " << path << ": " << std::strerror(errno));
        if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
            const int err = errno;
            ::close(fd_);
            EQFLOW_CHECK(err != EWOULDBLOCK,
                         dir << " is in use by another training run (" << path << " is locked)");
            EQFLOW_THROW("cannot lock " << path << ": " << std::strerror(err));
        }
    }
    ~RunLock() { ::close(fd_); }
    RunLock(const RunLock&) = delete;
    RunLock& operator=(const RunLock&) = delete;

  private:
    int fd_ = -1;
};

// Removes NAME.tmp.PID.N files of processes that no longer exist: write_file_atomic's temporary
// files, left behind only when a process was killed during a write.
void remove_stale_temporaries(const std::string& dir) {
    DIR* d = ::opendir(dir.c_str());
    if (!d) return;
    while (const dirent* e = ::readdir(d)) {
        const std::string name = e->d_name;
        const size_t tmp = name.rfind(".tmp.");
        if (tmp == std::string::npos) continue;
        const std::string rest = name.substr(tmp + 5);
        const size_t dot = rest.find('.');
        if (dot == std::string::npos || dot == 0 || dot + 1 >= rest.size() ||
            rest.find_first_not_of("0123456789.") != std::string::npos)
            continue;
        const long pid = std::strtol(rest.substr(0, dot).c_str(), nullptr, 10);
        if (pid <= 0 || pid == static_cast<long>(::getpid())) continue;
        if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // still alive
        std::remove((dir + "/" + name).c_str());
    }
    ::closedir(d);
}

void append_line(const std::string& path, const std::string& line) {
    std::ofstream f(path, std::ios::app);
    EQFLOW_CHECK(f.good(), "cannot append to the training log " << path);
    f << line << "\n";
}

}  // namespace

void draw_training_row(uint64_t seed, uint64_t stream, int n, int d, double* x0, double* t,
                       double* eps, double time_power) {
    EQFLOW_CHECK(n >= 1 && d >= 1, "draw_training_row: bad sizes " << n << " x " << d);
    EQFLOW_CHECK(time_power > 0 && std::isfinite(time_power),
                 "draw_training_row: time_power must be positive and finite, got " << time_power);
    train_math::draw_row(seed, stream, n, d, x0, t, eps, time_power);
}

void couple_batch(CouplingKind coupling, int64_t B, int n, int d, const double* x0, double* x1,
                  bool reflections, const std::vector<int>& atom_types) {
    if (coupling == CouplingKind::fm || B <= 1) return;
    const int64_t D = static_cast<int64_t>(n) * d;
    CouplingOptions co;
    co.kind = coupling;
    co.allow_reflection = reflections;
    co.atom_types = atom_types;
    const std::vector<double> original(x1, x1 + B * D);
    couple(co, TensorView<const double>(x0, Shape{B, n, d}),
           TensorView<const double>(original.data(), Shape{B, n, d}),
           TensorView<double>(x1, Shape{B, n, d}));
}

namespace {
// The loss of one paired batch through the step's own operations (src/train_ops.h) and the
// field, on the field's device: the host inputs go there once, the gradient comes back.
template <class T>
double batch_loss(Field<T>& field, int64_t B, const double* x0, const double* x1, const double* t,
                  const double* eps, double sigma, double* grad) {
    const Device dev = field.device();
    const int n = field.n_particles(), d = field.dim();
    const int64_t nd = static_cast<int64_t>(n) * d, P = field.parameter_count();
    auto upload = [&](const double* src, int64_t count) {
        Buffer<double> b(static_cast<size_t>(count), dev);
        b.copy_from_host(src, b.size());
        return b;
    };
    const Buffer<double> x0d = upload(x0, B * nd), x1d = upload(x1, B * nd), td = upload(t, B),
                         epsd = upload(eps, B * nd);
    Buffer<T> xt(static_cast<size_t>(B * nd), dev), tt(static_cast<size_t>(B), dev),
        v(static_cast<size_t>(B * nd), dev), dv(static_cast<size_t>(B * nd), dev);
    Buffer<train_math::TrainScalars> scalars(1, dev);
    train_ops::interpolate<T>(dev, B, nd, x0d.data(), x1d.data(), td.data(), epsd.data(), sigma,
                              xt.data(), tt.data(), nullptr);
    FieldWorkspace ws;
    const Shape xs{B, n, d};
    const TensorView<const T> xv(xt.data(), xs, dev), tv(tt.data(), Shape{B}, dev);
    field.forward(xv, tv, TensorView<T>(v.data(), xs, dev), ws.get(field, FieldOp::forward, B));
    train_ops::loss<T>(dev, B, nd, v.data(), x0d.data(), x1d.data(), dv.data(), scalars.data(),
                       nullptr);
    if (grad) {
        Buffer<T> g(static_cast<size_t>(P), dev);
        g.zero();
        field.backward(xv, tv, TensorView<const T>(dv.data(), xs, dev),
                       TensorView<T>(g.data(), Shape{P}, dev), {},
                       ws.get(field, FieldOp::backward, B));
        std::vector<T> h(static_cast<size_t>(P));
        g.copy_to_host(h.data(), h.size());
        std::copy(h.begin(), h.end(), grad);
    }
    train_math::TrainScalars s;
    scalars.copy_to_host(&s, 1);
    return s.loss;
}
}  // namespace

double flow_matching_loss(const FlowModel& model, int64_t B, const double* x0, const double* x1,
                          const double* t, const double* eps, double sigma, double* grad,
                          int threads, Device device) {
    EQFLOW_CHECK(B > 0, "flow-matching loss of an empty batch");
    if (device == Device::cuda) {
        std::unique_ptr<Field<float>> field = make_cuda_field(model);
        return batch_loss(*field, B, x0, x1, t, eps, sigma, grad);
    }
    std::unique_ptr<Field<double>> field = make_reference_field(model, threads);
    return batch_loss(*field, B, x0, x1, t, eps, sigma, grad);
}

namespace {

// What a resumed run must share with its checkpoint besides the sizes: the field type and its
// shape, e.g. "EGNN, H = 32, L = 3" or "kernel dynamics, K = 32 on [0, 8], M = 16"; for the
// kernel field also the exact bases (an --r-max that differs from the checkpoint's is refused,
// not silently replaced by it).
std::string architecture(const FlowModel& m) {
    if (m.kind == FieldKind::kernel) {
        const KernelConfig& c = m.kernel_config;
        char buf[160];
        std::snprintf(buf, sizeof buf, "kernel dynamics, K = %d on [%g, %g], M = %d",
                      c.radial_count(), c.radial_centres.front(), c.radial_centres.back(),
                      c.time_count());
        return buf;
    }
    return "EGNN, H = " + std::to_string(m.egnn_config.hidden) +
           ", L = " + std::to_string(m.egnn_config.layers);
}
bool same_bases(const FlowModel& a, const FlowModel& b) {
    if (a.kind != FieldKind::kernel || b.kind != FieldKind::kernel) return true;
    const KernelConfig &x = a.kernel_config, &y = b.kernel_config;
    return x.radial_centres == y.radial_centres && x.radial_widths == y.radial_widths &&
           x.time_centres == y.time_centres && x.time_width == y.time_width;
}

// Everything a run needs before it picks a backend: the split in model units, the schedule, the
// model (fresh or resumed) and the fingerprint a resumed run must share.
struct RunSetup {
    int n = 0, d = 0;
    int64_t D = 0, n_train = 0, n_val = 0, B = 0, spe = 0, total = 0, drop_step = 0;
    std::vector<double> train, val;  // model units
    FlowModel model;
    std::vector<std::pair<std::string, std::string>> fingerprint;
    std::string ckpt_path, model_path, log_path;
};

// The step of the run's objective; the loop below is the same for both.
template <class T>
FlowMatchingStep<T> make_step(const TrainOptions& opt, RunSetup& rs, Field<T>& field,
                              int64_t n_val_used, FlowMatchingStep<T>*) {
    FlowMatchingStepOptions so;
    so.objective = opt.objective;
    so.reflections = opt.reflections;
    so.eqot_starts = opt.eqot_starts;
    so.atom_types = opt.atom_types;
    so.sigma = opt.sigma;
    so.time_power = opt.time_power;
    so.batch = rs.B;
    so.draw_seed = derive_seed(opt.seed, kPurposeDraws);
    so.ema_decay = opt.ema_decay;
    so.threads = opt.threads;
    return FlowMatchingStep<T>(field, so, rs.train.data(), rs.n_train, rs.val.data(), n_val_used);
}
template <class T>
LikelihoodStep<T> make_step(const TrainOptions& opt, RunSetup& rs, Field<T>& field,
                            int64_t n_val_used, LikelihoodStep<T>*) {
    LikelihoodStepOptions so;
    so.ode_steps = opt.ode_steps;
    so.batch = rs.B;
    so.ema_decay = opt.ema_decay;
    return LikelihoodStep<T>(field, so, rs.train.data(), rs.n_train, rs.val.data(), n_val_used);
}

// The loop: schedule, log, validation, checkpoints. The step itself is Step (FlowMatchingStep<T>
// or LikelihoodStep<T>).
template <class Step, class T>
TrainResult run_training(const TrainOptions& opt, RunSetup& rs, Field<T>& field) {
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    const int64_t spe = rs.spe, total = rs.total;
    FlowModel& model = rs.model;
    AdamState adam;
    std::vector<double> ema;
    int64_t step = 0, skipped = 0;
    double elapsed_before = 0.0;
    if (opt.resume) {
        TrainingCheckpoint ck = load_checkpoint(rs.ckpt_path, rs.fingerprint, opt.ema_decay > 0);
        EQFLOW_CHECK(architecture(ck.model) == architecture(model) && same_bases(ck.model, model) &&
                         ck.model.n_particles() == rs.n && ck.model.dim() == rs.d,
                     rs.ckpt_path << ": the checkpoint's model (" << architecture(ck.model)
                                  << ") differs from the requested one (" << architecture(model)
                                  << ")");
        EQFLOW_CHECK(ck.step <= total,
                     rs.ckpt_path << ": step " << ck.step << " outside 0.." << total);
        model = std::move(ck.model);
        step = ck.step;
        adam.step = ck.adam_step;
        adam.m = std::move(ck.adam_m);
        adam.v = std::move(ck.adam_v);
        skipped = ck.skipped;
        elapsed_before = ck.elapsed_seconds;
        ema = std::move(ck.ema);
    }
    field.set_parameters(model.params);

    const int64_t n_val_used = std::min(rs.n_val, opt.validation_max);
    Step trainer = make_step(opt, rs, field, n_val_used, static_cast<Step*>(nullptr));
    trainer.upload_state(model.params, adam, ema, skipped);

    auto last_progress = start;  // when opt.progress was last called
    bool progress_called = false;
    auto elapsed = [&] {
        return elapsed_before + std::chrono::duration<double>(clock::now() - start).count();
    };
    // The state comes back to the host only for a checkpoint and at the end.
    auto pull_state = [&] { trainer.download_state(model.params, adam, &ema, &skipped); };
    auto output_model = [&] {
        FlowModel m = model;
        if (opt.ema_decay > 0) m.params = ema;
        return m;
    };
    auto save = [&] {
        if (opt.out_dir.empty()) return;
        TrainingCheckpoint ck;
        ck.model = model;
        ck.step = step;
        ck.total_steps = total;
        ck.adam_step = adam.step;
        ck.skipped = skipped;
        ck.elapsed_seconds = elapsed();
        ck.adam_m = adam.m;
        ck.adam_v = adam.v;
        if (opt.ema_decay > 0) ck.ema = ema;
        ck.fingerprint = rs.fingerprint;
        // Model first: a checkpoint never points past a model file that is older than itself.
        save_model(rs.model_path, output_model());
        save_checkpoint(rs.ckpt_path, ck);
    };

    TrainResult result;
    result.total_steps = total;
    result.steps_per_epoch = spe;
    result.train_count = rs.n_train;
    result.validation_count = rs.n_val;
    result.validation_loss = std::numeric_limits<double>::quiet_NaN();

    const uint64_t epoch_seed = derive_seed(opt.seed, kPurposeEpoch);
    const uint64_t val_seed = derive_seed(opt.seed, kPurposeValidation);
    int64_t order_epoch = -1;
    double last_checkpoint = elapsed();
    double interval = std::min(opt.checkpoint_seconds, kFirstCheckpointSeconds);
    // A fresh run's step-0 checkpoint: --resume works from the first second on.
    if (!opt.resume && step < total) {
        pull_state();
        save();
    }
    bool interrupted = false;
    while (step < total) {
        if ((opt.stop && opt.stop->load()) ||
            (opt.stop_after_steps > 0 && step >= opt.stop_after_steps)) {
            interrupted = true;
            break;
        }
        const int64_t epoch = step / spe, j = step % spe;
        if (epoch != order_epoch) {
            trainer.set_order(permutation(rs.n_train, epoch_seed, static_cast<uint64_t>(epoch)));
            order_epoch = epoch;
        }
        const double lr = scheduled_learning_rate(opt.lr, step, rs.drop_step, opt.lr_drop_factor);
        trainer.step(step, j, lr);
        ++step;
        const bool log_step = step % opt.log_every == 0 || step == total;
        // On the GPU a read of the loss waits for the device: only when the callback is due
        // (every step, or every progress_interval seconds and at the last step).
        if (opt.progress) {
            if (opt.progress_interval <= 0 || step == total || !progress_called ||
                std::chrono::duration<double>(clock::now() - last_progress).count() >=
                    opt.progress_interval) {
                opt.progress(step, total, trainer.last_loss(), lr);
                last_progress = clock::now();  // after the wait: the interval is the host's
                progress_called = true;
            }
        }
        if (log_step) {
            const auto c = trainer.counters();
            skipped = c.skipped;
            if (c.window_count > 0) {
                result.last_loss = c.window_loss / static_cast<double>(c.window_count);
                if (!rs.log_path.empty()) {
                    Json line = Json::object();
                    line["step"] = step;
                    line["epoch"] = epoch;
                    line["loss"] = result.last_loss;
                    line["lr"] = lr;
                    line["time"] = elapsed();
                    append_line(rs.log_path, line.dump());
                }
                trainer.reset_window();
            }
        }
        if (step % spe == 0) {
            const double vl = trainer.validation_loss(val_seed, n_val_used);
            result.validation_loss = vl;
            skipped = trainer.counters().skipped;
            if (!rs.log_path.empty()) {
                Json line = Json::object();
                line["epoch"] = epoch;
                line["step"] = step;
                line["val_loss"] = vl;
                line["skipped"] = skipped;
                line["time"] = elapsed();
                append_line(rs.log_path, line.dump());
            }
            if (opt.on_epoch) opt.on_epoch(epoch, vl);
        }
        if (elapsed() - last_checkpoint >= interval && step < total) {
            pull_state();
            save();
            last_checkpoint = elapsed();
            interval = opt.checkpoint_seconds;
        }
    }
    pull_state();
    save();
    result.step = step;
    result.skipped = skipped;
    result.interrupted = interrupted;
    result.raw_model = model;
    result.model = output_model();
    result.seconds = elapsed();
    return result;
}

}  // namespace

namespace {
// The untrained model of the requested field type, in model units of `length_scale`.
FlowModel initial_model(const TrainOptions& opt, int n, int d, double length_scale) {
    if (opt.field == FieldKind::kernel) {
        EQFLOW_CHECK(opt.atom_types.empty(),
                     "the kernel-dynamics field treats all particles alike and has no atom types; "
                     "a typed system (such as aldp) needs the EGNN (--field egnn)");
        EQFLOW_CHECK(opt.hidden == 0 && opt.layers == 0,
                     "hidden width and layers are EGNN options; the kernel field's size is set "
                     "by its radial and time bases");
        KernelConfig config = default_kernel_config(opt.system, n, d);
        if (opt.kernel_radial > 0 || opt.kernel_r_max > 0 || opt.kernel_time > 0) {
            const double r_max =
                opt.kernel_r_max > 0 ? opt.kernel_r_max : config.radial_centres.back();
            set_kernel_bases(config,
                             opt.kernel_radial > 0 ? opt.kernel_radial : config.radial_count(),
                             r_max, opt.kernel_time > 0 ? opt.kernel_time : config.time_count());
        }
        config.length_scale = length_scale;
        return KernelModel{config, kernel_init_parameters(config, opt.seed)};
    }
    EgnnConfig config = default_egnn_config(opt.system, n, d);
    if (opt.hidden > 0) config.hidden = opt.hidden;
    if (opt.layers > 0) config.layers = opt.layers;
    config.atom_types = opt.atom_types;
    config.length_scale = length_scale;
    return EgnnModel{config, egnn_init_parameters(config, opt.seed)};
}
}  // namespace

TrainResult train_flow_matching(const TrainOptions& options, const std::vector<double>& x,
                                int64_t count, int n, int d) {
    TrainOptions opt = options;
    const int64_t D = static_cast<int64_t>(n) * d;
    EQFLOW_CHECK(count >= 2, "training needs at least 2 configurations, got " << count);
    EQFLOW_CHECK(static_cast<int64_t>(x.size()) == count * D,
                 "training data holds " << x.size() << " values, expected " << count << " x " << n
                                        << " x " << d);
    EQFLOW_CHECK(opt.epochs > 0, "epochs must be positive, got " << opt.epochs);
    EQFLOW_CHECK(opt.batch > 0, "batch must be positive, got " << opt.batch);
    EQFLOW_CHECK(opt.lr > 0 && std::isfinite(opt.lr),
                 "learning rate must be positive, got " << opt.lr);
    EQFLOW_CHECK(opt.sigma >= 0, "sigma must be non-negative, got " << opt.sigma);
    EQFLOW_CHECK(opt.ema_decay >= 0 && opt.ema_decay < 1,
                 "EMA decay must be in [0, 1), got " << opt.ema_decay);
    EQFLOW_CHECK(opt.validation_fraction >= 0 && opt.validation_fraction < 1,
                 "validation fraction must be in [0, 1), got " << opt.validation_fraction);
    EQFLOW_CHECK(opt.log_every > 0, "log interval must be positive, got " << opt.log_every);
    EQFLOW_CHECK(!opt.resume || !opt.out_dir.empty(), "--resume needs the run directory");
    EQFLOW_CHECK(opt.time_power > 0 && std::isfinite(opt.time_power),
                 "time_power must be positive and finite, got " << opt.time_power);
    EQFLOW_CHECK(!opt.likelihood || opt.time_power == 1.0,
                 "time_power (--time-power) applies to flow matching only (likelihood training "
                 "draws no t)");
    EQFLOW_CHECK(opt.eqot_starts >= 0, "eqot_starts must be >= 0, got " << opt.eqot_starts);
    if (opt.eqot_starts != 0) {
        EQFLOW_CHECK(!opt.likelihood && opt.objective == CouplingKind::eqot,
                     "eqot_starts (--eqot-starts) applies to the eqot objective only");
        EQFLOW_CHECK(!eqot_exhaustive::applies(n, d),
                     "eqot_starts (--eqot-starts): the eqot alignment of "
                         << n << " particles in 2D is exact (every permutation), it has no starts");
        // As many as the frame starts there are (2^(d-1) proper ones, 2^d with reflections) is
        // the default search: recorded as such.
        if (opt.eqot_starts >= (opt.reflections ? 2 : 1) << (d - 1)) opt.eqot_starts = 0;
    }
    EQFLOW_CHECK(!opt.likelihood || opt.device == Device::cpu || opt.field == FieldKind::kernel,
                 "EGNN likelihood training on CUDA is not built (the CUDA EGNN has no reverse "
                 "mode of its divergence): use --device cpu, or --field kernel");
    EQFLOW_CHECK(!opt.likelihood || opt.ode_steps >= 1,
                 "ODE steps must be positive, got " << opt.ode_steps);

    RunSetup rs;
    std::unique_ptr<RunLock> lock;  // held until the run returns or throws
    rs.n = n;
    rs.d = d;
    rs.D = D;
    // Model units: y = x / length_scale (the data's RMS coordinate when asked to pick it).
    double length_scale = opt.length_scale;
    if (length_scale == 0.0 && opt.scale_to_data) {
        double sum = 0.0;
        for (double v : x) sum += v * v;
        length_scale = std::sqrt(sum / static_cast<double>(x.size()));
    }
    if (length_scale == 0.0) length_scale = 1.0;
    EQFLOW_CHECK(std::isfinite(length_scale) && length_scale > 0,
                 "length scale must be finite and positive, got " << length_scale);

    // Split once with the seed: the tail is held out.
    const std::vector<int64_t> split = permutation(count, derive_seed(opt.seed, kPurposeSplit), 0);
    if (opt.validation_fraction > 0)
        rs.n_val = std::max<int64_t>(
            1, static_cast<int64_t>(std::llround(opt.validation_fraction * count)));
    rs.n_val = std::min(rs.n_val, count - 1);
    rs.n_train = count - rs.n_val;
    rs.train.resize(static_cast<size_t>(rs.n_train * D));
    rs.val.resize(static_cast<size_t>(rs.n_val * D));
    for (int64_t i = 0; i < count; ++i) {
        const int64_t src = split[static_cast<size_t>(i)];
        double* dst =
            i < rs.n_train ? rs.train.data() + i * D : rs.val.data() + (i - rs.n_train) * D;
        for (int64_t k = 0; k < D; ++k) dst[k] = x[static_cast<size_t>(src * D + k)] / length_scale;
    }
    rs.B = std::min(opt.batch, rs.n_train);
    rs.spe = rs.n_train / rs.B;
    rs.total = rs.spe * opt.epochs;
    rs.drop_step =
        static_cast<int64_t>(std::floor(opt.lr_drop_fraction * static_cast<double>(rs.total)));

    rs.model = initial_model(opt, n, d, length_scale);

    rs.fingerprint = {
        {"eqflow.system", opt.system},
        {"eqflow.train.objective", opt.likelihood ? "likelihood" : objective_name(opt.objective)},
        {"eqflow.train.epochs", std::to_string(opt.epochs)},
        {"eqflow.train.batch", std::to_string(opt.batch)},
        {"eqflow.train.lr", fmt(opt.lr)},
        {"eqflow.train.lr_drop_fraction", fmt(opt.lr_drop_fraction)},
        {"eqflow.train.lr_drop_factor", fmt(opt.lr_drop_factor)},
        {"eqflow.train.sigma", fmt(opt.sigma)},
        {"eqflow.train.seed", std::to_string(opt.seed)},
        {"eqflow.train.validation_fraction", fmt(opt.validation_fraction)},
        {"eqflow.train.ema_decay", fmt(opt.ema_decay)},
        {"eqflow.train.reflections", opt.reflections ? "true" : "false"},
        {"eqflow.train.data_count", std::to_string(count)},
        {"eqflow.train.data_checksum", std::to_string(data_checksum(x))},
        {"eqflow.train.length_scale", fmt(length_scale)},
    };
    if (opt.likelihood)
        rs.fingerprint.push_back({"eqflow.train.ode_steps", std::to_string(opt.ode_steps)});
    // Only when set, so that the runs (and checkpoints) from before the option keep resuming.
    if (opt.eqot_starts != 0)
        rs.fingerprint.push_back({"eqflow.train.eqot_starts", std::to_string(opt.eqot_starts)});
    if (opt.time_power != 1.0)
        rs.fingerprint.push_back({"eqflow.train.time_power", fmt(opt.time_power)});
    if (!opt.out_dir.empty()) {
        rs.ckpt_path = opt.out_dir + "/checkpoint.safetensors";
        rs.model_path = opt.out_dir + "/model.safetensors";
        rs.log_path = opt.out_dir + "/train_log.jsonl";
        make_directories(opt.out_dir);
        lock = std::make_unique<RunLock>(opt.out_dir);
        remove_stale_temporaries(opt.out_dir);
        if (!opt.resume) {
            std::string held;
            for (const char* name : kRunFiles)
                if (file_exists(opt.out_dir + "/" + name))
                    held += std::string(held.empty() ? "" : ", ") + name;
            EQFLOW_CHECK(held.empty() || opt.overwrite,
                         opt.out_dir << " already holds a run (" << held
                                     << "): continue it with --resume, or replace it with "
                                        "--overwrite");
            // Replacing: the old run's files go now, so that none of them outlives this run
            // half-matching it (an old checkpoint beside a new log).
            for (const char* name : kRunFiles) std::remove((opt.out_dir + "/" + name).c_str());
        }
    }

    if (opt.likelihood) {
        // The kernel field on CUDA: the field, the solver's state and Adam on the device. On the
        // CPU both fields run their fast float backend (the EGNN's divergence_backward: the
        // reference's second-order pass across SIMD lanes) unless `reference`.
        if (opt.device == Device::cuda && rs.model.kind == FieldKind::kernel) {
            std::unique_ptr<Field<float>> field = make_cuda_field(rs.model);
            return run_training<LikelihoodStep<float>>(opt, rs, *field);
        }
        if (opt.reference) {
            std::unique_ptr<Field<double>> field = make_reference_field(rs.model, opt.threads);
            return run_training<LikelihoodStep<double>>(opt, rs, *field);
        }
        std::unique_ptr<Field<float>> field = make_fast_field(rs.model, opt.threads);
        return run_training<LikelihoodStep<float>>(opt, rs, *field);
    }
    if (opt.device == Device::cuda) {
        std::unique_ptr<Field<float>> field = make_cuda_field(rs.model);
        return run_training<FlowMatchingStep<float>>(opt, rs, *field);
    }
    if (opt.reference) {
        std::unique_ptr<Field<double>> field = make_reference_field(rs.model, opt.threads);
        return run_training<FlowMatchingStep<double>>(opt, rs, *field);
    }
    std::unique_ptr<Field<float>> field = make_fast_field(rs.model, opt.threads);
    return run_training<FlowMatchingStep<float>>(opt, rs, *field);
}

}  // namespace eqflow
