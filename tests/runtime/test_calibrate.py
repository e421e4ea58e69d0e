"""Calibration: the pure decision, both measures on the tiny trained model (the gap measure against an independent
dense-masked forward), and `localattn calibrate` -> a plan the plugin accepts."""

from __future__ import annotations

import argparse
import json
import runpy
from pathlib import Path

import pytest
import torch

from localattn_cli import calibrate as calibrate_cmd
from localattn_runtime import config
from localattn_runtime.calibrate import (
    LayerGain,
    LayerMass,
    choose_global_layers,
    copy_sample,
    format_table,
    gap_closed,
    make_plan,
    outside_fraction,
)

reference = runpy.run_path(str(Path(__file__).with_name("_masked_reference.py")))


def test_outside_fraction_counts_only_mass_outside_sinks_and_window() -> None:
    n, window, sinks = 8, 3, 1
    attn = torch.zeros(1, 2, n, n)
    for i in range(n):
        attn[0, 0, i, 0] = 1.0  # head 0: everything on the sink -> nothing outside
        attn[0, 1, i, max(0, i - 3)] = 1.0  # head 1: 3 back, just outside a window of 3 once i >= 4
    frac = outside_fraction(attn, window, sinks)
    # queries 4..7 have something outside (i >= sinks + window); head 1 puts all its mass at i-3 (outside)
    assert frac.tolist() == [0.0, 1.0]


def test_outside_fraction_rejects_short_samples() -> None:
    with pytest.raises(ValueError, match="too short"):
        outside_fraction(torch.ones(1, 1, 4, 4) / 4, window=4, sinks=1)


def test_choose_global_layers_takes_the_top_k_sorted() -> None:
    masses = [LayerMass(0, 0.30), LayerMass(1, 0.05), LayerMass(2, 0.30), LayerMass(3, 0.50)]
    assert choose_global_layers(masses, 2) == [0, 3]  # tie at 0.30: lower index wins
    assert choose_global_layers(masses, 0) == []
    with pytest.raises(ValueError, match="exceeds"):
        choose_global_layers(masses, 5)


def test_gap_closed_is_the_mean_share_of_the_gaps_that_exist() -> None:
    assert gap_closed(0.01, 0.04, 0.5, 1.0) == pytest.approx((0.25 + 0.5) / 2)
    assert gap_closed(0.01, 0.04, 0.3, 0.0) == pytest.approx(0.25)  # no copy gap: copies do not rank layers
    assert gap_closed(0.01, -0.01, 0.3, 0.0) == 0.0
    gains = [LayerGain(0, -0.002, -0.02, 0.03, 1.5), LayerGain(1, 0.007, 0.05, 0.03, 1.5),
             LayerGain(2, 0.002, 0.45, 0.03, 1.5)]
    # a layer whose globality hurts (negative gain) is never preferred; text and copy shares add up
    assert choose_global_layers(gains, 1) == [2] and choose_global_layers(gains, 2) == [1, 2]
    plan = make_plan("m", 512, 4, 1, gains)
    assert plan["method"] == "gap" and plan["globalLayers"] == [2] and plan["gap"] == {"text": 0.03, "copy": 1.5}
    assert plan["layers"][1] == {"index": 1, "gapClosed": round(gains[1].score, 6), "textGain": 0.007,
                                 "copyGain": 0.05}
    table = format_table(plan)
    assert "text 0.0300, copy 1.5000" in table and "gap closed" in table and f"{2:>5}  {round(gains[2].score, 6):>10.4f}" in table
    assert table.splitlines()[-1].endswith("global") and table.splitlines()[-2].endswith("local")


def test_copy_sample_repeats_an_early_stretch_from_beyond_the_window() -> None:
    seq = list(range(1000, 3048))  # 2048 distinct tokens
    repeated, at = copy_sample(seq, window=512, sinks=4)
    assert len(repeated) == len(seq) and repeated[:at] == seq[:at]
    tail = repeated[at:]
    assert len(tail) == 128 and tail == seq[12:140]  # past the sinks
    assert at - 12 > 512  # the source lies beyond the window of every repeated token
    with pytest.raises(ValueError, match="too short"):
        copy_sample(list(range(580)), window=512, sinks=4)


def test_plan_shape() -> None:
    plan = make_plan("m", 64, 4, 1, [LayerMass(0, 0.1), LayerMass(1, 0.2)])
    assert plan == {"model": "m", "windowSize": 64, "sinkTokens": 4, "budget": 1, "globalLayers": [1],
                    "layers": [{"index": 0, "outsideMass": 0.1}, {"index": 1, "outsideMass": 0.2}]}


@pytest.mark.slow
def test_cli_calibrates_the_tiny_model_into_a_plan_the_plugin_accepts(
        tiny_trained_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.json"
    parser = argparse.ArgumentParser()
    calibrate_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["calibrate", "--model", str(tiny_trained_model), "--window", "64",
                                      "--sinks", "4", "--budget", "2", "--samples", "2", "--method", "mass",
                                      "--out", str(out)])
    assert args.func(args) == 0
    table = capsys.readouterr().out
    plan = json.loads(out.read_text())
    assert len(plan["layers"]) == 4 and len(plan["globalLayers"]) == 2
    masses = [row["outsideMass"] for row in plan["layers"]]
    assert all(0.0 <= m <= 1.0 for m in masses) and max(masses) > 0.01  # a trained model does look back
    assert sorted(plan["globalLayers"]) == sorted(range(4), key=lambda i: -masses[i])[:2] and plan[
        "globalLayers"] == sorted(plan["globalLayers"])
    for i in range(4):
        assert f"{i:>5}  {masses[i]:>12.4f}  {'global' if i in plan['globalLayers'] else 'local'}" in table
    # what the operator mounts: the plugin's parser reads the plan and its layers win over the configured ones
    cfg = config.parse({"windowSize": 64, "sinkTokens": 4, "globalLayers": {"indices": [1]},
                        "planFile": str(out)})
    assert cfg.global_layer_set(4) == frozenset(plan["globalLayers"])


def test_to_configmap_writes_a_manifest_the_lad_can_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--to-configmap`: a ConfigMap manifest (YAML on stdout, table on stderr) whose plan the plugin accepts at
    the path the operator mounts it, for a LAD whose calibrationPlan names it."""
    import yaml

    from localattn_operator.render import Owner, render_children, runtime_config
    from localattn_operator.validation import validate_spec

    plan = make_plan("m", 64, 4, 1, [LayerMass(0, 0.1), LayerMass(1, 0.3), LayerMass(2, 0.2)])
    parser = argparse.ArgumentParser()
    calibrate_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["calibrate", "--model", "m", "--window", "64", "--sinks", "4", "--budget", "1",
                              "--to-configmap", "llama-plan", "--namespace", "serving"])
    calibrate_cmd.emit(plan, args)
    out, err = capsys.readouterr()
    assert "outside mass" in err and "outside mass" not in out
    cm = yaml.safe_load(out)
    assert (cm["kind"], cm["metadata"]["name"], cm["metadata"]["namespace"]) == ("ConfigMap", "llama-plan", "serving")
    assert json.loads(cm["data"][calibrate_cmd.PLAN_KEY]) == plan

    spec = validate_spec({"model": {"uri": "pvc://models/llama/v1"},
                          "localAttention": {"windowSize": 64, "calibrationPlan": {"configMapName": "llama-plan"}}})
    pod = {c["kind"]: c for c in render_children(Owner("llama", "serving", "u"), spec)}["Deployment"]
    (volume,) = [v for v in pod["spec"]["template"]["spec"]["volumes"] if v["name"] == "calibration-plan"]
    assert volume["configMap"] == {"name": "llama-plan", "items": [{"key": "plan.json", "path": "plan.json"}]}
    mounted = tmp_path / "plan.json"  # what the kubelet writes from the ConfigMap
    mounted.write_text(cm["data"]["plan.json"])
    rendered = runtime_config(spec)
    assert rendered["planFile"].endswith("/plan.json")
    cfg = config.parse({**rendered, "planFile": str(mounted)})
    assert cfg.global_layer_set(3) == frozenset({1})

    args = parser.parse_args(["calibrate", "--model", "m", "--window", "64", "--sinks", "4", "--budget", "1",
                              "--to-configmap", "p", "--key", "k.json", "--out", str(tmp_path / "cm.yaml")])
    calibrate_cmd.emit(plan, args)
    assert "k.json" in yaml.safe_load((tmp_path / "cm.yaml").read_text())["data"]


def _oracle_nll(model: object, seqs: list[list[int]], window: int, sinks: int, global_layers: set[int],
                first: list[int]) -> float:
    """Mean over `seqs` of the mean NLL of tokens first[k].. under the mask, from the dense-masked reference."""
    total = 0.0
    for seq, lo in zip(seqs, first, strict=True):
        lps = reference["logprobs"](model, seq, window, sinks, global_layers)  # lps[p - 1] is token p's
        total += -sum(lps[lo - 1:]) / (len(seq) - lo)
    return total / len(seqs)


@pytest.mark.slow
def test_gap_measure_matches_an_independent_forward_and_picks_the_layer_that_helps_most(
        tiny_trained_model: Path) -> None:
    """Every layer's text and copy gain equals what the dense-masked reference forward of the same weights gives
    (the measure reuses layer inputs and runs SDPA; the reference does neither), and a budget of one picks the layer
    whose globality lowers the loss most, which on this model is not the one the mass measure ranks first."""
    from localattn_runtime import calibrate, tinymodel

    window, sinks = 16, 4
    tok = tinymodel.load_tokenizer(tiny_trained_model)
    seqs = calibrate.sample_sequences(tok, 2, 256)
    gains = calibrate.measure_gap_closed(tiny_trained_model, seqs, window, sinks)
    copies = [copy_sample(s, window, sinks) for s in seqs]
    layers = len(gains)
    model = reference["load"](tiny_trained_model)
    for kind, samples, first in (("text", seqs, [sinks + window + 1] * 2),
                                 ("copy", [c for c, _ in copies], [at + 1 for _, at in copies])):
        local = _oracle_nll(model, samples, window, sinks, set(), first)
        full = _oracle_nll(model, samples, window, sinks, set(range(layers)), first)
        gap = gains[0].text_gap if kind == "text" else gains[0].copy_gap
        assert gap == pytest.approx(local - full, abs=2e-4) and gap > 0.01  # local attention does cost here
        for g in gains:
            oracle = local - _oracle_nll(model, samples, window, sinks, {g.index}, first)
            assert (g.text_gain if kind == "text" else g.copy_gain) == pytest.approx(oracle, abs=2e-4)
    best = max(gains, key=lambda g: (g.score, -g.index))
    plan = calibrate.make_plan("tiny", window, sinks, 1, gains)
    assert plan["globalLayers"] == [best.index]
    masses = calibrate.measure_outside_mass(tiny_trained_model, seqs, window, sinks)
    assert choose_global_layers(masses, 1) != plan["globalLayers"]


@pytest.mark.slow
def test_greedy_steps_are_each_the_best_addition_to_the_layers_before_them(tiny_trained_model: Path) -> None:
    """Each greedy step's gains equal the reference forward's loss drop from adding that layer to the ones chosen
    before it, and no other layer of the pool would have dropped it more (checked on the reference, not on the
    measure's own numbers)."""
    from localattn_runtime import calibrate, tinymodel

    window, sinks, budget = 16, 4, 2
    tok = tinymodel.load_tokenizer(tiny_trained_model)
    seqs = calibrate.sample_sequences(tok, 2, 256)
    singles, steps = calibrate.measure_greedy(tiny_trained_model, seqs, window, sinks, budget, pool=3)
    pool = calibrate.choose_global_layers(singles, 3)
    copies = [copy_sample(s, window, sinks) for s in seqs]
    kinds = {"text": (seqs, [sinks + window + 1] * 2), "copy": ([c for c, _ in copies], [at + 1 for _, at in copies])}
    model = reference["load"](tiny_trained_model)
    before = {steps[0].index}
    base = {k: _oracle_nll(model, s, window, sinks, before, f) for k, (s, f) in kinds.items()}
    oracle = {i: LayerGain(i, *(base[k] - _oracle_nll(model, s, window, sinks, before | {i}, f)
                                for k, (s, f) in kinds.items()), steps[1].text_gap, steps[1].copy_gap)
              for i in pool if i not in before}
    step = steps[1]
    assert step.text_gain == pytest.approx(oracle[step.index].text_gain, abs=2e-4)
    assert step.copy_gain == pytest.approx(oracle[step.index].copy_gain, abs=2e-4)
    assert oracle[step.index].score >= max(g.score for g in oracle.values()) - 1e-3
