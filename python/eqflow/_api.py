"""The Python API over eqflow._eqflow: array kinds in and out, models, energies, assignment,
couplings, and the commands (data, train, sample, log_likelihood, evaluate) as functions.

Outputs are allocated here in the caller's kind (NumPy, or torch on the caller's device and in
its dtype) and filled in place by the extension, which checks every array (shape, dtype, device,
contiguity, finite values) and raises eqflow.Error with the library's message.
"""
import functools
import math
import sys

import numpy as np

from . import _eqflow
from ._eqflow import Error


# ---- array kinds ------------------------------------------------------------------------------

def _torch():
    return sys.modules.get("torch")


def _is_torch(x):
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def _as_array(x, name):
    """NumPy arrays and torch tensors pass as they are (the extension checks them); anything
    else array-like becomes a NumPy array."""
    if isinstance(x, np.ndarray) or _is_torch(x):
        return x
    try:
        return np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise Error(f"{name}: cannot read {type(x).__name__} as an array ({e})") from None


def _export(x):
    """What the extension receives: a torch tensor without its autograd history."""
    return x.detach() if _is_torch(x) else x


def _empty(like, shape, dtype=None):
    if _is_torch(like):
        return _torch().empty(shape, dtype=dtype or like.dtype, device=like.device)
    return np.empty(shape, dtype=dtype or like.dtype)


def _zeros(like, shape, dtype=None):
    if _is_torch(like):
        return _torch().zeros(shape, dtype=dtype or like.dtype, device=like.device)
    return np.zeros(shape, dtype=dtype or like.dtype)


def _int64(like):
    return _torch().int64 if _is_torch(like) else np.int64


def _float64(like):
    return _torch().float64 if _is_torch(like) else np.float64


def _stream(x):
    if _is_torch(x) and x.is_cuda:
        return _torch().cuda.current_stream(x.device).cuda_stream
    return 0


def _check_finite_cuda(x, name):
    # Host arrays are checked by the extension; a device array is checked here (one reduction).
    if _is_torch(x) and x.is_cuda and x.is_floating_point() and not bool(_torch().isfinite(x).all()):
        raise Error(f"{name} holds NaN or infinite values; the values must be finite")


def _check_contiguous(x, name):
    ok = x.is_contiguous() if _is_torch(x) else x.flags.c_contiguous
    if not ok:
        raise Error(f"{name} with shape {list(x.shape)} is not C-contiguous; pass "
                    "numpy.ascontiguousarray(a) or tensor.contiguous()")


def _times(t, x, batch):
    """t as a contiguous [B] array of x's kind, dtype and device: a number or a one-element array
    is broadcast, anything else is passed on for the extension to check."""
    if _is_torch(x):
        torch = _torch()
        tt = t if isinstance(t, torch.Tensor) else torch.as_tensor(np.asarray(t, dtype=np.float64))
        tt = tt.detach().to(device=x.device, dtype=x.dtype)
        if tt.numel() == 1:
            tt = tt.reshape(()).expand(batch)
        return tt.contiguous()
    if _is_torch(t):
        t = t.detach().cpu().numpy()
    ta = np.asarray(t, dtype=x.dtype if x.dtype in (np.float32, np.float64) else np.float64)
    if ta.size == 1:
        ta = np.full(batch, ta.reshape(()), dtype=ta.dtype)
    return np.ascontiguousarray(ta)


def _batch(x, name="x"):
    if len(x.shape) < 1:
        raise Error(f"{name} has shape [], expected [B, n, d] or [B, n*d]")
    return int(x.shape[0])


def _to_numpy(x, name):
    """A host copy (or view) as NumPy, for the functions that work on the host."""
    x = _as_array(x, name)
    if _is_torch(x):
        x = x.detach().cpu().numpy()
    return x


# ---- systems --------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _system_cached(name):
    return _eqflow.make_system(name)


def system(name):
    """The target system `name` ("dw4", "lj13", "lj55", "lj:N", "aldp") as an eqflow.System."""
    if isinstance(name, _eqflow.System):
        return name
    if not isinstance(name, str):
        raise Error(f"system: expected a name or an eqflow.System, got {type(name).__name__}")
    return _system_cached(name)


def systems():
    """The names of the built-in systems."""
    return list(_eqflow.builtin_system_names())


# ---- models ---------------------------------------------------------------------------------

class Model:
    """A trained flow's vector field v(x, t) with its configuration: the EGNN (docs/design.md
    section 4) or the equivariant kernel dynamics (section 4b); field_type says which.

    field(x, t) and divergence(x, t) take x as [B, n, d] or [B, n*d] (NumPy or torch; float64 or
    float32 on the CPU, computed in double on the CPU reference; float32 CUDA tensors run the
    GPU kernels of either field type) and t as a number or [B]; they return the caller's kind,
    dtype and shape, in the system's units (the model's length_scale is applied as `eqflow
    field` does).

    config holds the keys of the model's own field type: hidden, layers, attention, ... for the
    EGNN; radial_centres, radial_widths, time_centres, time_width for the kernel field (so
    config["hidden"] of a kernel model is a KeyError). Everything else (parameters, layout,
    state_dict, save, the field, eqflow.torch.Field, sample, log_likelihood, evaluate) works for
    both.
    """

    def __init__(self, handle):
        self._m = handle

    # -- configuration
    @property
    def field_type(self):
        """'egnn' or 'kernel' (the model file's eqflow.format)."""
        return self._m.field_type

    @property
    def n_particles(self):
        return self._m.n_particles

    @property
    def dim(self):
        return self._m.dim

    @property
    def config(self):
        """The configuration: field_type, system, n_particles, dim, length_scale and, for the
        EGNN, hidden, layers, attention, tanh, coords_range, atom_types; for the kernel field,
        radial_centres, radial_widths, time_centres, time_width."""
        return dict(self._m.config)

    @property
    def system(self):
        return self._m.config["system"]

    @property
    def length_scale(self):
        return self._m.config["length_scale"]

    @property
    def parameter_count(self):
        return self._m.parameter_count

    def __repr__(self):
        c = self.config
        if self.field_type == "kernel":
            size = (f"radial_basis={len(c['radial_centres'])}, "
                    f"time_basis={len(c['time_centres'])}")
        else:
            size = f"hidden={c['hidden']}, layers={c['layers']}"
        return (f"eqflow.Model(field_type={self.field_type!r}, system={c['system']!r}, "
                f"n_particles={c['n_particles']}, dim={c['dim']}, {size}, "
                f"parameters={self.parameter_count})")

    # -- parameters
    def parameters(self):
        """The flat parameter vector (float64 NumPy copy, the model file's layout)."""
        return self._m.parameters()

    def set_parameters(self, params):
        self._m.set_parameters(_to_numpy(params, "parameters"))

    def layout(self):
        """[(name, shape, offset)] of every tensor in the flat parameters (state_dict names)."""
        return [(name, tuple(shape), offset) for name, shape, offset in self._m.layout()]

    def state_dict(self):
        """{name: float64 array} with the model file's tensor names and shapes (for the EGNN,
        the PyTorch module's of tools/egnn_torch.py)."""
        p = self.parameters()
        out = {}
        for name, shape, offset in self.layout():
            size = math.prod(shape)
            out[name] = p[offset:offset + size].reshape(shape).copy()
        return out

    def load_state_dict(self, tensors, what="state_dict"):
        """Replaces the parameters by named tensors (NumPy or torch), checked by the model-file
        reader: every tensor of the layout present with its shape, nothing else."""
        arrays = {str(k): np.ascontiguousarray(_to_numpy(v, str(k)), dtype=np.float64)
                  for k, v in dict(tensors).items()}
        fresh = _eqflow.model_from_tensors(self._m, arrays, what)
        self._m.set_parameters(fresh.parameters())

    def save(self, path, dtype="f64"):
        """Writes an eqflow model file (safetensors; dtype "f64" or "f32"), atomically."""
        self._m.save(str(path), dtype)

    # -- the field
    def _prepare(self, x, t):
        x = _as_array(x, "x")
        batch = _batch(x)
        _check_finite_cuda(x, "x")
        s = self.length_scale
        if s != 1.0:
            _check_contiguous(x, "x")
            x = _export(x) / s
        tt = _times(t, x, batch)
        _check_finite_cuda(tt, "t")
        return x, tt, batch, s

    def field(self, x, t):
        """v(x, t), the caller's kind and shape."""
        x_in = _as_array(x, "x")
        x, tt, batch, s = self._prepare(x_in, t)
        v = _empty(x, tuple(x.shape))
        self._m._field(_export(x), tt, v, None, None, _stream(x))
        return v * s if s != 1.0 else v

    def divergence(self, x, t):
        """The exact divergence sum_ia dv_ia/dx_ia, [B] (forward mode along all n*d directions)."""
        return self.field_and_divergence(x, t)[1]

    def field_and_divergence(self, x, t):
        """(v, div) from one pass."""
        x_in = _as_array(x, "x")
        x, tt, batch, s = self._prepare(x_in, t)
        v = _empty(x, tuple(x.shape))
        div = _empty(x, (batch,))
        self._m._field(_export(x), tt, v, div, None, _stream(x))
        return (v * s if s != 1.0 else v), div


def load_model(path):
    """Reads an eqflow model file (eqflow train's RUN/model.safetensors) of either field type,
    as its eqflow.format says: the EGNN or the kernel dynamics."""
    return Model(_eqflow.load_model(str(path)))


def make_model(n_particles, dim, *, system="", hidden=32, layers=3, attention=True, tanh=True,
               coords_range=0.0, atom_types=(), length_scale=1.0, seed=0):
    """A freshly initialised EGNN (PyTorch's default initialisation, from Philox(seed))."""
    return Model(_eqflow.make_model(int(n_particles), int(dim), str(system), int(hidden),
                                    int(layers), bool(attention), bool(tanh), float(coords_range),
                                    [int(a) for a in atom_types], float(length_scale), int(seed)))


# ---- energies -------------------------------------------------------------------------------

def energy_forces(system_, x, *, forces=True):
    """(u, f): reduced energies u = E/kT [B] and forces -dE/dx (x's shape) of configurations x
    [B, n, d] or [B, n*d]; the caller's kind, dtype and device."""
    sys_ = system(system_)
    x = _as_array(x, "x")
    batch = _batch(x)
    _check_finite_cuda(x, "x")
    u = _empty(x, (batch,))
    f = _empty(x, tuple(x.shape)) if forces else None
    _eqflow._energy_forces(sys_, _export(x), u, f, _stream(x))
    return u, f


def energy(system_, x):
    """Reduced energies u = E/kT, [B]."""
    return energy_forces(system_, x, forces=False)[0]


def forces(system_, x):
    """Forces -dE/dx, x's shape."""
    return energy_forces(system_, x)[1]


# ---- assignment and couplings ---------------------------------------------------------------

def assign(cost, *, return_total=False):
    """Exact linear sum assignment of each [n, n] problem: cost [P, n, n] -> perm [P, n] int64
    (perm[p, i] = the column given to row i), or [n, n] -> [n]. With return_total, also the
    optimal totals (float64, [P], or a float for one problem). +inf marks forbidden pairs."""
    cost = _as_array(cost, "cost")
    shape = tuple(cost.shape)
    perm = _empty(cost, shape[:-1] if len(shape) >= 1 else (), dtype=_int64(cost))
    total = _empty(cost, (shape[0] if len(shape) == 3 else 1,), dtype=_float64(cost))
    _eqflow._assign(_export(cost), perm, total, _stream(cost))
    if not return_total:
        return perm
    return perm, (total if len(shape) == 3 else float(total[0]))


def couple(x0, x1, kind="eqot", *, atom_types=(), allow_reflection=False, frame_starts=True,
           refine_iterations=1, exhaustive=True, max_starts=0, threads=0):
    """The flow-matching coupling (docs/design.md section 5): pairs each prior sample x0[i]
    with a data sample. x0, x1 [B, n, d]. Returns (x1_paired, pairing [B] int64, cost [B]
    float64): x1_paired[i] is x1[pairing[i]] (permuted and rotated onto x0[i] for eqot).
    eqot in 2D with n <= 5 tries every permutation (the exact minimum) unless exhaustive=False,
    which keeps the principal-axes search (frame_starts, refine_iterations) there too.
    max_starts=k > 0 searches only the k principal-axes starts with the lowest nearest-neighbour
    cost (still invariant; faster, a slightly higher coupled cost; 0: every start)."""
    x0 = _as_array(x0, "x0")
    x1 = _as_array(x1, "x1")
    batch = _batch(x0, "x0")
    _check_finite_cuda(x0, "x0")
    _check_finite_cuda(x1, "x1")
    out = _empty(x0, tuple(x0.shape))
    pairing = _empty(x0, (batch,), dtype=_int64(x0))
    cost = _empty(x0, (batch,), dtype=_float64(x0))
    _eqflow._couple(str(kind), _export(x0), _export(x1), out, pairing, cost,
                    bool(allow_reflection), [int(a) for a in atom_types], bool(frame_starts),
                    int(refine_iterations), bool(exhaustive), int(max_starts), int(threads),
                    _stream(x0))
    return out, pairing, cost


# ---- the commands ---------------------------------------------------------------------------

def data(system_, samples, *, seed=0, replicas=8, t_max=0.0, burn_in=2000, thin=0, chains=0,
         threads=0):
    """`eqflow data`: equilibrium samples by parallel-tempering Metropolis, [N, n, d] float64,
    centred. The same seed gives the same samples whatever the thread count."""
    return _eqflow.data(system(system_), int(samples), int(seed), int(replicas), float(t_max),
                        int(burn_in), int(thin), int(chains), int(threads))


def train(system_, data_, *, objective="eqot", field="egnn", out_dir=None, epochs=10, batch=256,
          lr=5e-4, hidden=0, layers=0, radial_basis=0, r_max=0.0, time_basis=0, sigma=0.01,
          seed=0, device="auto", reference=False, ode_steps=None, resume=False, overwrite=False,
          ema=0.0, val_fraction=0.1, threads=0, length_scale="auto", log_every=10, stop_after=0,
          eqot_starts=0, time_power=1.0, progress=None):
    """`eqflow train`: trains a vector field on configurations data_ [N, n, d] or [N, n*d]
    (centred on load), with the command's options and rules. Returns (model, info): the model to
    sample from (EMA weights with ema > 0) and a dict (step, total_steps, loss, validation_loss,
    skipped, seconds, raw_model, ...).

    objective: "fm", "ot", "eqot" (flow matching with that coupling) or "likelihood" (maximum
    likelihood through ode_steps fixed RK4 steps, default 10, with the exact divergence; on the
    CPU (device="auto" picks it; "cuda" is refused for the EGNN and runs the kernel field's CUDA
    field): on the fast float32 field unless reference=True, for both fields; ode_steps with
    another objective is an error). field: "egnn" (sized by hidden and layers; 0: the system's default) or "kernel"
    (the kernel dynamics, sized by radial_basis centres on [0, r_max] and time_basis centres; 0:
    the system's default; on the CPU or on CUDA like the EGNN). reference: the double CPU
    reference field instead of the fast float32 one. eqot_starts=k (objective "eqot"): the
    command's --eqot-starts, only the k best-scored principal-axes starts per pair (0: all).
    time_power=A (flow matching): the command's --time-power, training times t = u^(1/A) with
    u ~ U(0, 1) (density A t^(A-1); A > 1 favours the data end; 1: uniform).

    With out_dir, writes RUN/model.safetensors, RUN/checkpoint.safetensors and
    RUN/train_log.jsonl as the command does (resume=True continues from the checkpoint; a
    directory holding another run is refused unless overwrite=True). progress(step, total,
    loss, lr) is called after every step. Ctrl-C stops at the end of the step and raises
    KeyboardInterrupt (with out_dir, after writing a checkpoint)."""
    sys_ = system(system_)
    x = np.ascontiguousarray(_to_numpy(data_, "data"))
    scale = 0.0 if length_scale == "auto" else float(length_scale)
    model, raw, info = _eqflow.train(
        sys_, x, str(objective), str(field), "" if out_dir is None else str(out_dir),
        int(epochs), int(batch), float(lr), int(hidden), int(layers), int(radial_basis),
        float(r_max), int(time_basis), float(sigma), int(seed), str(device), bool(reference),
        -1 if ode_steps is None else int(ode_steps), bool(resume), bool(overwrite), float(ema),
        float(val_fraction), int(threads), scale, int(log_every), int(stop_after),
        int(eqot_starts), float(time_power), progress)
    info = dict(info)
    info["raw_model"] = Model(raw)
    return Model(model), info


def _flow_args(solver, atol, rtol, steps, batch, hutchinson, threads, device):
    return (str(solver), float(atol), float(rtol), int(steps), int(batch), int(hutchinson),
            int(threads), str(device))


def sample(model, samples, *, seed=0, system=None, solver="dopri5", atol=1e-4, rtol=1e-4,
           steps=20, batch=256, hutchinson=0, threads=0, device="auto"):
    """`eqflow sample`: samples of the flow with their exact log-density (Hutchinson's estimate
    with hutchinson=PROBES) and importance weights to the system's Boltzmann distribution.
    device: "cpu", "cuda" or "auto" (the GPU when one is usable), as in the commands, for either
    field type; likewise in log_likelihood and evaluate.
    Returns a dict: x [N, n, d], x0, log_q, u, log_w, path_length (NumPy) and ess,
    energy_mean_samples, energy_mean_reweighted, zero_weight_samples, failed_integrations, ..."""
    return dict(_eqflow.sample(model._m, int(samples), int(seed), system or "",
                               *_flow_args(solver, atol, rtol, steps, batch, hutchinson, threads,
                                           device)))


def log_likelihood(model, x, *, solver="dopri5", atol=1e-4, rtol=1e-4, steps=20, batch=256,
                   hutchinson=0, threads=0, device="auto"):
    """The model's normalised log-density of configurations x [N, n, d] or [N, n*d] (centred on
    load) by integrating back to the prior. Returns a dict: log_q [N], x0, path_length, failed."""
    x = np.ascontiguousarray(_to_numpy(x, "x"))
    return dict(_eqflow.log_likelihood(model._m, x, *_flow_args(solver, atol, rtol, steps, batch,
                                                               hutchinson, threads, device)))


def evaluate(model, test, *, samples=1000, seed=0, system=None, figure=None, solver="dopri5",
             atol=1e-4, rtol=1e-4, steps=20, batch=256, hutchinson=0, threads=0, device="auto"):
    """`eqflow eval`: the metrics dict of the command's JSON (nll, nll_normalized, ess,
    path_length and their *_stderr, kl_test, kl_test_stderr, entropy_test, log_z, n_samples,
    n_test, energy means, histogram, ...) plus the samples [N, n, d] and their log_w. figure:
    also write the energy-histogram SVG there."""
    test = np.ascontiguousarray(_to_numpy(test, "test"))
    out = dict(_eqflow.evaluate(model._m, test, int(samples), int(seed), system or "",
                                "" if figure is None else str(figure),
                                *_flow_args(solver, atol, rtol, steps, batch, hutchinson,
                                            threads, device)))
    # The metrics come through the command's JSON, where a non-finite number is null.
    return {k: (math.nan if v is None else v) for k, v in out.items()}
