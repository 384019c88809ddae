// eqflow train: flow-matching training of the EGNN or kernel-dynamics field (eqflow/trainer.h).
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>

#include "cli/cli_common.h"
#include "cli/flow_cli.h"
#include "eqflow/npy.h"
#include "eqflow/systems.h"
#include "eqflow/trainer.h"

namespace eqflow::cli {

const char* const kTrainUsage =
    "usage: eqflow train --system S --data train.npy --objective fm|ot|eqot|likelihood\n"
    "                    --out RUN/ [--field egnn|kernel] [--epochs E] [--batch B] [--lr LR]\n"
    "                    [--hidden H] [--layers L] [--radial-basis K] [--r-max R]\n"
    "                    [--time-basis M] [--sigma SIGMA] [--seed K] [--device cpu|cuda]\n"
    "                    [--resume] [--ema DECAY] [--val-fraction F] [--threads P]\n"
    "                    [--length-scale S] [--checkpoint-minutes M] [--log-every STEPS]\n"
    "                    [--stop-after STEPS] [--overwrite] [--reference] [--ode-steps N]\n"
    "                    [--eqot-starts K] [--time-power A]\n\n"
    "Trains a vector field by flow matching on the configurations in train.npy\n"
    "(shape [N, n*d] or [N, n, d]; centred on load). Per step: a batch of data, prior samples,\n"
    "the coupling (fm: independent pairs, ot: minibatch OT, eqot: equivariant OT),\n"
    "x_t = (1-t) x0 + t x1 + sigma eps, loss = mean (v(x_t, t) - (x1 - x0))^2, Adam.\n"
    "Defaults: --epochs 10 --batch 256 --lr 5e-4 (x0.1 from half the steps on) --sigma 0.01\n"
    "--val-fraction 0.1 (held out; validation loss after every epoch) --ema 0 (off)\n"
    "--checkpoint-minutes 5 --threads 0 (all cores); H and L from the system's defaults.\n\n"
    "Writes RUN/model.safetensors (EMA weights when --ema is on), RUN/checkpoint.safetensors\n"
    "(model + optimiser state + step; atomically, every few minutes and at the end) and\n"
    "RUN/train_log.jsonl. --resume continues a run exactly as if it had never stopped (same\n"
    "options and data required). Ctrl-C or SIGTERM saves a checkpoint and exits (code 130 or\n"
    "143); a second one quits at once. A fresh run refuses a RUN/ that already holds a run\n"
    "unless --overwrite (which replaces it); RUN/ is locked while training, so a second run\n"
    "into it fails at once. The first checkpoint is written at step 0 and the next after at most\n"
    "a minute.\n"
    "--stop-after STEPS stops at that step with a checkpoint (for resuming later).\n"
    "--eqot-starts K (eqot): search only the K most promising of the principal-axes starts of\n"
    "each pair's alignment (4 in 3D, 2 in 2D; default all), scored by their nearest-neighbour\n"
    "cost. Still invariant under rotations and permutations; LJ13: K 1 makes the coupling 2.8x\n"
    "faster on the CPU at 1.3% more coupled cost. Refused where the alignment has no starts\n"
    "(DW4's exact 2D one); K >= the number of starts is the default search (recorded as such).\n"
    "--time-power A (flow matching): draw the training times as t = u^(1/A), u ~ U(0, 1), with\n"
    "density A t^(A-1): A > 1 trains more near the data end (t = 1), A < 1 near the prior;\n"
    "default 1, the paper's uniform t; 0 < A <= 100. The validation loss draws its t the same\n"
    "way.\n"
    "--length-scale S: the model works in units of S (data / S; the prior is N(0, 1) there).\n"
    "Default: 1 for dw4/lj (the paper's convention); for molecules (aldp, nm) the RMS coordinate\n"
    "of the centred training data, so that data and prior have a similar spread. Recorded in the\n"
    "model; sample/eval/field convert back to the system's units.\n"
    "--device cuda (the default when a GPU is usable): the whole step runs on the device in\n"
    "float32 (data uploaded once; draws, coupling, the field's forward/backward, Adam, EMA);\n"
    "the host reads the loss back for the progress line and the state at checkpoints. A GPU\n"
    "run follows the CPU run to float32 accuracy; its --resume is not bit-for-bit.\n"
    "--device cpu runs the fast float32 CPU field; --reference the double-precision reference\n"
    "(what the tests compare to; several times slower).\n"
    "--field egnn (default): the EGNN, sized by --hidden and --layers. --field kernel: the\n"
    "equivariant kernel dynamics of Koehler et al. 2020, v_i = sum_j (x_i - x_j) f(r_ij, t) with\n"
    "f a sum of K Gaussians in r whose weights are a learned linear map of M Gaussians in t;\n"
    "--radial-basis K centres on [0, --r-max R], --time-basis M centres on [0, 1] (defaults per\n"
    "system: dw4 K 32 on [0, 8], lj K 50 on [0, 6] or more, M 16). It has no atom types (not for\n"
    "aldp). Its CUDA backend (flow and likelihood training, sample/eval/field) has run on the CPU\n"
    "emulator of the GPU only, never on a GPU yet.\n"
    "--objective likelihood: maximum likelihood, the baseline of the paper's Table 1. Per step:\n"
    "a batch of data, integrated from t = 1 back to t = 0 by N fixed RK4 steps (--ode-steps,\n"
    "default 10) with the exact divergence; loss = mean NLL = 1/2 |x0|^2 + int_0^1 div v dt (the\n"
    "paper's convention, as `eval` reports nll); its exact gradient by reverse mode through the\n"
    "solver steps (second derivatives of the field); Adam, schedule, EMA and checkpoints as\n"
    "above. auto picks the CPU; --device cuda runs the kernel field's training on the GPU and is\n"
    "refused for the EGNN. On the CPU both fields run the fast float32 field (--reference: the\n"
    "double one). The EGNN's divergence gradient is forward over reverse along the n d directions\n"
    "(one SIMD lane each, so 8 or 16 directions a pass); the kernel field's is closed-form.\n"
    "--sigma does not apply.\n";

namespace {
std::atomic<bool> g_stop{false};
std::atomic<int> g_signal{0};
// The first Ctrl-C (or SIGTERM, as sent by `kill` and job schedulers) asks for a checkpoint at
// the end of the current step; a second one (the default action again) ends the program at once.
extern "C" void on_stop_signal(int sig) {
    g_signal.store(sig);
    g_stop.store(true);
    std::signal(sig, SIG_DFL);
}
}  // namespace

int cmd_train(Args& args) {
    const System system = make_system(args.require("system"));
    const std::string data = args.require("data");
    const std::string objective = args.require("objective");
    const std::string field = args.get("field", "egnn");
    TrainOptions opt;
    opt.out_dir = args.require("out");
    opt.system = system.name;
    opt.likelihood = objective == "likelihood";
    if (!opt.likelihood) opt.objective = parse_objective(objective);
    const int64_t ode_steps = args.get_int("ode-steps", -1);  // -1: not given
    opt.epochs = args.get_int("epochs", opt.epochs);
    opt.batch = args.get_int("batch", opt.batch);
    opt.lr = args.get_double("lr", opt.lr);
    opt.hidden = static_cast<int>(args.get_int("hidden", 0));
    opt.layers = static_cast<int>(args.get_int("layers", 0));
    opt.kernel_radial = static_cast<int>(args.get_int("radial-basis", 0));
    opt.kernel_r_max = args.get_double("r-max", 0.0);
    opt.kernel_time = static_cast<int>(args.get_int("time-basis", 0));
    opt.sigma = args.get_double("sigma", opt.sigma);
    opt.seed = static_cast<uint64_t>(args.get_int("seed", 0));
    opt.resume = args.flag("resume");
    opt.overwrite = args.flag("overwrite");
    opt.ema_decay = args.get_double("ema", 0.0);
    opt.validation_fraction = args.get_double("val-fraction", opt.validation_fraction);
    opt.threads = static_cast<int>(args.get_int("threads", 0));
    opt.checkpoint_seconds = 60.0 * args.get_double("checkpoint-minutes", 5.0);
    opt.log_every = args.get_int("log-every", opt.log_every);
    opt.stop_after_steps = args.get_int("stop-after", 0);
    const int64_t eqot_starts = args.get_int("eqot-starts", 0);
    if (eqot_starts < 0 || eqot_starts > 8)
        throw UsageError{"--eqot-starts must be in 1..8 (0 or absent: every start)"};
    opt.eqot_starts = static_cast<int>(eqot_starts);
    if (eqot_starts != 0 && (opt.likelihood || opt.objective != CouplingKind::eqot))
        throw UsageError{"--eqot-starts applies to --objective eqot only"};
    opt.time_power = args.get_double("time-power", 1.0);
    if (!(opt.time_power > 0 && opt.time_power <= 100))
        throw UsageError{"--time-power must be in (0, 100]"};
    if (opt.time_power != 1.0 && opt.likelihood)
        throw UsageError{"--time-power applies to flow matching (fm, ot, eqot) only"};
    const std::string device = args.get("device", "auto");
    opt.reference = args.flag("reference");
    const std::string scale = args.get("length-scale", "auto");
    args.finish();
    if (field != "egnn" && field != "kernel")
        throw UsageError{"--field must be egnn or kernel, got '" + field + "'"};
    opt.field = parse_field_kind(field);
    if (opt.field == FieldKind::egnn && (opt.kernel_radial || opt.kernel_r_max || opt.kernel_time))
        throw UsageError{
            "--radial-basis, --r-max and --time-basis size the kernel field: use "
            "them with --field kernel"};
    if (opt.field == FieldKind::kernel && (opt.hidden || opt.layers))
        throw UsageError{
            "--hidden and --layers size the EGNN: the kernel field takes "
            "--radial-basis, --r-max and --time-basis"};
    if (opt.kernel_radial < 0 || opt.kernel_time < 0 || opt.kernel_r_max < 0 ||
        !std::isfinite(opt.kernel_r_max))
        throw UsageError{"--radial-basis, --time-basis and --r-max must be positive"};
    if (opt.likelihood) {
        if (device == "cuda" && opt.field != FieldKind::kernel)
            throw UsageError{
                "--objective likelihood: EGNN likelihood training on CUDA is not built (the CUDA "
                "EGNN has no reverse mode of its divergence); use --device cpu, or --field "
                "kernel"};
        if (ode_steps != -1 && (ode_steps < 1 || ode_steps > 100000))
            throw UsageError{"--ode-steps must be in 1..100000"};
        if (ode_steps != -1) opt.ode_steps = static_cast<int>(ode_steps);
    } else if (ode_steps != -1) {
        throw UsageError{"--ode-steps applies to --objective likelihood only"};
    }
    // Likelihood training: auto is the CPU (the EGNN's second derivatives exist on the CPU
    // fields only; the kernel field trains on CUDA when asked for explicitly).
    opt.device = resolve_device(opt.likelihood && device == "auto" ? "cpu" : device, "trainer",
                                opt.reference);
    if (scale == "auto") {
        opt.length_scale = system.kind == PotentialKind::molecule ? 0.0 : 1.0;
        opt.scale_to_data = system.kind == PotentialKind::molecule;
    } else {
        char* end = nullptr;
        opt.length_scale = std::strtod(scale.c_str(), &end);
        if (scale.empty() || !end || *end != '\0' || !std::isfinite(opt.length_scale) ||
            opt.length_scale <= 0)
            throw UsageError{"--length-scale needs a positive number or 'auto', got '" + scale +
                             "'"};
    }
    opt.atom_types = system.atom_types;
    if (opt.epochs <= 0 || opt.batch <= 0 || opt.log_every <= 0 || !(opt.lr > 0))
        throw UsageError{"--epochs, --batch, --log-every and --lr must be positive"};
    EQFLOW_CHECK(
        opt.likelihood || coupling_available(opt.objective),
        "the " << objective << " coupling is not available in this build yet (use fm or ot)");

    int64_t count = 0;
    const std::vector<double> x =
        load_configurations(data, system.n, system.d, &count, /*center=*/true);
    std::fprintf(stderr,
                 "train: %lld configurations of %s from %s, %s field, objective %s, on %s\n",
                 static_cast<long long>(count), system.name.c_str(), data.c_str(), field.c_str(),
                 objective.c_str(), device_name(opt.device));
    if (opt.likelihood)
        std::fprintf(stderr,
                     "train: likelihood through %d RK4 steps with the exact divergence, on the "
                     "%s\n",
                     opt.ode_steps,
                     opt.device == Device::cuda ? "CUDA field"
                     : opt.reference            ? "double CPU reference field"
                                                : "fast float32 CPU field (solver sums in double)");

    g_stop.store(false);
    g_signal.store(0);
    opt.stop = &g_stop;
    auto previous = std::signal(SIGINT, on_stop_signal);
    auto previous_term = std::signal(SIGTERM, on_stop_signal);
    const auto restore = [&] {
        std::signal(SIGINT, previous);
        std::signal(SIGTERM, previous_term);
    };
    Progress progress("train", 1);
    int64_t total_seen = 0;
    double last_val = std::nan("");
    bool val_measured = false;
    // The bar refreshes at most ~10 times a second: read the loss (on the GPU, a wait for the
    // device) no more often.
    opt.progress_interval = 0.1;
    opt.progress = [&](int64_t step, int64_t total, double loss, double lr) {
        if (total_seen != total) {
            progress = Progress("train", total);
            total_seen = total;
        }
        // "val -" until this process has finished an epoch (a resumed run has no validation loss
        // before then; a diverged one shows its nan); nothing when no rows are held out.
        char val[40] = "";
        if (opt.validation_fraction > 0) {
            if (val_measured)
                std::snprintf(val, sizeof val, "  val %.4f", last_val);
            else
                std::snprintf(val, sizeof val, "  val -");
        }
        char extra[128];
        std::snprintf(extra, sizeof extra, "loss %.4f  lr %.1e%s", loss, lr, val);
        progress.update(step, extra);
    };
    opt.on_epoch = [&](int64_t, double vl) {
        last_val = vl;
        val_measured = true;
    };
    TrainResult r;
    try {
        r = train_flow_matching(opt, x, count, system.n, system.d);
    } catch (...) {
        restore();
        throw;
    }
    restore();
    char extra[160];
    std::snprintf(extra, sizeof extra, "loss %.4f, validation loss %.4f, %lld skipped steps",
                  r.last_loss, r.validation_loss, static_cast<long long>(r.skipped));
    if (r.interrupted) {
        std::fprintf(
            stderr,
            "\ntrain: stopped at step %lld of %lld; checkpoint saved to %s/checkpoint.safetensors "
            "(continue with --resume)\n",
            static_cast<long long>(r.step), static_cast<long long>(r.total_steps),
            opt.out_dir.c_str());
        // 128 + the signal, as the shell reports a process that the signal ended.
        return g_stop.load() ? 128 + (g_signal.load() ? g_signal.load() : SIGINT) : 0;
    }
    progress.finish(extra);
    std::fprintf(stderr,
                 "train: %lld steps (%lld per epoch, %lld train / %lld validation samples) in "
                 "%.1fs -> %s/model.safetensors\n",
                 static_cast<long long>(r.step), static_cast<long long>(r.steps_per_epoch),
                 static_cast<long long>(r.train_count), static_cast<long long>(r.validation_count),
                 r.seconds, opt.out_dir.c_str());
    return 0;
}

}  // namespace eqflow::cli
