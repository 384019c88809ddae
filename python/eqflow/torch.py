"""eqflow.torch: an eqflow model as a torch.nn.Module.

    field = eqflow.torch.Field(eqflow.load_model("run/model.safetensors"))
    v = field(t, x)                    # x [B, n, d] or [B, n*d]; t a number, 0-d or [B]
    v.pow(2).sum().backward()          # x.grad and field.params.grad, by eqflow's reverse mode

forward(t, x) has torchdiffeq's signature (odeint(field, x0, ts)). Gradients with respect to x and
to the parameters come from the library's own reverse mode (Field::backward); t gets none. On
the CPU the reference field computes in float64 (x of another dtype is converted, the result
converted back); CUDA tensors must be float32 and use the GPU kernels, with the parameters
cast to float32. Either field type works (the EGNN and the kernel dynamics), on either device
(the kernel field's GPU kernels have run on the CPU emulator of the GPU only, not on a GPU yet).
"""
import torch

from . import _api, _eqflow
from ._api import Error


class _FieldFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, t, params, model):
        v = torch.empty_like(x)
        model._m._field(x.detach(), t.detach(), v, None, params.detach(), _api._stream(x))
        ctx.save_for_backward(x, t, params)
        ctx.model = model
        return v

    @staticmethod
    def backward(ctx, dL_dv):
        x, t, params = ctx.saved_tensors
        dL_dparams = torch.zeros_like(params)  # the library accumulates into it
        dL_dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        ctx.model._m._backward(x.detach(), t.detach(), dL_dv.detach().contiguous(), dL_dparams,
                               dL_dx, params.detach(), _api._stream(x))
        return dL_dx, None, (dL_dparams if ctx.needs_input_grad[2] else None), None


class Field(torch.nn.Module):
    """The vector field of an eqflow.Model (EGNN or kernel dynamics) with its parameters as one
    torch Parameter (`params`, flat, the model file's layout). Train it with any torch optimiser
    and write it back with to_model().save(path)."""

    def __init__(self, model, *, dtype=torch.float64, device=None):
        super().__init__()
        if not isinstance(model, _api.Model):
            raise Error(f"eqflow.torch.Field: expected an eqflow.Model, got {type(model).__name__}")
        self.model = model
        self.params = torch.nn.Parameter(
            torch.as_tensor(model.parameters(), dtype=dtype, device=device).clone())

    @property
    def n_particles(self):
        return self.model.n_particles

    @property
    def dim(self):
        return self.model.dim

    def _inputs(self, t, x):
        if not isinstance(x, torch.Tensor):
            raise Error(f"eqflow.torch.Field: x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise Error(f"x has dtype {x.dtype}; expected a floating-point tensor")
        if x.dim() < 1:
            raise Error("x has shape [], expected [B, n, d] or [B, n*d]")
        if not x.is_contiguous():
            raise Error(f"x with shape {list(x.shape)} is not C-contiguous; pass x.contiguous()")
        if x.device != self.params.device:
            raise Error(f"x is on {x.device}, the field's parameters on {self.params.device}; "
                        "move one of them (field.to(device))")
        _api._check_finite_cuda(x, "x")
        if x.is_cuda:
            work_dtype = torch.float32
        else:
            work_dtype = self.params.dtype if self.params.dtype in (torch.float32,
                                                                     torch.float64) else x.dtype
        xs = x.to(work_dtype)
        s = self.model.length_scale
        if s != 1.0:
            xs = xs / s
        tt = _api._times(t, xs, x.shape[0])
        params = self.params if self.params.dtype == work_dtype else self.params.to(work_dtype)
        return xs, tt, params, s

    def forward(self, t, x):
        """v(x, t), x's shape and dtype; differentiable with respect to x and self.params."""
        xs, tt, params, s = self._inputs(t, x)
        v = _FieldFunction.apply(xs, tt, params, self.model)
        if s != 1.0:
            v = v * s
        return v.to(x.dtype)

    @torch.no_grad()
    def divergence(self, t, x):
        """(v, exact divergence [B]) with the current parameters, without autograd."""
        xs, tt, params, s = self._inputs(t, x)
        v = torch.empty_like(xs)
        div = torch.empty(xs.shape[0], dtype=xs.dtype, device=xs.device)
        self.model._m._field(xs, tt, v, div, params.detach(), _api._stream(xs))
        if s != 1.0:
            v = v * s
        return v.to(x.dtype), div.to(x.dtype)

    def to_model(self):
        """An eqflow.Model with the current parameters (e.g. to save after training in torch)."""
        # A copy of the model (configuration and parameters), then the Parameter's values.
        out = _api.Model(_eqflow.model_from_tensors(self.model._m, self.model.state_dict(),
                                                    "eqflow.torch.Field"))
        out.set_parameters(self.params.detach().to("cpu", torch.float64).numpy())
        return out

    def extra_repr(self):
        return repr(self.model)
