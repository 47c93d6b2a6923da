"""mamba_ssm, the peer our SSD scan is tested and benchmarked against, imported where it was not built.

mamba_ssm installs as pure Python (`MAMBA_SSM_INSTALL`): its Triton kernels and its torch reference
come with it, its CUDA extension does not. Its package __init__ imports that extension,
`selective_scan_cuda`, so a stub module stands in for it.

While mamba_ssm is importable, transformers picks mamba_ssm's fused kernels for any Mamba2 module
imported in that time, and those fail on a CPU. So `mamba_ssm_imported` takes every module imported
inside its window out of sys.modules again.

With `interpreted=True`, mamba_ssm's Triton kernels can run in the Triton interpreter
(TRITON_INTERPRET=1) on CPU tensors. Three things in their host code need a GPU, and each is
patched for the window:
- they enter `torch.cuda.device(tensor.device.index)`, and the index is None on a CPU;
- a few backward kernels split their work by `get_device_properties(...).multi_processor_count`;
  we answer an H100's 132;
- their autotuners would time several configs on a GPU. Each keeps one config instead: the one
  mamba_ssm itself falls back to when it may not autotune (its deterministic mode), the smallest
  product of block sizes times pipeline stages.
"""
import contextlib
import importlib
import importlib.util
import os
import sys
import types

import torch

MAMBA_SSM_VERSION = "2.3.2.post1"
MAMBA_SSM_INSTALL = ("MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip install --no-build-isolation "
                     f"--no-deps mamba-ssm=={MAMBA_SSM_VERSION}")
H100_SMS = 132
# Modules that hold mamba_chunk_scan_combined's kernels and their autotuners.
SSD_KERNEL_MODULES = ("ssd_bmm", "ssd_chunk_state", "ssd_state_passing", "ssd_chunk_scan", "ssd_combined")


def mamba_ssm_installed() -> bool:
    return importlib.util.find_spec("mamba_ssm") is not None


def stub_selective_scan_cuda() -> bool:
    """Put a stub for mamba_ssm's CUDA extension in sys.modules if the real one is absent; True if we did."""
    if "selective_scan_cuda" in sys.modules or importlib.util.find_spec("selective_scan_cuda") is not None:
        return False
    sys.modules["selective_scan_cuda"] = types.ModuleType("selective_scan_cuda")
    return True


@contextlib.contextmanager
def mamba_ssm_imported(interpreted=False):
    """A window in which mamba_ssm imports (and, if `interpreted`, its SSD kernels run in the Triton
    interpreter); afterwards sys.modules, torch.cuda and the autotuners are as before."""
    if not mamba_ssm_installed():
        raise ModuleNotFoundError(f"mamba-ssm is not installed; install it with: {MAMBA_SSM_INSTALL}")
    before = set(sys.modules)
    stubbed = stub_selective_scan_cuda()
    with contextlib.ExitStack() as undo:
        # Registered first, so it runs last: modules go only after every patch is undone.
        undo.callback(_forget_modules_imported_since, before, stubbed)
        if interpreted:
            _run_kernels_in_interpreter(undo)
        yield


def _forget_modules_imported_since(before, stubbed):
    for name in set(sys.modules) - before:
        if name.startswith(("mamba_ssm", "selective_scan_cuda", "transformers.models.mamba")):
            del sys.modules[name]
    if stubbed:
        sys.modules.pop("selective_scan_cuda", None)


def _run_kernels_in_interpreter(undo: contextlib.ExitStack):
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("mamba_ssm_imported(interpreted=True) needs TRITON_INTERPRET=1, set before the first "
                           "@triton.jit is evaluated")
    from triton.runtime.autotuner import Autotuner

    host_code_on_cpu(undo)
    for module_name in SSD_KERNEL_MODULES:
        module = importlib.import_module(f"mamba_ssm.ops.triton.{module_name}")
        for tuner in vars(module).values():
            if isinstance(tuner, Autotuner) and len(tuner.configs) > 1:
                undo.callback(setattr, tuner, "configs", tuner.configs)
                tuner.configs = [deterministic_config(tuner.configs)]


def host_code_on_cpu(undo: contextlib.ExitStack):
    """Let mamba_ssm's host code run on CPU tensors until `undo` closes: its torch.cuda.device(index) and
    get_device_properties(...).multi_processor_count calls (an H100's 132 SMs)."""
    cuda_device, device_properties = torch.cuda.device, torch.cuda.get_device_properties

    def device(index):
        return contextlib.nullcontext() if index is None else cuda_device(index)

    def properties(device=None):
        if torch.device(device if device is not None else "cpu").type == "cpu":
            return types.SimpleNamespace(multi_processor_count=H100_SMS, name="CPU standing in for an H100")
        return device_properties(device)

    torch.cuda.device, torch.cuda.get_device_properties = device, properties
    undo.callback(setattr, torch.cuda, "device", cuda_device)
    undo.callback(setattr, torch.cuda, "get_device_properties", device_properties)


def deterministic_config(configs):
    """The config mamba_ssm runs when it may not autotune (its deterministic mode): the smallest product of block
    sizes times pipeline stages, its measure of shared memory."""
    def cost(config):
        blocks = 1
        for key, value in config.kwargs.items():
            if key.startswith("BLOCK_SIZE_"):
                blocks *= value
        return blocks * (config.num_stages or 1)
    return min(configs, key=cost)
