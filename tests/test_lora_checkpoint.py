"""Resumable LoRA checkpoints hold no pickle: a crafted file in the shared cache runs nothing."""

from __future__ import annotations

import json
import logging
import math

import torch
from diffusers.optimization import get_scheduler
from safetensors import safe_open

from stages.models import lora
from stages.models.lora import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from tests.conftest import TINY


class Payload:
    """What an attacker who can write to the cache leaves there: unpickling it runs code (it
    creates `canary`) and hands back a state that claims to belong to the run."""

    def __init__(self, canary, fingerprint: str) -> None:
        self.canary, self.fingerprint = str(canary), fingerprint

    def __reduce__(self):
        claim = {"fingerprint": self.fingerprint}
        code = f"(open({self.canary!r}, 'w').write('pwned'), {claim!r})[1]"
        return eval, (code,)


def trained(steps: int) -> tuple[torch.nn.Linear, torch.optim.Optimizer, object]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=2, num_training_steps=10)
    for step in range(steps):
        advance(model, optimizer, scheduler, step)
    return model, optimizer, scheduler


def advance(model, optimizer, scheduler, step: int) -> None:
    generator = torch.Generator().manual_seed(step)
    loss = model(torch.randn(8, 4, generator=generator)).pow(2).mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def state_of(model, optimizer, scheduler) -> dict:
    return {
        "fingerprint": "run-1",
        "step": 3,
        "history": [{"step": 0, "loss": 0.25, "lr": 1e-3}, {"step": 1, "loss": math.nan, "lr": 0}],
        "unet": {k: v.clone() for k, v in model.state_dict().items()},
        "text_encoder": None,
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
    }


def same(a, b) -> bool:
    """Equal values of equal types all the way down; tensors bit for bit, NaN equal to NaN."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def test_a_checkpoint_round_trips_and_training_resumes_bit_for_bit(tmp_path):
    model, optimizer, scheduler = trained(3)
    state = state_of(model, optimizer, scheduler)
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, state)

    loaded = load_checkpoint(path, "run-1")
    assert same(loaded, state)  # int keys of the optimiser state, its betas tuple, None, NaN
    assert isinstance(loaded["optimizer"]["param_groups"][0]["betas"], tuple)
    with safe_open(path, framework="pt", device="cpu") as stored:
        header = stored.metadata()
    assert header["format"] == CHECKPOINT_FORMAT and header["fingerprint"] == "run-1"

    # resuming from the file continues exactly as the run that never stopped
    resumed = trained(0)
    resumed[0].load_state_dict(loaded["unet"])
    resumed[1].load_state_dict(loaded["optimizer"])
    resumed[2].load_state_dict(loaded["lr_scheduler"])
    for step in range(3, 6):
        advance(model, optimizer, scheduler, step)
        advance(*resumed, step)
    pairs = zip(model.parameters(), resumed[0].parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert resumed[2].get_last_lr() == scheduler.get_last_lr()


def test_a_checkpoint_of_another_run_is_not_loaded_beyond_its_header(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, state_of(*trained(1)))
    loaded_tensors: list[str] = []
    real_open = lora.safe_open

    class Recording:
        def __init__(self, *args, **kwargs) -> None:
            self.file = real_open(*args, **kwargs)

        def __enter__(self):
            self.inner = self.file.__enter__()
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

        def metadata(self):
            return self.inner.metadata()

        def keys(self):
            return self.inner.keys()

        def get_tensor(self, name):
            loaded_tensors.append(name)
            return self.inner.get_tensor(name)

    monkeypatch.setattr(lora, "safe_open", Recording)
    assert load_checkpoint(path, "run-2") is None
    assert loaded_tensors == []  # the fingerprint in the header was enough to refuse it
    assert load_checkpoint(path, "run-1") is not None and loaded_tensors


def test_a_pickled_checkpoint_is_never_unpickled(tmp_path, caplog):
    canary = tmp_path / "canary"
    path = tmp_path / "checkpoint.pt"  # the name does not matter: the content is never trusted
    torch.save(Payload(canary, "run-1"), path)  # a torch checkpoint, as the cache held before
    with caplog.at_level(logging.WARNING, logger="stages.models.lora"):
        assert load_checkpoint(path, "run-1") is None
    assert not canary.exists()
    assert f"ignoring an unreadable checkpoint {path}" in caplog.text
    assert "starting over" in caplog.text


def test_train_lora_starts_over_when_its_checkpoint_is_a_pickle(pipeline_run, tmp_path):
    work = pipeline_run
    work.write_params(**TINY)
    work.run("train_lora")
    params = json.loads((work.path / "outputs/lora/params.json").read_text())
    expected = (work.path / "outputs/lora/pytorch_lora_weights.safetensors").read_bytes()
    folder = work.cache / "checkpoints" / params["fingerprint"]
    folder.mkdir(parents=True, exist_ok=True)
    canary = tmp_path / "canary"
    for name in ("checkpoint.safetensors", "checkpoint.pt"):  # where it is read, and was read
        torch.save(Payload(canary, params["fingerprint"]), folder / name)

    result = work.run("train_lora")
    assert not canary.exists()
    assert "ignoring an unreadable checkpoint" in result.stderr
    assert "resuming" not in result.stderr
    weights = (work.path / "outputs/lora/pytorch_lora_weights.safetensors").read_bytes()
    assert weights == expected  # trained from step 0, as if no checkpoint were there
