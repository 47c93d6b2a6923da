"""Mamba-2 language model on our kernels (`kernels.ssd`, `kernels.conv`), with MA-GC.

The parameterisation is mamba_ssm's `MambaLMHeadModel` / transformers' `Mamba2ForCausalLM`
(one fused in_proj giving z, x, B, C, dt; a depthwise causal conv over xBC; dt_bias, A_log, D;
a gated RMSNorm with norm_before_gate=False; out_proj; pre-norm residual blocks; a final norm;
an lm_head, optionally tied), so the checkpoints of both load (`Mamba2LM.from_pretrained`).

Every layer is a function of (hidden, state) -> (hidden, new_state), where a layer's state is
its (conv_state (b, conv_dim, d_conv-1), ssm_state (b, nheads, headdim, d_state) fp32). That
one shape serves three uses: a long input fed in pieces (`states=`), generation one token at a
time in O(1) memory (`step`, `generate`), and the checkpointed grid of MA-GC
(`kernels.checkpoint`), which cuts the sequence into blocks joined by those states.

Shapes: b batch, l tokens, d d_model.
"""
from __future__ import annotations

import json
import math
import pathlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernels.checkpoint import GridCosts, checkpointed_grid, plan_grid
from kernels.conv import causal_conv1d, causal_conv1d_step
from kernels.ssd import ssd_scan, ssd_step

CHECKPOINT_MODES = ("none", "layer", "sqrt", "ma_gc")
INITS = ("mamba_ssm", "transformers")
SSD_BACKENDS = ("auto", "triton", "torch", "naive")
CONV_BACKENDS = ("auto", "torch", "naive")
LayerState = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Mamba2Config:
    """A Mamba-2 LM. Defaults are a tiny CPU model; paper scales set d_model/n_layer (and
    d_state 128, headdim 64) like mamba_ssm's Mamba2 (370M: 1024 x 48, 2.7B: 2560 x 64)."""

    d_model: int = 256
    n_layer: int = 4
    vocab_size: int = 2048
    d_state: int = 64
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    pad_vocab_size_multiple: int = 8
    residual_in_fp32: bool = True
    conv_bias: bool = True
    proj_bias: bool = False
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_limit_min: float = 0.0
    dt_limit_max: float = float("inf")
    A_init_min: float = 1.0
    A_init_max: float = 16.0
    # How a randomly initialised LM starts (checkpoints overwrite it): "mamba_ssm" (A uniform in
    # [A_init_min, A_init_max], embeddings N(0, 0.02), default in_proj, out_proj scaled by 1/sqrt(n_layer)) or
    # "transformers" (its Mamba2's: A = 1..nheads, embeddings and in_proj N(0, 0.1), conv bias 0, out_proj unscaled).
    init: str = "mamba_ssm"
    # "none" keeps every activation; "layer" keeps each layer's input (recomputes one layer);
    # "sqrt" keeps the input of every ceil(sqrt(n_layer))-th layer; "ma_gc" keeps the input of
    # every ma_gc_l-th layer and every layer's state every ma_gc_s tokens (kernels.checkpoint).
    gradient_checkpointing: str = "none"
    ma_gc_l: int | str = "auto"
    ma_gc_s: int | str = "auto"
    ssd_backend: str = "auto"
    conv_backend: str = "auto"

    def __post_init__(self):
        def fail(name, want):
            raise ValueError(f"Mamba2Config.{name} = {getattr(self, name)!r}: expected {want}")

        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "headdim",
                     "ngroups", "chunk_size", "pad_vocab_size_multiple"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                fail(name, "a positive int")
        if self.d_conv < 2:
            fail("d_conv", ">= 2 (the conv state holds d_conv - 1 inputs)")
        if self.d_inner % self.headdim:
            fail("headdim", f"a divisor of d_inner = expand * d_model = {self.d_inner}")
        if self.nheads % self.ngroups or self.d_inner % self.ngroups:
            fail("ngroups", f"a divisor of nheads = {self.nheads}")
        if not self.norm_eps > 0:
            fail("norm_eps", "> 0")
        if not 0 < self.dt_min <= self.dt_max:
            fail("dt_min", f"in (0, dt_max = {self.dt_max}]")
        if not 0 <= self.dt_limit_min <= self.dt_limit_max:
            fail("dt_limit_min", f"in [0, dt_limit_max = {self.dt_limit_max}]")
        if not 0 < self.A_init_min <= self.A_init_max:
            fail("A_init_min", f"in (0, A_init_max = {self.A_init_max}]")
        if self.init not in INITS:
            fail("init", f"one of {INITS}")
        if self.gradient_checkpointing not in CHECKPOINT_MODES:
            fail("gradient_checkpointing", f"one of {CHECKPOINT_MODES}")
        if self.ma_gc_l != "auto" and (not isinstance(self.ma_gc_l, int) or not 1 <= self.ma_gc_l <= self.n_layer):
            fail("ma_gc_l", f"'auto' or an int in [1, n_layer = {self.n_layer}]")
        if self.ma_gc_s != "auto" and (not isinstance(self.ma_gc_s, int) or self.ma_gc_s < 1
                                       or self.ma_gc_s % self.chunk_size):
            fail("ma_gc_s", f"'auto' or a positive multiple of chunk_size = {self.chunk_size}")
        if self.ssd_backend not in SSD_BACKENDS:
            fail("ssd_backend", f"one of {SSD_BACKENDS}")
        if self.conv_backend not in CONV_BACKENDS:
            fail("conv_backend", f"one of {CONV_BACKENDS}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def d_in_proj(self) -> int:
        return 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m

    @property
    def dt_limit(self) -> tuple[float, float]:
        return (self.dt_limit_min, self.dt_limit_max)

    def grid_costs(self) -> GridCosts:
        """The MA-GC cost model's constants, in elements, as the paper derives them (for the
        2.7B model they give its C_L 2,560, C_S 671,488, C_grid 15,696, C_state 660,736):
        C_L a layer input per token (d_model); C_S one layer's state ((d_conv-1) conv_dim +
        d_inner d_state); C_grid a layer's recomputed activations per token (in_proj output +
        out_proj input); C_state the per-token working set of one sequence block
        (d_inner d_state + conv_dim)."""
        return GridCosts(
            layer_input=self.d_model,
            layer_state=(self.d_conv - 1) * self.conv_dim + self.d_inner * self.d_state,
            cell=self.d_in_proj + self.d_inner,
            block=self.d_inner * self.d_state + self.conv_dim,
        )


@dataclass
class Mamba2LMOutput:
    """loss: mean cross-entropy over shifted labels != -100 (None without labels);
    logits (b, l, vocab) fp32 (None with return_logits=False); states: per layer
    (conv_state, ssm_state) after the last token (None unless return_states)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    states: list[LayerState] | None = None


class RMSNorm(nn.Module):
    """x (..., d) -> x / rms(x) * weight, computed in fp32 (transformers' Mamba2RMSNorm)."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class GatedRMSNorm(nn.Module):
    """norm(y * silu(z)) with the RMS taken per group of `group_size` channels
    (norm_before_gate=False, as mamba_ssm's Mamba2). y, z (..., d) -> (..., d) in y.dtype."""

    def __init__(self, d: int, group_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.group_size = group_size
        self.eps = eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = y.float() * F.silu(z.float())
        h = h.unflatten(-1, (-1, self.group_size))
        h = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
        return self.weight * h.to(y.dtype)


class Mamba2Mixer(nn.Module):
    """The Mamba-2 mixer. Parameter names and shapes are mamba_ssm's (and transformers')."""

    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.cfg = cfg
        self.in_proj = nn.Linear(cfg.d_model, cfg.d_in_proj, bias=cfg.proj_bias)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim, bias=cfg.conv_bias,
                                padding=cfg.d_conv - 1)
        self.dt_bias = nn.Parameter(torch.empty(cfg.nheads))
        self.A_log = nn.Parameter(torch.empty(cfg.nheads))
        self.D = nn.Parameter(torch.empty(cfg.nheads))
        self.norm = GatedRMSNorm(cfg.d_inner, cfg.d_inner // cfg.ngroups, cfg.norm_eps)
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=cfg.proj_bias)

    def _split(self, zxbcdt: torch.Tensor):
        c = self.cfg
        return zxbcdt.split([c.d_inner, c.conv_dim, c.nheads], dim=-1)

    def _split_xbc(self, xbc: torch.Tensor):
        c = self.cfg
        return xbc.split([c.d_inner, c.ngroups * c.d_state, c.ngroups * c.d_state], dim=-1)

    def forward(self, u: torch.Tensor, state: LayerState | None = None) -> tuple[torch.Tensor, LayerState]:
        """u (b, l, d); state (conv (b, conv_dim, d_conv-1), ssm (b, nheads, headdim, d_state)) or None
        (zeros) -> (out (b, l, d), new state)."""
        c = self.cfg
        b, l, _ = u.shape
        conv_state, ssm_state = (None, None) if state is None else state
        z, xbc, dt = self._split(self.in_proj(u))
        xbc, conv_state = causal_conv1d(xbc.transpose(1, 2), self.conv1d.weight[:, 0], self.conv1d.bias,
                                        initial_states=conv_state, return_final_states=True, activation="silu",
                                        backend=c.conv_backend)
        x, B, C = self._split_xbc(xbc.transpose(1, 2))
        y, ssm_state = ssd_scan(
            x.reshape(b, l, c.nheads, c.headdim), dt, -torch.exp(self.A_log.float()),
            B.reshape(b, l, c.ngroups, c.d_state), C.reshape(b, l, c.ngroups, c.d_state), c.chunk_size,
            D=self.D, dt_bias=self.dt_bias, initial_states=ssm_state, dt_softplus=True, dt_limit=c.dt_limit,
            return_final_states=True, backend=c.ssd_backend)
        out = self.out_proj(self.norm(y.reshape(b, l, c.d_inner), z))
        return out, (conv_state, ssm_state)

    def step(self, u: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        """One token: u (b, d), state as in forward (not None) -> (out (b, d), new state)."""
        c = self.cfg
        b = u.shape[0]
        conv_state, ssm_state = state
        z, xbc, dt = self._split(self.in_proj(u))
        xbc, conv_state = causal_conv1d_step(xbc, conv_state, self.conv1d.weight[:, 0], self.conv1d.bias,
                                             activation="silu")
        x, B, C = self._split_xbc(xbc)
        y, ssm_state = ssd_step(
            ssm_state, x.reshape(b, c.nheads, c.headdim), dt, -torch.exp(self.A_log.float()),
            B.reshape(b, c.ngroups, c.d_state), C.reshape(b, c.ngroups, c.d_state), D=self.D,
            dt_bias=self.dt_bias, dt_softplus=True, dt_limit=c.dt_limit)
        return self.out_proj(self.norm(y.reshape(b, c.d_inner), z)), (conv_state, ssm_state)

    def zero_state(self, batch: int, dtype: torch.dtype, device) -> LayerState:
        c = self.cfg
        return (torch.zeros(batch, c.conv_dim, c.d_conv - 1, dtype=dtype, device=device),
                torch.zeros(batch, c.nheads, c.headdim, c.d_state, dtype=torch.float32, device=device))


class Mamba2Block(nn.Module):
    """Pre-norm residual block: h -> h + mixer(norm(h)). The residual stream h is fp32 when
    cfg.residual_in_fp32 (mamba_ssm's and transformers' convention)."""

    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = Mamba2Mixer(cfg)

    def forward(self, h: torch.Tensor, state: LayerState | None = None) -> tuple[torch.Tensor, LayerState]:
        out, state = self.mixer(self.norm(h.to(self.norm.weight.dtype)), state)
        return h + out, state

    def step(self, h: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        out, state = self.mixer.step(self.norm(h.to(self.norm.weight.dtype)), state)
        return h + out, state


class Mamba2Backbone(nn.Module):
    """Embedding, blocks, final norm: the `backbone.` prefix of both checkpoint layouts."""

    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.embedding = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Mamba2Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)


class Mamba2LM(nn.Module):
    """Mamba-2 causal LM. `forward` runs a whole input (or a piece of one, given `states`),
    `step`/`generate` one token at a time with O(1) state."""

    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.cfg = cfg
        self.backbone = Mamba2Backbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """`cfg.init` "mamba_ssm": dt_bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max]; A uniform in
        [A_init_min, A_init_max]; D = 1; embeddings N(0, 0.02); out_proj scaled by 1/sqrt(n_layer) (GPT-2's
        prenorm-residual rule); biases zero. "transformers" (its Mamba2PreTrainedModel): the same dt and D, A = 1..nheads,
        embeddings and in_proj N(0, 0.1), conv bias zero, out_proj unscaled."""
        c = self.cfg
        peer = c.init == "transformers"
        nn.init.normal_(self.backbone.embedding.weight, std=0.1 if peer else 0.02)
        for block in self.backbone.layers:
            m = block.mixer
            dt = torch.exp(torch.rand(c.nheads) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min))
            dt = dt.clamp(min=c.dt_init_floor)
            m.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            A = torch.arange(1, c.nheads + 1, dtype=torch.float32) if peer else \
                torch.empty(c.nheads).uniform_(c.A_init_min, c.A_init_max)
            m.A_log.copy_(torch.log(A))
            m.D.fill_(1.0)
            if peer:
                nn.init.normal_(m.in_proj.weight, std=0.1)
                if m.conv1d.bias is not None:
                    m.conv1d.bias.zero_()
            nn.init.kaiming_uniform_(m.out_proj.weight, a=math.sqrt(5))
            if not peer:
                m.out_proj.weight /= math.sqrt(c.n_layer)
            for linear in (m.in_proj, m.out_proj):
                if linear.bias is not None:
                    linear.bias.zero_()

    # ----------------------------------------------------------------------------------- forward

    def forward(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, states: list[LayerState] | None = None,
                return_states: bool = False, return_logits: bool = True) -> Mamba2LMOutput:
        """input_ids (b, l) or inputs_embeds (b, l, d); labels (b, l) with -100 = ignored,
        shifted inside like transformers (position t predicts labels[t + 1]); states from a
        previous call's output (`return_states=True`) to continue a sequence fed in pieces.

        return_logits=False computes the loss from the labelled positions only, so a
        million-token input whose loss sits on a few answer tokens never holds (l, vocab) logits;
        with return_states and no labels it is a prefill that forms no logits at all.
        """
        h = self._embed(input_ids, inputs_embeds)
        if states is not None and len(states) != self.cfg.n_layer:
            raise ValueError(f"Mamba2LM.forward: states has {len(states)} entries, expected n_layer = "
                             f"{self.cfg.n_layer}")
        h, new_states = self._run_layers(h, states)
        if not (return_logits or return_states or labels is not None):
            raise ValueError("Mamba2LM.forward: return_logits=False without labels or return_states returns nothing")
        loss = logits = None
        if return_logits:
            logits = self._logits(h)
        if labels is not None:
            if labels.shape != h.shape[:2]:
                raise ValueError(f"Mamba2LM.forward: labels.shape = {tuple(labels.shape)}, expected "
                                 f"{tuple(h.shape[:2])}")
            target = labels[:, 1:]
            keep = target != -100
            picked = logits[:, :-1][keep] if logits is not None else self._logits(h[:, :-1][keep])
            # An input with no labelled token gives loss 0 (with a graph), not 0/0.
            loss = F.cross_entropy(picked, target[keep], reduction="sum") / keep.sum().clamp(min=1)
        return Mamba2LMOutput(loss=loss, logits=logits, states=new_states if return_states else None)

    def _embed(self, input_ids, inputs_embeds) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Mamba2LM: give exactly one of input_ids and inputs_embeds")
        h = self.backbone.embedding(input_ids) if inputs_embeds is None else inputs_embeds
        if h.shape[-1] != self.cfg.d_model:
            raise ValueError(f"Mamba2LM: inputs_embeds has width {h.shape[-1]}, expected d_model = {self.cfg.d_model}")
        return h.float() if self.cfg.residual_in_fp32 else h

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        h = self.backbone.norm_f(h)
        return self.lm_head(h.to(self.lm_head.weight.dtype)).float()

    def _run_layers(self, h: torch.Tensor, states):
        layers = list(self.backbone.layers)
        states = [None] * len(layers) if states is None else list(states)
        mode = self.cfg.gradient_checkpointing
        needs_grad = torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in self.parameters()))
        if mode == "none" or not needs_grad:
            new_states = []
            for layer, state in zip(layers, states):
                h, state = layer(h, state)
                new_states.append(state)
            return h, new_states
        group_size, block_size = self.checkpoint_grid(h.shape[1])
        return checkpointed_grid(layers, h, states, group_size, block_size)

    def checkpoint_grid(self, seqlen: int) -> tuple[int, int]:
        """(l, s) of the checkpoint grid for an input of `seqlen` tokens: layers per group
        and tokens per sequence block (s >= seqlen: one block, nothing kept along the sequence)."""
        c = self.cfg
        if c.gradient_checkpointing == "layer":
            return 1, seqlen
        if c.gradient_checkpointing == "sqrt":
            return math.ceil(math.sqrt(c.n_layer)), seqlen
        if c.gradient_checkpointing != "ma_gc":
            raise ValueError("Mamba2LM.checkpoint_grid: no grid for gradient_checkpointing = "
                             f"{c.gradient_checkpointing!r}")
        plan = plan_grid(c.n_layer, seqlen, c.grid_costs(), block_multiple=c.chunk_size,
                         group_size=None if c.ma_gc_l == "auto" else c.ma_gc_l,
                         block_size=None if c.ma_gc_s == "auto" else c.ma_gc_s)
        return plan.group_size, plan.block_size

    # -------------------------------------------------------------------------------- generation

    def zero_states(self, batch: int, dtype: torch.dtype | None = None, device=None) -> list[LayerState]:
        """Per layer (conv (b, conv_dim, d_conv-1), ssm (b, nheads, headdim, d_state) fp32) zeros."""
        w = self.lm_head.weight
        return [layer.mixer.zero_state(batch, dtype or w.dtype, device or w.device) for layer in self.backbone.layers]

    def step(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
             states: list[LayerState] | None = None) -> tuple[torch.Tensor, list[LayerState]]:
        """One token per row: input_ids (b,) or inputs_embeds (b, d), states (None: zeros) ->
        (logits (b, vocab) fp32, new states). Constant memory and time per token."""
        h = self._embed(input_ids, inputs_embeds)
        if h.dim() != 2:
            raise ValueError(f"Mamba2LM.step: one token per row, got embeddings of shape {tuple(h.shape)}")
        if states is None:
            states = self.zero_states(h.shape[0], self.backbone.norm_f.weight.dtype, h.device)
        new_states = []
        for layer, state in zip(self.backbone.layers, states):
            h, state = layer.step(h, state)
            new_states.append(state)
        return self._logits(h), new_states

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                 max_new_tokens: int = 32, eos_token_id: int | None = None, temperature: float = 0.0,
                 states: list[LayerState] | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Prefill the prompt (input_ids (b, l) or inputs_embeds (b, l, d)) with one forward,
        then decode token by token. temperature 0 is greedy, > 0 samples. Returns the new tokens
        (b, <= max_new_tokens); rows that emitted eos_token_id are padded with it."""
        out = self.forward(input_ids=input_ids, inputs_embeds=inputs_embeds, states=states, return_states=True,
                           return_logits=True)
        logits, states = out.logits[:, -1], out.states
        finished = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        new_tokens = []
        for _ in range(max_new_tokens):
            logits = logits[:, : self.cfg.vocab_size]
            if temperature > 0:
                token = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)[:, 0]
            else:
                token = logits.argmax(-1)
            if eos_token_id is not None:
                token = torch.where(finished, torch.full_like(token, eos_token_id), token)
                finished |= token == eos_token_id
            new_tokens.append(token)
            if eos_token_id is not None and bool(finished.all()):
                break
            logits, states = self.step(input_ids=token, states=states)
        return torch.stack(new_tokens, 1) if new_tokens else logits.new_zeros(logits.shape[0], 0, dtype=torch.long)

    # ------------------------------------------------------------------------------- checkpoints

    @classmethod
    def from_pretrained(cls, path: str | pathlib.Path, **overrides) -> "Mamba2LM":
        """Load a transformers Mamba2 dir (config.json with model_type "mamba2" + *.safetensors)
        or a mamba_ssm dir (config.json with "ssm_cfg" + pytorch_model.bin). `overrides` set
        Mamba2Config fields the checkpoint does not fix (gradient_checkpointing, ssd_backend, ...).
        Missing or unexpected weights raise an error that lists them."""
        path = pathlib.Path(path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"Mamba2LM.from_pretrained: no config.json in {path}")
        raw = json.loads(config_file.read_text())
        if "ssm_cfg" in raw:
            cfg = _config_from_mamba_ssm(raw, config_file, overrides)
            state_dict = _load_mamba_ssm_weights(path)
        elif raw.get("model_type") == "mamba2":
            cfg = _config_from_transformers(raw, config_file, overrides)
            state_dict = {_transformers_to_ours(k): v for k, v in _load_safetensors(path).items()}
        else:
            raise ValueError(f"{config_file}: neither a transformers Mamba2 config (model_type 'mamba2') nor a "
                             "mamba_ssm config (with 'ssm_cfg')")
        model = cls(cfg)
        if cfg.tie_embeddings:
            # Tied checkpoints may or may not store the head; it is the embedding either way.
            head = state_dict.pop("lm_head.weight", None)
            if head is not None and not torch.equal(head, state_dict.get("backbone.embedding.weight", head)):
                raise ValueError(f"{path}: tie_embeddings is set but lm_head.weight differs from the embedding")
        own = model.state_dict()
        if cfg.tie_embeddings:
            own.pop("lm_head.weight")
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        wrong_shape = sorted(f"{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
                             for k in set(own) & set(state_dict) if state_dict[k].shape != own[k].shape)
        if missing or unexpected or wrong_shape:
            raise ValueError(f"Mamba2LM.from_pretrained({path}): missing keys {missing}, unexpected keys "
                             f"{unexpected}, shape mismatches {wrong_shape}")
        model.load_state_dict(state_dict, strict=not cfg.tie_embeddings)
        return model


def _transformers_to_ours(key: str) -> str:
    # transformers names the embedding "embeddings"; everything else matches mamba_ssm's names.
    return key.replace("backbone.embeddings.", "backbone.embedding.")


def _load_safetensors(path: pathlib.Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"Mamba2LM.from_pretrained: no *.safetensors in {path}")
    state_dict = {}
    for f in files:
        state_dict.update(load_file(str(f)))
    return state_dict


def _load_mamba_ssm_weights(path: pathlib.Path) -> dict[str, torch.Tensor]:
    f = path / "pytorch_model.bin"
    if not f.is_file():
        raise FileNotFoundError(f"Mamba2LM.from_pretrained: no pytorch_model.bin in {path}")
    return torch.load(f, map_location="cpu", weights_only=True)


def _config_from_mamba_ssm(raw: dict, where: pathlib.Path, overrides: dict) -> Mamba2Config:
    ssm = dict(raw["ssm_cfg"])
    if ssm.pop("layer", "Mamba2") != "Mamba2":
        raise ValueError(f"{where}: ssm_cfg.layer = {raw['ssm_cfg'].get('layer')!r}, only 'Mamba2' is supported")
    unsupported = {"d_intermediate": (raw.get("d_intermediate", 0), 0),
                   "attn_layer_idx": (raw.get("attn_layer_idx", []), []),
                   "rms_norm": (raw.get("rms_norm", True), True), "ssm_cfg.d_ssm": (ssm.pop("d_ssm", None), None),
                   "ssm_cfg.D_has_hdim": (ssm.pop("D_has_hdim", False), False),
                   "ssm_cfg.rmsnorm": (ssm.pop("rmsnorm", True), True),
                   "ssm_cfg.norm_before_gate": (ssm.pop("norm_before_gate", False), False)}
    for key, (value, supported) in unsupported.items():
        if value != supported:
            raise NotImplementedError(f"{where}: {key} = {value!r}; only {supported!r} is implemented")
    for ignored in ("conv_init", "use_mem_eff_path", "process_group", "sequence_parallel"):
        ssm.pop(ignored, None)
    known = {"d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size", "dt_min", "dt_max", "dt_init_floor"}
    fields = {k: ssm.pop(k) for k in list(ssm) if k in known}
    if "A_init_range" in ssm:
        fields["A_init_min"], fields["A_init_max"] = map(float, ssm.pop("A_init_range"))
    if "dt_limit" in ssm:
        fields["dt_limit_min"], fields["dt_limit_max"] = map(float, ssm.pop("dt_limit"))
    if "bias" in ssm:
        fields["proj_bias"] = ssm.pop("bias")
    if "conv_bias" in ssm:
        fields["conv_bias"] = ssm.pop("conv_bias")
    if ssm:
        raise ValueError(f"{where}: unknown ssm_cfg keys {sorted(ssm)}")
    return Mamba2Config(d_model=raw["d_model"], n_layer=raw["n_layer"], vocab_size=raw["vocab_size"],
                        pad_vocab_size_multiple=raw.get("pad_vocab_size_multiple", 8),
                        tie_embeddings=raw.get("tie_embeddings", True),
                        residual_in_fp32=raw.get("residual_in_fp32", True), **fields, **overrides)


def _config_from_transformers(raw: dict, where: pathlib.Path, overrides: dict) -> Mamba2Config:
    if raw.get("hidden_act", "silu") != "silu":
        raise NotImplementedError(f"{where}: hidden_act = {raw['hidden_act']!r}; only 'silu' is implemented")
    d_model, expand, headdim = raw["hidden_size"], raw.get("expand", 2), raw.get("head_dim", 64)
    if "num_heads" in raw and raw["num_heads"] * headdim != expand * d_model:
        raise ValueError(f"{where}: num_heads * head_dim = {raw['num_heads'] * headdim} != expand * hidden_size = "
                         f"{expand * d_model}")
    dt_limit = raw.get("time_step_limit", (0.0, float("inf")))
    # transformers stores the padded vocab as vocab_size: no further padding.
    return Mamba2Config(d_model=d_model, n_layer=raw["num_hidden_layers"], vocab_size=raw["vocab_size"],
                        pad_vocab_size_multiple=1, d_state=raw.get("state_size", 128),
                        d_conv=raw.get("conv_kernel", 4), expand=expand, headdim=headdim,
                        ngroups=raw.get("n_groups", 1), chunk_size=raw.get("chunk_size", 256),
                        tie_embeddings=raw.get("tie_word_embeddings", False),
                        norm_eps=raw.get("layer_norm_epsilon", 1e-5),
                        residual_in_fp32=raw.get("residual_in_fp32", True),
                        conv_bias=raw.get("use_conv_bias", True), proj_bias=raw.get("use_bias", False),
                        dt_min=raw.get("time_step_min", 0.001), dt_max=raw.get("time_step_max", 0.1),
                        dt_init_floor=raw.get("time_step_floor", 1e-4),
                        dt_limit_min=_json_float(dt_limit[0]), dt_limit_max=_json_float(dt_limit[1]), **overrides)


def _json_float(value) -> float:
    # transformers 5 writes non-finite floats as {"__float__": "Infinity"}; older versions as Infinity.
    return float(value["__float__"]) if isinstance(value, dict) and "__float__" in value else float(value)
