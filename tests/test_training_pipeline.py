"""The Emu3.5-mini recipe end to end on a tiny shape: collect -> vq -> lm (stopped, resumed) -> package -> load,
then fine-tuning a packaged model. The real run is the same code at the sizes in pipeline.py."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("sim_envs")

from emu35_robot.training import pipeline  # noqa: E402
from emu35_robot.training.collect import collect  # noqa: E402
from model.engine import load_engine  # noqa: E402

SIZE = 64


@pytest.fixture
def tiny_recipe(monkeypatch):
    monkeypatch.setattr(pipeline, "N_CODES", 64)
    monkeypatch.setattr(
        pipeline,
        "VQ_SHAPE",
        dict(n_embed=64, embed_dim=8, ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1, z_channels=8,
             attn_resolutions=(), resolution=SIZE),
    )  # fmt: skip
    monkeypatch.setattr(
        pipeline,
        "LM_SHAPE",
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
             head_dim=16, max_position_embeddings=4096, image_area=SIZE**2),
    )  # fmt: skip


def test_recipe_trains_resumes_packages_and_fine_tunes(tiny_recipe, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    assert collect(data, ["sim_envs/PlaceInZone-mujoco-v0"], range(3), size=SIZE, progress=False) == 3
    vq = pipeline.stage_vq(data, run, steps=2, batch=2, device="cpu")
    assert vq["steps"] == 2 and vq["psnr"] > 0 and 0 <= vq["blob_agreement"] <= 1
    assert vq["train_s"] > 0 and vq["device"].startswith("CPU")

    assert pipeline.stage_lm(data, run, steps=4, batch=2, device="cpu", until=2, augment=1) == []  # logs at step 4
    first = json.loads((run / "lm" / "checkpoint" / "trainer.json").read_text())
    assert first["step"] == 2 and first["elapsed_s"] > 0
    stopped = pipeline.package(run, tmp_path / "stopped")  # a time box ran out: package step 2, measure it
    result = pipeline.result_of_stopped_run(data, run, stopped, step=2, probe_n=1)
    assert result["steps"] == 2 and result["train_s"] == first["elapsed_s"] and result["held_out_loss"] > 0
    assert result["probe"]["sampled"]["episodes"] == 1
    hist = pipeline.stage_lm(data, run, steps=4, batch=2, device="cpu", augment=1)  # resumes: same sequences file
    assert [h["step"] for h in hist] == [4]
    result = json.loads((run / "lm" / "lm_result.json").read_text())
    assert result["steps"] == 4 and result["probe"]["greedy"]["episodes"] == 1  # 5 % of 3 episodes, at least one
    assert result["grounding"]["episodes"] <= 1 and "ratio" in result["grounding"]
    assert (
        result["train_s"] > first["elapsed_s"] and result["input_noise"] == pipeline.INPUT_NOISE
    )  # the resumed slice adds to the first one's time
    assert result["train_sequences"] > 0 and result["held_out_sequences"] > 0
    assert result["episodes"] == {"vla_train": 2, "vla_held_out": 1, "explore_train": 0, "explore_held_out": 0}

    bundle = pipeline.package(run, tmp_path / "bundle")
    sharper = pipeline.stage_vq(
        data, tmp_path / "vqdec", steps=2, batch=2, device="cpu", init=bundle / "vision_tokenizer", decoder_only=True,
        colour_weight=5.0, lr=1e-4,
    )  # fmt: skip
    assert sharper["codes_unchanged"] and sharper["decoder_only"] and sharper["psnr_init"] > 0
    assert 0 <= sharper["blob_agreement_init"] <= 1
    state = json.loads((tmp_path / "vqdec" / "vq" / "checkpoint" / "state.json").read_text())
    assert state["config"]["colour_weight"] == 5.0 and state["config"]["lr"] == 1e-4
    with pytest.raises(ValueError, match="pass init"):
        pipeline.stage_vq(data, tmp_path / "nope", steps=2, batch=2, device="cpu", decoder_only=True)
    engine = load_engine(bundle / "model", bundle / "tokenizer", bundle / "vision_tokenizer", "cpu")
    assert engine.lm.config.num_visual_tokens == 64

    shutil.copytree(run / "vq", tmp_path / "tuned" / "vq")  # a new run on the same tokenizer, the decoder fine-tuned
    tuned = pipeline.stage_lm(
        data, tmp_path / "tuned", steps=1, batch=2, device="cpu", augment=0, init=bundle / "model", lr=2e-4,
        change_weight=3.0, contrast_weight=0.5, probe_n=0,
    )  # fmt: skip
    assert [h["step"] for h in tuned] == [1]  # (its one batch of 2 may hold no negative: contrast_d is optional)
    ck = json.loads((tmp_path / "tuned" / "lm" / "checkpoint" / "trainer.json").read_text())
    assert ck["config"]["contrast_weight"] == 0.5
    tuned_result = json.loads((tmp_path / "tuned" / "lm" / "lm_result.json").read_text())
    assert tuned_result["peak_lr"] == 2e-4 and tuned_result["change_weight"] == 3.0
    assert tuned_result["contrast_weight"] == 0.5
    assert "probe" not in tuned_result and tuned_result["held_out_loss"] > 0  # probe_n=0: no free-running plans
    saved = pipeline.load_sequences(tmp_path / "tuned" / "sequences.npz")
    assert len(saved["train_negatives"]) == len(saved["train"]) and any(n is not None for n in saved["train_negatives"])
    with pytest.raises(ValueError, match="without negatives"):  # the first run's sequences have none
        pipeline.stage_lm(data, run, steps=5, batch=2, device="cpu", augment=1, contrast_weight=0.5)
