// Flow-matching training on the CPU reference path: see eqflow/trainer.h.
#include "eqflow/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <memory>
#include <thread>

#include "common/train_math.h"
#include "eqflow/coupling.h"
#include "eqflow/egnn_gpu.h"
#include "eqflow/error.h"
#include "eqflow/flow.h"
#include "eqflow/io.h"
#include "eqflow/json.h"
#include "eqflow/model_io.h"
#include "eqflow/optim.h"
#include "eqflow/philox.h"
#include "eqflow/train_gpu.h"

namespace eqflow {

bool coupling_available(CouplingKind) {
    return true;
}

namespace {

const char* objective_name(CouplingKind kind) {
    return kind == CouplingKind::fm ? "fm" : kind == CouplingKind::ot ? "ot" : "eqot";
}

constexpr int64_t kChunkRows = 16;  // rows per gradient chunk: fixes the summation order

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

// x0, t and eps of one row from its own stream (the device step draws with the same function).
void draw_row(uint64_t seed, uint64_t stream, int n, int d, double* x0, double* t, double* eps) {
    train_math::draw_row(seed, stream, n, d, x0, t, eps);
}

std::string fmt(double x) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", x);
    return buf;
}

uint64_t data_checksum(const std::vector<double>& x) {
    return fnv1a64(x.data(), x.size() * sizeof(double));
}

void append_line(const std::string& path, const std::string& line) {
    std::ofstream f(path, std::ios::app);
    EQFLOW_CHECK(f.good(), "cannot append to the training log " << path);
    f << line << "\n";
}

}  // namespace

void draw_training_row(uint64_t seed, uint64_t stream, int n, int d, double* x0, double* t,
                       double* eps) {
    EQFLOW_CHECK(n >= 1 && d >= 1, "draw_training_row: bad sizes " << n << " x " << d);
    draw_row(seed, stream, n, d, x0, t, eps);
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

double flow_matching_loss(const EgnnModel& model, int64_t B, const double* x0, const double* x1,
                          const double* t, const double* eps, double sigma, double* grad,
                          int threads) {
    const EgnnConfig& c = model.config;
    const int64_t D = static_cast<int64_t>(c.n_particles) * c.dim;
    const int64_t P = static_cast<int64_t>(model.params.size());
    const int64_t chunks = (B + kChunkRows - 1) / kChunkRows;
    std::vector<double> chunk_loss(static_cast<size_t>(chunks), 0.0);
    std::vector<std::vector<double>> chunk_grad(grad ? static_cast<size_t>(chunks) : 0);
    const double scale = 1.0 / static_cast<double>(B * D);
    auto work = [&](int64_t chunk) {
        const int64_t b0 = chunk * kChunkRows, m = std::min(kChunkRows, B - b0);
        std::vector<double> xt(static_cast<size_t>(m * D)), v(static_cast<size_t>(m * D)),
            dv(static_cast<size_t>(m * D));
        for (int64_t r = 0; r < m; ++r) {
            const int64_t b = b0 + r;
            for (int64_t k = 0; k < D; ++k)
                xt[static_cast<size_t>(r * D + k)] =
                    (1.0 - t[b]) * x0[b * D + k] + t[b] * x1[b * D + k] + sigma * eps[b * D + k];
        }
        egnn_forward(c, model.params.data(), m, xt.data(), t + b0, v.data());
        double s = 0.0;
        for (int64_t r = 0; r < m; ++r)
            for (int64_t k = 0; k < D; ++k) {
                const int64_t b = b0 + r;
                const double diff =
                    v[static_cast<size_t>(r * D + k)] - (x1[b * D + k] - x0[b * D + k]);
                s += diff * diff;
                dv[static_cast<size_t>(r * D + k)] = 2.0 * diff * scale;
            }
        chunk_loss[static_cast<size_t>(chunk)] = s;
        if (grad) {
            auto& g = chunk_grad[static_cast<size_t>(chunk)];
            g.assign(static_cast<size_t>(P), 0.0);
            egnn_backward(c, model.params.data(), m, xt.data(), t + b0, dv.data(), g.data(),
                          nullptr);
        }
    };
    const int workers = static_cast<int>(std::min<int64_t>(
        threads > 0 ? threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency())),
        chunks));
    if (workers <= 1) {
        for (int64_t k = 0; k < chunks; ++k) work(k);
    } else {
        std::vector<std::thread> pool;
        for (int w = 0; w < workers; ++w)
            pool.emplace_back([&, w] {
                for (int64_t k = w; k < chunks; k += workers) work(k);
            });
        for (auto& th : pool) th.join();
    }
    double loss = 0.0;
    for (double s : chunk_loss) loss += s;
    if (grad) {
        std::fill(grad, grad + P, 0.0);
        for (const auto& g : chunk_grad)
            for (int64_t i = 0; i < P; ++i) grad[i] += g[static_cast<size_t>(i)];
    }
    return loss * scale;
}

TrainResult train_flow_matching(const TrainOptions& opt, const std::vector<double>& x,
                                int64_t count, int n, int d) {
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
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
    EQFLOW_CHECK(
        coupling_available(opt.objective),
        "the " << objective_name(opt.objective) << " coupling is not available in this build yet");
    EQFLOW_CHECK(!opt.resume || !opt.out_dir.empty(), "--resume needs the run directory");

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
    int64_t n_val = 0;
    if (opt.validation_fraction > 0)
        n_val = std::max<int64_t>(
            1, static_cast<int64_t>(std::llround(opt.validation_fraction * count)));
    n_val = std::min(n_val, count - 1);
    const int64_t n_train = count - n_val;
    std::vector<double> train(static_cast<size_t>(n_train * D)),
        val(static_cast<size_t>(n_val * D));
    for (int64_t i = 0; i < count; ++i) {
        const int64_t src = split[static_cast<size_t>(i)];
        double* dst = i < n_train ? train.data() + i * D : val.data() + (i - n_train) * D;
        for (int64_t k = 0; k < D; ++k) dst[k] = x[static_cast<size_t>(src * D + k)] / length_scale;
    }

    const int64_t B = std::min(opt.batch, n_train);
    const int64_t spe = n_train / B;
    const int64_t total = spe * opt.epochs;
    const int64_t drop_step =
        static_cast<int64_t>(std::floor(opt.lr_drop_fraction * static_cast<double>(total)));

    EgnnConfig config = default_egnn_config(opt.system, n, d);
    if (opt.hidden > 0) config.hidden = opt.hidden;
    if (opt.layers > 0) config.layers = opt.layers;
    config.atom_types = opt.atom_types;
    config.length_scale = length_scale;
    EgnnModel model{config, egnn_init_parameters(config, opt.seed)};
    const int64_t P = static_cast<int64_t>(model.params.size());
    AdamState adam;
    std::vector<double> ema;
    int64_t step = 0, skipped = 0;
    double elapsed_before = 0.0;

    // What must not change between a run and its resumption.
    const std::vector<std::pair<std::string, std::string>> fingerprint = {
        {"eqflow.train.objective", objective_name(opt.objective)},
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
    const std::string ckpt_path =
        opt.out_dir.empty() ? "" : opt.out_dir + "/checkpoint.safetensors";
    const std::string model_path = opt.out_dir.empty() ? "" : opt.out_dir + "/model.safetensors";
    const std::string log_path = opt.out_dir.empty() ? "" : opt.out_dir + "/train_log.jsonl";
    if (!opt.out_dir.empty()) make_directories(opt.out_dir);

    if (opt.resume) {
        const SafetensorsFile ck = read_safetensors(ckpt_path);
        for (const auto& [key, value] : fingerprint) {
            EQFLOW_CHECK(ck.has_meta(key) && ck.meta(key) == value,
                         ckpt_path << ": cannot resume, " << key << " was '"
                                   << (ck.has_meta(key) ? ck.meta(key) : "?") << "' and is now '"
                                   << value << "'");
        }
        SafetensorsFile model_part;
        model_part.metadata = ck.metadata;
        for (const SafeTensor& t : ck.tensors)
            if (t.name.rfind("optimizer.", 0) != 0 && t.name.rfind("trainer.", 0) != 0)
                model_part.tensors.push_back(t);
        EgnnModel loaded = egnn_model_from_safetensors(model_part, ckpt_path);
        EQFLOW_CHECK(loaded.config.hidden == config.hidden &&
                         loaded.config.layers == config.layers && loaded.config.n_particles == n &&
                         loaded.config.dim == d,
                     ckpt_path << ": the checkpoint's model (H = " << loaded.config.hidden
                               << ", L = " << loaded.config.layers
                               << ") differs from the requested one (H = " << config.hidden
                               << ", L = " << config.layers << ")");
        model = std::move(loaded);
        const SafeTensor& state = ck.at("trainer.state");
        EQFLOW_CHECK(state.ints.size() == 4, ckpt_path << ": trainer.state must hold 4 integers");
        step = state.ints[0];
        adam.step = state.ints[1];
        skipped = state.ints[2];
        elapsed_before = static_cast<double>(state.ints[3]) * 1e-3;
        adam.m = ck.at("optimizer.adam.m").values;
        adam.v = ck.at("optimizer.adam.v").values;
        EQFLOW_CHECK(
            static_cast<int64_t>(adam.m.size()) == P && static_cast<int64_t>(adam.v.size()) == P,
            ckpt_path << ": optimizer state does not match the model's " << P << " parameters");
        if (opt.ema_decay > 0) {
            ema = ck.at("optimizer.ema").values;
            EQFLOW_CHECK(static_cast<int64_t>(ema.size()) == P,
                         ckpt_path << ": EMA does not match the model");
        }
        EQFLOW_CHECK(step >= 0 && step <= total,
                     ckpt_path << ": step " << step << " outside 0.." << total);
    } else {
        if (opt.ema_decay > 0) ema = model.params;
        if (!log_path.empty()) write_file_atomic(log_path, "");
    }

    auto elapsed = [&] {
        return elapsed_before + std::chrono::duration<double>(clock::now() - start).count();
    };
    auto output_model = [&] {
        EgnnModel m = model;
        if (opt.ema_decay > 0) m.params = ema;
        return m;
    };
    auto save = [&] {
        if (opt.out_dir.empty()) return;
        SafetensorsFile f = egnn_model_to_safetensors(model);
        for (const auto& [key, value] : fingerprint) f.set_meta(key, value);
        f.set_meta("eqflow.train.step", std::to_string(step));
        f.set_meta("eqflow.train.total_steps", std::to_string(total));
        f.tensors.push_back(SafeTensor::i64(
            "trainer.state", Shape{4},
            {step, adam.step, skipped, static_cast<int64_t>(std::llround(elapsed() * 1e3))}));
        std::vector<double> m = adam.m, v = adam.v;
        if (m.empty()) m.assign(static_cast<size_t>(P), 0.0);
        if (v.empty()) v.assign(static_cast<size_t>(P), 0.0);
        f.tensors.push_back(SafeTensor::f64("optimizer.adam.m", Shape{P}, std::move(m)));
        f.tensors.push_back(SafeTensor::f64("optimizer.adam.v", Shape{P}, std::move(v)));
        if (opt.ema_decay > 0) f.tensors.push_back(SafeTensor::f64("optimizer.ema", Shape{P}, ema));
        // Model first: a checkpoint never points past a model file that is older than itself.
        save_model(model_path, output_model());
        write_safetensors(ckpt_path, f);
    };

    // Validation loss with fixed draws (the same every epoch).
    // Loss (and gradient) of one batch: the CPU reference, or the fused GPU kernels.
    // On the GPU the whole step runs on the device (eqflow/train_gpu.h): the parameters, Adam
    // moments, EMA and counters live there and come back to `model`, `adam`, `ema` and
    // `skipped` only before a checkpoint and at the end (pull_device_state).
    std::unique_ptr<GpuFlowMatching> gfm;
    if (opt.device == Device::cuda) {
        GpuFlowMatchingOptions go;
        go.objective = opt.objective;
        go.reflections = opt.reflections;
        go.atom_types = opt.atom_types;
        go.sigma = opt.sigma;
        go.batch = B;
        go.draw_seed = derive_seed(opt.seed, kPurposeDraws);
        go.ema_decay = opt.ema_decay;
        gfm = std::make_unique<GpuFlowMatching>(model, go, train.data(), n_train);
        gfm->upload_state(model.params, adam, ema, skipped);
    }
    auto pull_device_state = [&] {
        if (gfm) gfm->download_state(model.params, adam, &ema, &skipped);
    };
    auto batch_loss = [&](int64_t m, const double* bx0, const double* bx1, const double* bt,
                          const double* beps, double* bgrad) {
        if (gfm)  // the live device parameters: nothing to upload
            return flow_matching_loss_gpu(gfm->network(), m, bx0, bx1, bt, beps, opt.sigma, bgrad);
        return flow_matching_loss(model, m, bx0, bx1, bt, beps, opt.sigma, bgrad, opt.threads);
    };
    const int64_t n_val_used = std::min(n_val, opt.validation_max);
    auto validation_loss = [&]() {
        if (n_val_used == 0) return std::numeric_limits<double>::quiet_NaN();
        const uint64_t vseed = derive_seed(opt.seed, kPurposeValidation);
        double sum = 0.0;
        std::vector<double> x0, x1, t, eps;
        for (int64_t s0 = 0; s0 < n_val_used; s0 += B) {
            const int64_t m = std::min(B, n_val_used - s0);
            x0.resize(static_cast<size_t>(m * D));
            eps.resize(static_cast<size_t>(m * D));
            t.resize(static_cast<size_t>(m));
            x1.assign(val.begin() + s0 * D, val.begin() + (s0 + m) * D);
            for (int64_t b = 0; b < m; ++b)
                draw_row(vseed, static_cast<uint64_t>(s0 + b), n, d, x0.data() + b * D,
                         t.data() + b, eps.data() + b * D);
            couple_batch(opt.objective, m, n, d, x0.data(), x1.data(), opt.reflections,
                         opt.atom_types);
            sum += batch_loss(m, x0.data(), x1.data(), t.data(), eps.data(), nullptr) *
                   static_cast<double>(m);
        }
        return sum / static_cast<double>(n_val_used);
    };

    TrainResult result;
    result.total_steps = total;
    result.steps_per_epoch = spe;
    result.train_count = n_train;
    result.validation_count = n_val;
    result.validation_loss = std::numeric_limits<double>::quiet_NaN();

    const uint64_t epoch_seed = derive_seed(opt.seed, kPurposeEpoch);
    const uint64_t draw_seed = derive_seed(opt.seed, kPurposeDraws);
    std::vector<int64_t> order;
    int64_t order_epoch = -1;
    std::vector<double> x0(static_cast<size_t>(B * D)), x1(static_cast<size_t>(B * D)),
        eps(static_cast<size_t>(B * D)), t(static_cast<size_t>(B)), grad(static_cast<size_t>(P));
    double window_loss = 0.0;
    int64_t window_count = 0;
    double last_checkpoint = elapsed();
    bool interrupted = false;

    while (step < total) {
        if ((opt.stop && opt.stop->load()) ||
            (opt.stop_after_steps > 0 && step >= opt.stop_after_steps)) {
            interrupted = true;
            break;
        }
        const int64_t epoch = step / spe, j = step % spe;
        if (epoch != order_epoch) {
            order = permutation(n_train, epoch_seed, static_cast<uint64_t>(epoch));
            order_epoch = epoch;
            if (gfm) gfm->set_order(order);
        }
        const double lr = scheduled_learning_rate(opt.lr, step, drop_step, opt.lr_drop_factor);
        double loss = std::numeric_limits<double>::quiet_NaN();
        if (gfm) {
            // Enqueued; the loss and the counters are read only when someone needs them.
            gfm->step(step, j, lr);
        } else {
            for (int64_t b = 0; b < B; ++b) {
                const int64_t src = order[static_cast<size_t>(j * B + b)];
                std::copy(train.begin() + src * D, train.begin() + (src + 1) * D,
                          x1.begin() + b * D);
                draw_row(draw_seed, static_cast<uint64_t>(step * B + b), n, d, x0.data() + b * D,
                         t.data() + b, eps.data() + b * D);
            }
            couple_batch(opt.objective, B, n, d, x0.data(), x1.data(), opt.reflections,
                         opt.atom_types);
            loss = batch_loss(B, x0.data(), x1.data(), t.data(), eps.data(), grad.data());
            if (!std::isfinite(loss) || !all_finite(grad.data(), P)) {
                ++skipped;
            } else {
                adam_update(AdamOptions{}, lr, P, model.params.data(), grad.data(), adam);
                if (opt.ema_decay > 0)
                    ema_update(opt.ema_decay, P, model.params.data(), ema.data());
                window_loss += loss;
                ++window_count;
            }
        }
        ++step;
        const bool log_step = step % opt.log_every == 0 || step == total;
        if (gfm) {
            if (opt.progress) loss = gfm->last_loss();  // a few bytes, but a sync each step
            if (log_step || step % spe == 0) {
                const GpuFlowMatching::Counters c = gfm->counters();
                skipped = c.skipped;
                window_loss = c.window_loss;
                window_count = c.window_count;
            }
        }
        if (opt.progress) opt.progress(step, total, loss, lr);
        if (!log_path.empty() && (step % opt.log_every == 0 || step == total) && window_count > 0) {
            Json line = Json::object();
            line["step"] = step;
            line["epoch"] = epoch;
            line["loss"] = window_loss / static_cast<double>(window_count);
            line["lr"] = lr;
            line["time"] = elapsed();
            append_line(log_path, line.dump());
        }
        if (window_count > 0 && (step % opt.log_every == 0 || step == total)) {
            result.last_loss = window_loss / static_cast<double>(window_count);
            window_loss = 0.0;
            window_count = 0;
            if (gfm) gfm->reset_window();
        }
        if (step % spe == 0) {
            const double vl = validation_loss();
            result.validation_loss = vl;
            if (!log_path.empty()) {
                Json line = Json::object();
                line["epoch"] = epoch;
                line["step"] = step;
                line["val_loss"] = vl;
                line["skipped"] = skipped;
                line["time"] = elapsed();
                append_line(log_path, line.dump());
            }
            if (opt.on_epoch) opt.on_epoch(epoch, vl);
        }
        if (elapsed() - last_checkpoint >= opt.checkpoint_seconds && step < total) {
            pull_device_state();
            save();
            last_checkpoint = elapsed();
        }
    }
    pull_device_state();
    save();
    result.step = step;
    result.skipped = skipped;
    result.interrupted = interrupted;
    result.raw_model = model;
    result.model = output_model();
    result.seconds = elapsed();
    return result;
}

}  // namespace eqflow
