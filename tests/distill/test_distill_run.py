"""Whole runs on the tiny teacher: progressive stages into a student folder the engine uses, a report,
per-term losses in the log, and an exact ``--resume`` after a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssdxl.distill import DistillConfig, Layout, Stage, distill, resolve_layout
from ssdxl.errors import UserError
from ssdxl.training.progress import Progress

SETTINGS = {"batch_size": 2, "lr": 1e-4, "warmup_steps": 1, "ema_decay": 0.9, "checkpoint_every": 2, "log_every": 1,
            "measure_batches": 1, "speed_repeats": 1}  # fmt: skip


def config(teacher: Path, out: Path, **changes) -> DistillConfig:
    settings = {"stages": [Stage("ssd-1b", 3), Stage("vega", 4)], **SETTINGS, **changes}
    return DistillConfig(teacher=str(teacher), out=str(out), **settings)


@pytest.fixture(scope="module")
def progressive(teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return distill(config(teacher_dir, tmp_path_factory.mktemp("distill") / "student"))


def test_progressive_stages_write_a_student_the_engine_uses(progressive: Path, teacher_dir: Path) -> None:
    from ssdxl.sampling.engine import Engine
    from ssdxl.sampling.request import GenerationRequest

    root = Layout.of(json.loads((teacher_dir / "unet" / "config.json").read_text()))
    stage_1 = progressive / "distill" / "stages" / "1-ssd-1b"
    assert Layout.of(json.loads((stage_1 / "unet" / "config.json").read_text())) == resolve_layout("ssd-1b", root)[1]
    assert Layout.of(json.loads((progressive / "unet" / "config.json").read_text())) == resolve_layout("vega", root)[1]
    info = json.loads((progressive / "ssdxl.json").read_text())
    assert info["name"] == "tiny-teacher-vega"
    assert info["defaults"] == json.loads((teacher_dir / "ssdxl.json").read_text())["defaults"]  # teacher's kept

    engine = Engine.load(progressive, device="cpu", dtype="float32")
    image = engine.generate(GenerationRequest("a red circle on a black background", steps=2, seed=0)).images[0].image
    assert image.size == (32, 32)

    report = json.loads((progressive / "distill-report.json").read_text())
    assert [s["layout"] for s in report["stages"]] == ["ssd-1b", "vega"]
    assert report["stages"][1]["student_params"] < report["stages"][0]["student_params"] < report["teacher_params"]
    assert len(report["seconds_per_unet_step"]) == 3  # teacher and both students, timed together
    assert "| 2 | vega |" in (progressive / "distill-report.md").read_text()

    logged = [json.loads(line) for line in (progressive / "distill" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss" in r]
    assert len(steps) == 7 and all(r["out"] > 0 and r["feat"] > 0 and r["task"] > 0 for r in steps)


def _crash_at(monkeypatch: pytest.MonkeyPatch, stage: str, at: int) -> None:
    """Die (like a kill) just before ``stage`` records step ``at``, after its optimiser step."""
    original = Progress.step

    def step(self: Progress, step: int, loss: float, **metrics: float) -> None:
        if self.stage.startswith(stage) and step == at:
            raise KeyboardInterrupt
        original(self, step, loss, **metrics)

    monkeypatch.setattr(Progress, "step", step)


def test_resume_continues_exactly(progressive: Path, teacher_dir: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "student"
    with monkeypatch.context() as m:
        _crash_at(m, "stage-2", 3)  # stage 1 done, stage 2 checkpointed at step 2
        with pytest.raises(KeyboardInterrupt):
            distill(config(teacher_dir, out))
    with pytest.raises(UserError, match="already holds a distillation run"):
        distill(config(teacher_dir, out))
    distill(DistillConfig.load(out), resume=True)
    for stage in ("stage-1", "stage-2"):
        resumed = torch.load(out / "distill" / "checkpoints" / f"{stage}.pt", weights_only=False)
        straight = torch.load(progressive / "distill" / "checkpoints" / f"{stage}.pt", weights_only=False)
        assert resumed["step"] == straight["step"]
        for a, b in ((resumed["unet"], straight["unet"]), (resumed["ema"]["unet"], straight["ema"]["unet"])):
            assert all(torch.equal(a[k], b[k]) for k in a), stage


def test_task_loss_only_never_runs_the_teacher(teacher_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from ssdxl.distill import loop

    def no_teacher(*_args, **_kwargs):
        raise AssertionError("the teacher ran")

    monkeypatch.setattr(loop, "_teacher_pass", no_teacher)
    out = distill(config(teacher_dir, tmp_path / "task-only", stages=[Stage("vega", 2)], kd="none", speed_repeats=0))
    logged = [json.loads(line) for line in (out / "distill" / "log.jsonl").read_text().splitlines()]
    assert [r["out"] + r["feat"] for r in logged if "loss" in r] == [0.0, 0.0]
    assert json.loads((out / "distill-report.json").read_text())["seconds_per_unet_step"] == {}
