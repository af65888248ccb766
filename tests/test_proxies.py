"""Zero-cost proxies (`predictors.proxies`) and `nas proxies`.

Small exact cases: params and MACs equal the closed-form counts; synflow, jacov, nwot, snip and
grad_norm of tiny models equal their hand-computed values; scoring is deterministic for a seed,
leaves the model and the global RNG as they were. Agreement with the published NB201 scores of a
few cells reads the shared table (`$HWNAS_SHARED_DATA/nb201/nb201_zc.csv`) and skips without it.
The full validation (1,000 cells) is `python -m bench.proxies`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from nas.cli import app
from predictors.cost import macs_of_spec, params_of_spec
from predictors.proxies import (PROXIES, ProxyBatch, get_proxy, parse_proxy_names, sample_batch, score_model,
                                shape_batch)
from predictors.proxies.jacov import jacobian_score
from search_spaces.build import build_model
from search_spaces.errors import UnknownNameError
from search_spaces.spaces import get_space

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HWNAS_SHARED_DATA", REPO.parent / "shared" / "data"))
ZC_TABLE = SHARED / "nb201" / "nb201_zc.csv"
needs_zc_table = pytest.mark.skipif(not ZC_TABLE.is_file(), reason=f"needs the shared NB201 proxy table ({ZC_TABLE})")
INDEX0 = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"
BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
runner = CliRunner()


def small_nb201(arch: str = BEST, resolution: int = 8):
    space = get_space("nb201", resolution=resolution, num_classes=10)
    return space.from_arch_string(arch)


def random_batch(size: int = 8, resolution: int = 8, classes: int = 10, seed: int = 0) -> ProxyBatch:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn((size, 3, resolution, resolution), generator=generator)
    labels = torch.randint(0, classes, (size,), generator=generator)
    return ProxyBatch(images, labels, classes)


def linear(weight: list[list[float]]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight), bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    return layer


# -- registry --------------------------------------------------------------------------------------
def test_registry_names_aliases_and_unknown() -> None:
    assert {"synflow", "jacov", "nwot", "snip", "grad_norm", "fisher", "zen", "params", "macs"} <= set(PROXIES.names())
    assert parse_proxy_names("synflow, jacob_cov,naswot,synflow") == ["synflow", "jacov", "nwot"]
    assert get_proxy("synflow").needs_data is False and get_proxy("snip").needs_data is True
    with pytest.raises(UnknownNameError, match="'bogus'.*registered: .*synflow"):
        parse_proxy_names("synflow,bogus")


# -- exact small cases ------------------------------------------------------------------------------
def test_params_and_macs_equal_the_closed_form_counts() -> None:
    for arch in (INDEX0, BEST):
        spec = small_nb201(arch, resolution=32)
        scores = score_model(build_model(spec), ["params", "macs"], shape_batch(3, 32, 10, size=2))
        assert scores["params"].value == params_of_spec(spec)
        assert scores["macs"].value == macs_of_spec(spec)
    assert params_of_spec(small_nb201(INDEX0, 32)) == 129_306  # NB201 index 0: 0.129306 M


def test_synflow_of_a_linear_chain_is_its_closed_form() -> None:
    # |W2| |W1| 1 = [2, 1] . [6, 2.5] = 14.5 = R; each layer's sum of theta dR/dtheta is R (R is
    # linear in each layer), so the raw score is 2R = 29 and synflow returns log(29).
    model = nn.Sequential(linear([[1.0, -2.0, 3.0], [0.5, 1.0, -1.0]]), linear([[2.0, -1.0]]))
    batch = ProxyBatch(torch.zeros((2, 3, 1, 1)), torch.zeros(2, dtype=torch.long), 1)
    model = nn.Sequential(nn.Flatten(), *model)
    score = score_model(model, ["synflow"], batch, init="as-built")["synflow"].value
    assert score == pytest.approx(math.log(29.0), rel=1e-12)
    with_bn = nn.Sequential(nn.Flatten(), linear([[1.0, -2.0, 3.0], [0.5, 1.0, -1.0]]), nn.BatchNorm1d(2),
                            linear([[2.0, -1.0]]))
    assert score_model(with_bn, ["synflow"], batch, init="as-built")["synflow"].value == pytest.approx(score, rel=1e-12)


def test_jacov_of_a_linear_model_is_its_closed_form() -> None:
    # every image has the same input gradient: correlations all 1, eigenvalues N and N - 1 zeros
    n, k = 6, 1e-5
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    value = score_model(model, ["jacov"], random_batch(n, resolution=2, classes=3))["jacov"].value
    expected = -((math.log(n + k) + 1 / (n + k)) + (n - 1) * (math.log(k) + 1 / k))
    assert value == pytest.approx(expected, rel=1e-6)
    # zero-mean orthogonal rows are uncorrelated: eigenvalues all 1, the best score, about -N
    hadamard = np.array([[1.0, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]])
    assert jacobian_score(hadamard) == pytest.approx(-3 * (math.log(1 + k) + 1 / (1 + k)))
    assert math.isnan(jacobian_score(np.zeros((3, 5))))  # an output that ignores the input


def test_nwot_counts_relu_code_agreements() -> None:
    images = torch.tensor([[1.0, -1.0, 2.0, 0.5], [1.0, 1.0, -2.0, 0.5], [-1.0, -1.0, -2.0, 3.0]]).view(3, 1, 2, 2)
    model = nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Linear(4, 2))
    codes = (images.view(3, -1) > 0).double().numpy()
    kernel = codes @ codes.T + (1 - codes) @ (1 - codes).T  # units on which two images agree
    value = score_model(model, ["nwot"], ProxyBatch(images, torch.zeros(3, dtype=torch.long), 2))["nwot"].value
    assert value == pytest.approx(np.linalg.slogdet(kernel)[1], rel=1e-12)


def test_snip_and_grad_norm_of_a_linear_classifier() -> None:
    batch = random_batch(5, resolution=2, classes=3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3, bias=False))
    weight = model[1].weight.detach().clone()
    x = batch.inputs.view(5, -1)
    # dL/dW of the mean cross-entropy: (softmax(xW^T) - onehot(y))^T x / N
    gradient = (torch.softmax(x @ weight.T, 1) - nn.functional.one_hot(batch.targets, 3).float()).T @ x / 5
    scores = score_model(model, ["snip", "grad_norm"], batch, init="as-built")
    assert scores["snip"].value == pytest.approx(float((weight * gradient).abs().sum()), rel=1e-5)
    assert scores["grad_norm"].value == pytest.approx(float(gradient.norm()), rel=1e-5)


# -- the harness -------------------------------------------------------------------------------------
def test_scoring_is_deterministic_and_leaves_model_and_rng_alone() -> None:
    model = build_model(small_nb201())
    model.eval()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    batch = random_batch()
    names = PROXIES.names()
    first = score_model(model, names, batch, seed=3)
    again = score_model(model, names, batch, seed=3)
    assert {name: s.value for name, s in first.items()} == {name: s.value for name, s in again.items()}
    assert all(math.isfinite(s.value) and s.seconds >= 0 for s in first.values()), first
    other = score_model(model, ["jacov"], batch, seed=4)  # another init
    assert other["jacov"].value != first["jacov"].value
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert not model.training
    assert all(parameter.grad is None for parameter in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_as_built_init_scores_the_weights_given() -> None:
    model = build_model(small_nb201())
    batch = random_batch()
    given = score_model(model, ["synflow"], batch, init="as-built", seed=0)["synflow"].value
    assert score_model(model, ["synflow"], batch, init="as-built", seed=9)["synflow"].value == given
    assert score_model(model, ["synflow"], batch, init="torch", seed=0)["synflow"].value != given


def test_sample_batch_is_seeded_without_global_rng() -> None:
    images, labels = torch.arange(40.0).view(10, 1, 2, 2), torch.arange(10)
    state = torch.get_rng_state()
    first = sample_batch(images, labels, 10, size=4, seed=1)
    assert torch.equal(first.inputs, sample_batch(images, labels, 10, size=4, seed=1).inputs)
    assert not torch.equal(first.inputs, sample_batch(images, labels, 10, size=4, seed=2).inputs)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first.inputs.view(4, -1)[:, 0] / 4, first.targets.float())  # labels follow images


@needs_zc_table
def test_published_nb201_scores_of_two_cells() -> None:
    """synflow (data-free, same init scheme) within 1% of NAS-Bench-Suite-Zero's; params exact."""
    with ZC_TABLE.open(newline="") as handle:
        rows = {row["arch"]: row for row in csv.DictReader(handle) if row["index"] in ("0", "1")}
    assert len(rows) == 2
    for arch, row in rows.items():
        model = build_model(small_nb201(arch, resolution=32))
        value = score_model(model, ["synflow"], shape_batch(3, 32, 10, size=2))["synflow"].value
        assert value == pytest.approx(float(row["zc_cifar10_synflow"]), rel=0.01)


# -- the command ---------------------------------------------------------------------------------------
def write_archs(tmp_path: Path, *lines: str, name: str = "archs.txt") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_one_line_error(result, *names: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])


def test_cli_json_scores_each_arch(tmp_path: Path) -> None:
    archs = write_archs(tmp_path, "# two cells", INDEX0, "", BEST)
    result = runner.invoke(app, ["proxies", "--space", "nb201", "--archs", str(archs), "--proxies",
                                 "synflow,params,nwot", "--dataset", "synthetic", "--batch-size", "4", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["arch"] for row in rows] == [INDEX0, BEST]
    assert rows[0]["params"] == 129_306
    assert set(rows[1]["seconds"]) == {"synflow", "params", "nwot"}
    assert all(isinstance(row["nwot"], float) for row in rows)


def test_cli_data_free_proxies_need_no_dataset(tmp_path: Path) -> None:
    result = runner.invoke(app, ["proxies", "--archs", str(write_archs(tmp_path, INDEX0)), "--proxies", "macs", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["macs"] == 15_647_360


def test_cli_spec_files_for_a_space_without_arch_strings(tmp_path: Path) -> None:
    spec = get_space("mnasnet", resolution=32, num_classes=10).sample(np.random.default_rng(0))
    (tmp_path / "a.json").write_text(json.dumps(spec.to_dict()))
    result = runner.invoke(app, ["proxies", "--space", "mnasnet", "--archs", str(write_archs(tmp_path, "a.json")),
                                 "--proxies", "params", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["params"] == params_of_spec(spec)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    good = write_archs(tmp_path, INDEX0)
    assert_one_line_error(runner.invoke(app, ["proxies", "--archs", str(good), "--proxies", "synflow,bogus"]),
                          "bogus", "synflow")
    bad = write_archs(tmp_path, INDEX0, "# fine", "|nor_conv_3x3~0|+|oops~0|", name="bad.txt")
    assert_one_line_error(runner.invoke(app, ["proxies", "--archs", str(bad), "--proxies", "params"]),
                          "bad.txt:3", "nb201")
    assert_one_line_error(runner.invoke(app, ["proxies", "--space", "nosuch", "--archs", str(good)]),
                          "nosuch", "nb201")
    # an nb201 arch string where the space reads spec files
    assert_one_line_error(runner.invoke(app, ["proxies", "--space", "mnasnet", "--archs", str(good),
                                              "--proxies", "params"]), "archs.txt:1", "mnasnet")
    # an nb201 spec under --space mnasnet: a spec of another space
    (tmp_path / "cell.json").write_text(json.dumps(small_nb201(INDEX0, 32).to_dict()))
    foreign = write_archs(tmp_path, "cell.json", name="foreign.txt")
    assert_one_line_error(runner.invoke(app, ["proxies", "--space", "mnasnet", "--archs", str(foreign),
                                              "--proxies", "params"]), "foreign.txt:1", "mnasnet")
    assert_one_line_error(runner.invoke(app, ["proxies", "--archs", str(good), "--proxies", "nwot"]),
                          "nwot", "--dataset")
    assert_one_line_error(runner.invoke(app, ["proxies", "--archs", str(tmp_path / "missing.txt")]), "missing.txt")
    assert_one_line_error(runner.invoke(app, ["proxies", "--archs", str(good), "--proxies", "params",
                                              "--init", "xavier"]), "xavier", "torch")
