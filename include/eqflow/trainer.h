// eqflow/trainer.h: flow-matching training of a vector field (docs/design.md section 5) -- the
// EGNN or the kernel dynamics (`field`; both on the CPU and on CUDA) -- with checkpoints
// that resume bit-for-bit on the CPU (on the GPU path: see device == cuda below).
//
// Per step: x1 <- the next `batch` training samples of the epoch's shuffled order; x0 <- prior
// samples; the coupling pairs them (fm: as drawn; ot: minibatch OT; eqot: equivariant OT);
// t ~ U(0,1) per sample (or t = u^(1/A), time_power); eps ~ mean-free N(0, I); x_t = (1-t) x0 + t
// x1 + sigma eps; target u = x1 - x0; loss = mean over B*n*d of (v(x_t, t) - u)^2; Adam; lr x 0.1
// from half the steps on; optional EMA. A step whose loss or gradient is not finite changes nothing
// and is counted.
//
// Randomness is a pure function of (seed, step, sample): the epoch permutation comes from
// Philox(seed', epoch), the prior / time / noise of sample b at step s from Philox(seed'', s*B+b).
// So the state to resume is (parameters, Adam moments, EMA, step): a run stopped after k steps
// and resumed is bit-for-bit the run that never stopped. The batch gradient is summed over
// fixed chunks of rows in a fixed order, so the result does not depend on the thread count.
//
// With `likelihood` the step is LikelihoodStep (eqflow/likelihood.h): LikelihoodStep<float> on the
// fast CPU field (LikelihoodStep<double> on the reference with `reference`), for the EGNN and the
// kernel dynamics alike, or for the kernel dynamics on its CUDA field with device cuda (which, as
// for flow matching, takes precedence over `reference`; the command line refuses the two together);
// the loss is the batch's mean NLL; everything else below (schedule, EMA, skipping, checkpoints,
// resume, log, validation) is the same loop.
//
// The step itself is FlowMatchingStep<T> (eqflow/train_step.h) over the field interface: on
// device == cpu the fast CPU field (float32, make_fast_field), or the double CPU reference with
// `reference` set (the precision the tests compare to); the CUDA field (float32) for
// device == cuda, where
// the training set lives on the device and every step (batch gather, draws, coupling, loss,
// gradient, Adam, EMA) runs there; the host only schedules the learning rate and reads a few
// bytes on logged steps (and at each call of `progress`, for its loss). The draws, the
// epoch order and the coupling's inputs are the CPU path's bit for bit (data rounded to float32
// once), but the network, its gradient and the parameters / Adam moments are float32, so a GPU
// run follows the CPU run only to float32 accuracy. The checkpoint holds the state widened to
// double, so the GPU path's resume is NOT promised bit-for-bit. The validation loss runs the same
// step without the update, on the same device.
//
// Data split: the data set is shuffled once with the seed; the last `validation_fraction` of it
// (at least one sample) is held out and gives the validation loss after every epoch (fixed draws,
// so the numbers of different epochs compare).
//
// Files in out_dir: model.safetensors (EMA weights when EMA is on), checkpoint.safetensors
// (model + Adam state + EMA + step + the options that must not change on resume), and
// train_log.jsonl (one JSON object a line: {"step","epoch","loss","lr","time"} for logged steps,
// {"epoch","step","val_loss","time","skipped"} after each epoch). A resumed run appends to the
// log, so steps between the last checkpoint and an interruption appear twice (the later lines
// are the ones that count).
//
// out_dir is one run's: while training, the run holds an exclusive lock on out_dir/.eqflow.lock
// (a second run into it fails at once), and a fresh run refuses a directory that holds a run
// unless `overwrite` (or `resume`) is set. Temporary files (`*.tmp.PID.N`) that a killed process
// left there are removed when the next run takes the lock. A fresh run writes a checkpoint at
// step 0 and the first periodic one after at most a minute, so a run killed early resumes.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "eqflow/coupling.h"
#include "eqflow/device.h"
#include "eqflow/egnn.h"
#include "eqflow/export.h"
#include "eqflow/flow_model.h"

namespace eqflow {

// True when this build can run the coupling (the couplings live in eqflow/coupling.h).
EQFLOW_API bool coupling_available(CouplingKind kind);

struct TrainOptions {
    std::string system = "dw4";  // for the model metadata
    CouplingKind objective = CouplingKind::eqot;
    // Maximum likelihood instead of flow matching (`--objective likelihood`): LikelihoodStep
    // (eqflow/likelihood.h) through `ode_steps` RK4 steps: on the fast float CPU field unless
    // `reference` (the double one), for the EGNN and the kernel field alike; the kernel field
    // also on the CUDA field with device cuda (the solver's state on the device as well), while
    // the EGNN with device cuda throws (the CUDA EGNN has no divergence_backward).
    // objective, sigma and reflections are then unused.
    bool likelihood = false;
    int ode_steps = 10;
    std::string out_dir;  // empty: write nothing (tests)
    int64_t epochs = 10;
    int64_t batch = 256;
    double lr = 5e-4;
    double lr_drop_fraction = 0.5;  // lr x lr_drop_factor from this fraction of the steps on
    double lr_drop_factor = 0.1;
    double sigma = 0.01;
    // The vector field: the EGNN or the kernel dynamics (eqflow/kernel_dynamics.h).
    FieldKind field = FieldKind::egnn;
    int hidden = 0;  // EGNN; 0: default_egnn_config's
    int layers = 0;
    // Kernel field; 0: default_kernel_config's (radial centres on [0, r_max], time centres).
    int kernel_radial = 0;
    double kernel_r_max = 0.0;
    int kernel_time = 0;
    uint64_t seed = 0;
    double validation_fraction = 0.1;
    int64_t validation_max = 2048;  // at most this many held-out samples are scored per epoch
    double ema_decay = 0.0;         // 0: no EMA
    bool reflections = false;       // eqot: allow improper rotations
    int eqot_starts = 0;            // eqot: CouplingOptions::max_starts (0: every start)
    // Flow matching: the training times t = u^(1/A), u ~ U(0, 1), density A t^(A-1) (Beta(A, 1)):
    // A > 1 trains more near the data end t = 1, A < 1 near the prior; 1 is the paper's uniform t.
    // The validation loss draws its t the same way.
    double time_power = 1.0;
    int threads = 1;              // 0: all hardware threads
    Device device = Device::cpu;  // cuda: the whole step on the device, float32 (see below)
    bool reference = false;       // device cpu: the double reference field, not the fast one
    std::vector<int> atom_types;  // per particle (typed systems such as aldp): one-hot model
                                  // features, and eqot permutes only within a type
    // Physical length per model unit (EgnnConfig::length_scale): the data are divided by it
    // before training and the model records it. 0: the data's RMS coordinate (of the centred
    // training data) when `scale_to_data`, else 1.
    double length_scale = 1.0;
    bool scale_to_data = false;
    int64_t log_every = 10;  // steps between log lines
    double checkpoint_seconds =
        300.0;  // a checkpoint after any step once this much time has passed; always at the end
    bool resume = false;  // continue from out_dir/checkpoint.safetensors
    // A fresh run refuses an out_dir that already holds a run (model, checkpoint or log) unless
    // told to replace it; the replaced run's files are removed once the new run holds the lock.
    bool overwrite = false;
    int64_t stop_after_steps = 0;  // > 0: stop (with a checkpoint) once this step count is reached
    const std::atomic<bool>* stop = nullptr;  // set (e.g. by SIGINT): checkpoint and return
    // Called after every step with (step, total steps, loss, lr); with progress_interval > 0
    // only after the first step, the last one, and steps at least that many seconds after the
    // previous call. On the GPU each call waits for the device (it reads the step's loss), so a
    // display that refreshes a few times a second should say so here (the command line: 0.1).
    std::function<void(int64_t, int64_t, double, double)> progress;
    double progress_interval = 0.0;
    // Called after every epoch with (epoch, validation loss).
    std::function<void(int64_t, double)> on_epoch;
};

struct TrainResult {
    FlowModel model;      // the model to sample from (EMA weights when EMA is on)
    FlowModel raw_model;  // the optimised weights themselves
    int64_t step = 0;     // steps done (of total_steps)
    int64_t total_steps = 0;
    int64_t steps_per_epoch = 0;
    int64_t skipped = 0;  // steps skipped for a non-finite loss or gradient
    int64_t train_count = 0, validation_count = 0;
    double last_loss = 0.0;        // mean training loss over the last logged window
    double validation_loss = 0.0;  // after the last completed epoch (NaN when none)
    bool interrupted = false;      // stopped by `stop` or `stop_after_steps` (checkpoint written)
    double seconds = 0.0;          // wall time, including the time before a resume
};

// Trains on `count` centred configurations x [count][n][d] of the system `n`, `d`.
EQFLOW_API TrainResult train_flow_matching(const TrainOptions& options,
                                           const std::vector<double>& x, int64_t count, int n,
                                           int d);

// Loss and parameter gradient of one batch (exposed for tests), through the training step's own
// operations and the field on `device` (the CPU reference with `threads`, or CUDA in float32):
// x0, x1 [B][n][d] already paired, t [B], eps [B][n][d], all on the host. grad (nullable, host)
// is OVERWRITTEN with the gradient. The result does not depend on the thread count.
EQFLOW_API double flow_matching_loss(const FlowModel& model, int64_t B, const double* x0,
                                     const double* x1, const double* t, const double* eps,
                                     double sigma, double* grad, int threads = 1,
                                     Device device = Device::cpu);

// The prior sample x0 [n][d], time t and noise eps [n][d] of one training row (exposed for
// tests): all from Philox(seed, stream), x0 and eps centred; t = u^(1/time_power) of a uniform u
// (TrainOptions::time_power). The GPU step draws the same bits (t to a few ulps of pow
// when time_power != 1).
EQFLOW_API void draw_training_row(uint64_t seed, uint64_t stream, int n, int d, double* x0,
                                  double* t, double* eps, double time_power = 1.0);

// The coupling of one batch: reorders x1 [B][n][d] in place so that row i pairs with x0 row i
// (ot and eqot; for eqot each x1 row is also permuted and rotated onto its x0 partner).
EQFLOW_API void couple_batch(CouplingKind coupling, int64_t B, int n, int d, const double* x0,
                             double* x1, bool reflections = false,
                             const std::vector<int>& atom_types = {});

}  // namespace eqflow
