"""One CLI for every paper: fit / validate / test / predict / report.

    python -m experiments.run fit --exp ma2mba/tiny [--out DIR] [--ckpt PATH] [key=value ...]

`--out` (default runs/<exp>) holds the resolved config (config.yaml), checkpoints/last.ckpt,
logs/<command>/metrics.csv, eval/ and report/. `fit` ends by testing on the held-out split and writing
the report, so every run leaves OUT/report/{report.md, metrics.json, *.png}.
An experiment with `stages:` is a pipeline: each stage is fitted in OUT/stages/<i>-<name>/ from
the previous stage's weights; finished stages are skipped and an interrupted one resumes, so
re-running the same command continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from omegaconf import OmegaConf

from experiments import config as config_lib
from experiments import papers, report
from experiments.callbacks import FiniteLossGuard, SaveOnSignal, WeightChecksum

log = logging.getLogger("longwatch")

COMMANDS = ("fit", "validate", "test", "predict", "report")


def main(argv: Optional[list[str]] = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out) if args.out else Path("runs") / (args.exp or "")
    try:
        if args.command == "report":
            if not args.out and not args.exp:
                raise config_lib.ConfigError("report: pass --out DIR (or --exp to use runs/<exp>)")
            path = report.build_report(out)
            print(f"report written to {path}")
            return 0
        if not args.exp:
            raise config_lib.ConfigError(f"{args.command}: --exp <paper>/<name> is required")
        cfg = config_lib.load(args.exp, args.overrides)
    except config_lib.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2

    if args.command == "fit":
        if cfg.stages:
            if args.ckpt:
                log.info("--ckpt ignored: a pipeline resumes by itself from %s", out / "stages")
            fit_pipeline(cfg, out, args.overrides, run_test=not args.no_test)
        else:
            fit(cfg, out, ckpt=args.ckpt, run_test=not args.no_test)
        return 0
    if cfg.stages:  # a pipeline is evaluated as its last stage, with the pipeline's shared keys
        cfg = _last_stage(cfg, args.overrides)
    ckpt = args.ckpt or _default_ckpt(out)
    if args.command == "test":
        evaluate(cfg, out, ckpt)
    elif args.command == "validate":
        module, datamodule, trainer = _build(cfg, out, log_as="validate")
        results = trainer.validate(module, datamodule, ckpt_path=ckpt)
        _write_json(out / "eval" / "validate.json", results[0] if results else {})
    elif args.command == "predict":
        predict(cfg, out, ckpt)
    return 0


def fit(cfg: Any, out: Path, ckpt: Optional[str] = None, run_test: bool = True) -> Path:
    """Fit one experiment in `out`; returns the path of its last checkpoint."""
    module, datamodule, trainer = _build(cfg, out, log_as="fit")
    if cfg.init_from and not ckpt:  # starting weights only; a resumed run brings its own
        state = torch.load(cfg.init_from, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state, strict=True)
        log.info("initialised from %s", cfg.init_from)
    trainer.fit(module, datamodule, ckpt_path=ckpt)
    # The checkpoint callback saves every n steps and at epoch ends, not at a max_steps stop mid-epoch:
    # save the final weights, which the next stage, `test` and `fit --ckpt` all read.
    last = out / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(last)
    if run_test:
        _test_and_report(cfg, out, module, datamodule, trainer)
    return last


def fit_pipeline(cfg: Any, out: Path, overrides: list[str], run_test: bool = True) -> None:
    """Fit `cfg.stages` in order, each from the previous stage's weights; test and report the last."""
    shared = _pipeline_keys(cfg)
    previous: Optional[Path] = Path(cfg.init_from) if cfg.init_from else None
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(config_lib.to_yaml(cfg))
    for i, stage in enumerate(cfg.stages, start=1):
        stage_out = out / "stages" / f"{i}-{stage.split('/', 1)[1]}"
        done = stage_out / "DONE"
        last = stage_out / "checkpoints" / "last.ckpt"
        if done.exists():
            log.info("stage %d (%s) already done, skipping", i, stage)
        else:
            stage_cfg = config_lib.load(stage, overrides, extra={**shared, "init_from": str(previous) if previous else None})
            resume = str(last) if last.exists() else None
            if resume:
                log.info("stage %d (%s) resumes from %s", i, stage, resume)
            log.info("stage %d/%d: %s -> %s", i, len(cfg.stages), stage, stage_out)
            fit(stage_cfg, stage_out, ckpt=resume, run_test=False)
            done.write_text("done\n")
        previous = last
    final_cfg = _last_stage(cfg, overrides)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(previous, out / "checkpoints" / "last.ckpt")
    if run_test:
        evaluate(final_cfg, out, str(out / "checkpoints" / "last.ckpt"))


def _pipeline_keys(cfg: Any) -> dict:
    """The pipeline's own YAML keys (minus `stages`): they apply to every stage, under the command line."""
    shared = OmegaConf.to_container(OmegaConf.load(config_lib.experiment_path(cfg.exp)))
    shared.pop("stages", None)
    return shared


def _last_stage(cfg: Any, overrides: list[str]) -> Any:
    return config_lib.load(cfg.stages[-1], overrides, extra=_pipeline_keys(cfg))


def evaluate(cfg: Any, out: Path, ckpt: str) -> None:
    module, datamodule, trainer = _build(cfg, out, log_as="test", write_config=not (out / "config.yaml").exists())
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state, strict=True)
    _test_and_report(cfg, out, module, datamodule, trainer)


def predict(cfg: Any, out: Path, ckpt: str) -> None:
    module, datamodule, trainer = _build(cfg, out, log_as="predict", write_config=False)
    batches = trainer.predict(module, datamodule, ckpt_path=ckpt) or []
    path = out / "predictions.jsonl"
    with path.open("w") as f:
        for batch in batches:
            for row in batch if isinstance(batch, list) else [batch]:
                f.write(json.dumps(row, default=_jsonable) + "\n")
    print(f"predictions written to {path}")


def _test_and_report(cfg, out: Path, module, datamodule, trainer) -> None:
    trainer.test(module, datamodule)
    if not trainer.is_global_zero:  # metrics are already synced across ranks; one writer
        return
    metrics = {k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    fig_dir = out / "report"
    fig_dir.mkdir(parents=True, exist_ok=True)
    section = ""
    if hasattr(module, "report"):
        extra, section = module.report(fig_dir)
        metrics.update({k: float(v) for k, v in extra.items()})
    _write_json(out / "eval" / "metrics.json", metrics)
    (out / "eval" / "section.md").write_text(section)
    path = report.build_report(out)
    print(f"report written to {path}")


def _build(cfg: Any, out: Path, log_as: str, write_config: bool = True):
    out.mkdir(parents=True, exist_ok=True)
    if write_config:
        (out / "config.yaml").write_text(config_lib.to_yaml(cfg))
    L.seed_everything(cfg.seed, workers=True)
    if cfg.trainer.accelerator == "cpu":
        # gradients that reach far back through an SSM's decay become subnormal floats, which run
        # several times slower on CPUs; flushing them to zero changes no result we measure
        torch.set_flush_denormal(True)
    module, datamodule = papers.get(cfg.paper).build(cfg)
    return module, datamodule, _trainer(cfg, out, log_as)


def _trainer(cfg: Any, out: Path, log_as: str) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    checkpoint = ModelCheckpoint(
        dirpath=out / "checkpoints",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=cfg.trainer.checkpoint_every_n_steps,
        enable_version_counter=False,  # a resumed run overwrites last.ckpt, never adds last-v1.ckpt
    )
    return L.Trainer(
        **cfg.trainer.lightning_kwargs(),
        default_root_dir=out,
        logger=CSVLogger(out, name="logs", version=_log_version(out / "logs", log_as)),
        callbacks=[FiniteLossGuard(), SaveOnSignal(out / "checkpoints" / "last.ckpt"), WeightChecksum(out / "checksums"), checkpoint],
        # SaveOnSignal owns preemption (save at a step boundary, then requeue), not Lightning's handler
        plugins=[SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None,
    )


def _log_version(logs: Path, command: str) -> str:
    """logs/fit, then logs/fit-2, ... for each resumed fit (CSVLogger would overwrite); one dir per other command."""
    if command != "fit":
        return command
    n = 1
    while (logs / (command if n == 1 else f"{command}-{n}") / "metrics.csv").exists():
        n += 1
    return command if n == 1 else f"{command}-{n}"


def _default_ckpt(out: Path) -> str:
    last = out / "checkpoints" / "last.ckpt"
    if not last.exists():
        raise SystemExit(f"no checkpoint at {last}: pass --ckpt PATH or run `fit` with --out {out} first")
    return str(last)


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("--exp", help="<paper>/<name>, a YAML under experiments/configs/")
    parser.add_argument("--out", help="run directory (default runs/<exp>)")
    parser.add_argument("--ckpt", help="checkpoint to resume (fit) or evaluate (validate/test/predict)")
    parser.add_argument("--no-test", action="store_true",
                        help="fit only: skip the test split and the report (runs whose settings are still being "
                             "tuned on val must not read test)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. trainer.max_steps=10")
    return parser.parse_intermixed_args(argv)


if __name__ == "__main__":
    sys.exit(main())
