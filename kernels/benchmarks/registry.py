"""Named benchmark shapes: one name, one problem, the same everywhere results are quoted."""
import dataclasses


@dataclasses.dataclass(frozen=True)
class SSDShape:
    """An SSD problem: x (b, l, h, p), B and C (b, l, g, n), chunk length `chunk`."""
    b: int
    l: int
    h: int
    p: int
    n: int
    chunk: int
    g: int = 1  # Mamba-2's default: one B and C shared by all heads

    def __post_init__(self):
        if self.h % self.g:
            raise ValueError(f"SSDShape: h = {self.h} is not a multiple of g = {self.g}")

    @property
    def name(self) -> str:
        groups = f"_G{self.g}" if self.g != 1 else ""
        return f"B{self.b}_L{self.l}_H{self.h}_P{self.p}_N{self.n}_C{self.chunk}{groups}"


def parse_shape(name: str) -> SSDShape:
    """'B1_L1024_H8_P64_N128_C256[_G2]' -> SSDShape."""
    fields = {}
    for part in name.split("_"):
        key, value = part[:1], part[1:]
        if key not in "BLHPNCG" or not value.isdigit() or key in fields:
            raise ValueError(f"kernels.benchmarks.registry: shape {name!r}: bad field {part!r}; "
                             "expected B<b>_L<l>_H<h>_P<p>_N<n>_C<chunk>[_G<g>]")
        fields[key] = int(value)
    missing = set("BLHPNC") - set(fields)
    if missing:
        raise ValueError(f"kernels.benchmarks.registry: shape {name!r} lacks {''.join(sorted(missing))}")
    return SSDShape(b=fields["B"], l=fields["L"], h=fields["H"], p=fields["P"], n=fields["N"], chunk=fields["C"],
                    g=fields.get("G", 1))


def _named(*shapes: SSDShape) -> dict[str, SSDShape]:
    return {s.name: s for s in shapes}


# CPU suite: the target shape and a smaller one.
SSD_CPU = _named(
    SSDShape(b=1, l=1024, h=8, p=64, n=128, chunk=256),
    SSDShape(b=2, l=4096, h=8, p=64, n=128, chunk=256),
)

# GPU suite: L 2K..64K, H 32..80 (2.7B Mamba-2: d_model 2560 -> 80 heads of 64), bf16.
SSD_GPU = _named(
    SSDShape(b=4, l=2048, h=32, p=64, n=128, chunk=256),
    SSDShape(b=2, l=8192, h=32, p=64, n=128, chunk=256),
    SSDShape(b=2, l=8192, h=80, p=64, n=128, chunk=256),
    SSDShape(b=1, l=16384, h=64, p=64, n=128, chunk=256),
    SSDShape(b=1, l=32768, h=80, p=64, n=128, chunk=256),
    SSDShape(b=1, l=65536, h=80, p=64, n=128, chunk=256),
)

# The GPU suite's code path at interpreter-sized problems (TRITON_INTERPRET=1 on a CPU).
SSD_GPU_TINY = _named(
    SSDShape(b=1, l=40, h=2, p=16, n=16, chunk=16),
    SSDShape(b=1, l=64, h=4, p=16, n=32, chunk=16, g=2),
)
