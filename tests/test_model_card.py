"""The model card is written from the run's records and an evaluation report, and judges the issue's targets."""

import json

from emu35_robot.training.card import model_card, targets_table


def row(task, engine, planner, successes, episodes, placement=None, resting=None):
    r = {"task": task, "engine": engine, "planner": planner, "episodes": episodes, "successes": successes,
         "success_rate": successes / episodes}  # fmt: skip
    if placement is not None:
        r["placement_agreement"] = {"mean": placement, "ci": [placement, placement], "n": episodes}
    if resting is not None:
        r["placement_agreement_resting"] = {"mean": resting, "ci": [resting, resting], "n": episodes}
    return r


def test_targets_need_80_percent_of_the_oracle_on_every_row_and_90_percent_placement():
    good = {"rows": [row("Stack", "mujoco", "oracle", 10, 10), row("Stack", "mujoco", "mini", 8, 10, 0.95)]}
    table, ok = targets_table(good, "mini")
    assert ok and "| Stack | mujoco | 8/10 | 10/10 | 0.80 ok | 0.95 | - |" in table
    low = {
        "rows": good["rows"]
        + [row("Tower", "pybullet", "oracle", 10, 10), row("Tower", "pybullet", "mini", 7, 10, 0.95)]
    }
    assert not targets_table(low, "mini")[1]
    blurry = {"rows": [row("Stack", "mujoco", "oracle", 10, 10), row("Stack", "mujoco", "mini", 10, 10, 0.85)]}
    assert not targets_table(blurry, "mini")[1]
    shown = {"rows": [row("Stack", "mujoco", "oracle", 10, 10), row("Stack", "mujoco", "mini", 9, 10, 0.8, 0.97)]}
    table, ok = targets_table(shown, "mini")  # the resting figure is shown; the target reads the measure
    assert not ok and "| Stack | mujoco | 9/10 | 10/10 | 0.90 ok | 0.80 | 0.97 |" in table
    missing = {"rows": [row("Stack", "mujoco", "mini", 10, 10, 0.95)]}
    table, ok = targets_table(missing, "mini")
    assert not ok and "missing" in table


def test_card_reads_the_run_and_the_bundle(tmp_path, bundle):
    run = tmp_path / "run"
    (run / "vq").mkdir(parents=True)
    (run / "lm").mkdir()
    vq = {"psnr": 28.5, "codes_used_held_out": 1000, "train_s": 120.0, "device": "NVIDIA H200",
          "init": "the shipped tokenizer", "decoder_only": True}  # fmt: skip
    (run / "vq" / "vq_result.json").write_text(json.dumps(vq))
    episodes = {"vla_train": 90, "vla_held_out": 10, "explore_train": 18, "explore_held_out": 2}
    lm = {"steps": 40, "train_loss": 0.1, "held_out_loss": 0.2, "train_s": 600.0, "device": "NVIDIA H200",
          "episodes": episodes, "train_sequences": 400, "held_out_sequences": 12,
          "init": "an earlier bundle", "input_noise": 0.15, "change_weight": 2.0, "caveats": "the init saw them.",
          "grounding": {"episodes": 5, "loss_true_target": 0.5, "loss_other_target": 1.5, "ratio": 3.0},
          "probe": {"greedy": {"episodes": 8, "texts_exact": 0.5, "tol_px": 3.0, "placement_agreement": 0.4,
                               "all_blocks_agree": 0.25, "texts_reach_goal": 0.75,
                               "moved_block_agreement": 0.6}}}  # fmt: skip
    (run / "lm" / "lm_result.json").write_text(json.dumps(lm))
    (run / "lm" / "loss.jsonl").write_text(json.dumps({"step": 40, "loss": 0.1, "tokens_per_s": 1234.0}) + "\n")
    rows = [row("Stack", "mujoco", "oracle", 4, 4), row("Stack", "mujoco", "mini", 4, 4, 1.0)]
    report = {"rows": rows, "overall": [dict(r, planner=r["planner"]) for r in rows]}
    text = model_card(run, bundle.root, report, "mini", "Evaluated with the new executor.")
    cfg = json.loads((bundle.model / "config.json").read_text())
    assert f"{cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}" in text
    assert (
        "held-out PSNR 28.50 dB" in text
        and "0.100 (train, 15% of image inputs corrupted, changed image tokens weighted 3x), 0.200 (held-out" in text
        and "1,234 tokens/s" in text
    )
    assert "| Stack | mujoco | 4/4 | 4/4 | 1.00 ok | 1.00 |" in text and "): met." in text
    assert "tokenizer 2.0 min on NVIDIA H200, decoder 10.0 min on NVIDIA H200" in text
    assert "100 expert episodes (10 held out) and 20 camera walks (2 held out)" in text
    assert (
        "400 for training" in text and "12 held out" in text and "decoder was fine-tuned from an earlier bundle" in text
    )
    assert "tokenizer was fine-tuned from the shipped tokenizer (its pixel decoder alone: every image keeps" in text
    assert "Overall: 4/4 episodes (100%) against the oracle's 4/4" in text
    assert "Caveats: the init saw them." in text
    assert "): met.\n\nEvaluated with the new executor.\n" in text
    assert "0.500 nats under the recorded text and 1.500 with another target named (ratio 3.00" in text
    assert "subgoal texts exact 50%" in text and "on a symbolic world 75%" in text and "subgoal puts it 60%" in text
