"""The typed non-finite error: the input checks of the ops raise ``NonFiniteError`` (a
``ValueError``) for NaN and inf, a plain ``ValueError`` for other bad input, and the trainer
tells a diverged model from a bad call by that type alone, never by an error's message."""

import pytest
import torch

import mstein_fast
from mstein_fast._checks import check_gaussians
from mstein_fast.config import build_config
from mstein_fast.errors import Diverged, NonFiniteError
from mstein_fast.train import Trainer

NAN, INF = float("nan"), float("inf")


def gaussians(mean_value=None, cov_value=None, dtype=torch.float32):
    """A ``[3, 4]`` mean and cov pair, one element of each replaced by the given value."""
    mean, cov = torch.zeros(3, 4, dtype=dtype), torch.ones(3, 4, dtype=dtype)
    if mean_value is not None:
        mean[1, 2] = mean_value
    if cov_value is not None:
        cov[2, 0] = cov_value
    return mean, cov


@pytest.mark.parametrize("value", [NAN, INF, -INF])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_or_inf_means_raise_non_finite_error(value, dtype):
    mean, cov = gaussians(mean_value=value, dtype=dtype)
    with pytest.raises(NonFiniteError, match=r"^mean_a contains NaN or inf$") as info:
        check_gaussians([("mean_a", mean, "cov_a", cov)])
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", [NAN, INF])
def test_nan_or_inf_covariances_raise_non_finite_error(value):
    mean, cov = gaussians(cov_value=value)
    with pytest.raises(NonFiniteError, match=r"cov_a must hold finite variances > 0 \(found (nan|inf)\)"):
        check_gaussians([("mean_a", mean, "cov_a", cov)])


def test_a_covariance_with_nan_and_a_negative_value_is_non_finite():
    mean, cov = gaussians(cov_value=-1.0)
    cov[0, 0] = NAN
    with pytest.raises(NonFiniteError, match="cov_a must hold finite variances > 0"):
        check_gaussians([("mean_a", mean, "cov_a", cov)])


def test_values_whose_distances_overflow_float32_raise_non_finite_error():
    mean, cov = gaussians(mean_value=1e19)
    with pytest.raises(NonFiniteError, match="overflow float32"):
        check_gaussians([("mean_a", mean, "cov_a", cov)])


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_finite_non_positive_covariances_are_a_plain_value_error(value):
    mean, cov = gaussians(cov_value=value)
    with pytest.raises(ValueError, match=r"cov_a must hold finite variances > 0 \(found -?[01]\.0\)") as info:
        check_gaussians([("mean_a", mean, "cov_a", cov)])
    assert not isinstance(info.value, NonFiniteError)


@pytest.mark.parametrize("bad", [
    lambda m, c: [("mean_a", m, "cov_a", c[:, :3])],  # shapes differ
    lambda m, c: [("mean_a", m[0], "cov_a", c[0])],  # too few dims
    lambda m, c: [("mean_a", m[:0], "cov_a", c[:0])],  # empty
], ids=["shape", "dims", "empty"])
def test_other_bad_input_is_a_plain_value_error(bad):
    mean, cov = gaussians()
    with pytest.raises(ValueError) as info:
        check_gaussians(bad(mean, cov))
    assert not isinstance(info.value, NonFiniteError)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_the_public_ops_raise_non_finite_error(backend):
    mean, cov = gaussians(mean_value=NAN)
    good_mean, good_cov = gaussians()
    with pytest.raises(NonFiniteError, match="mean1 contains NaN or inf"):
        mstein_fast.pairwise_w2(mean, cov, good_mean, good_cov, backend=backend)
    with pytest.raises(NonFiniteError, match="mean_b contains NaN or inf"):
        mstein_fast.wasserstein_infonce(good_mean, good_cov, mean, cov, temperature=0.5, backend=backend)


# -- the trainer --------------------------------------------------------------------------------------

TINY = {"synthetic_users": 120, "synthetic_items": 40, "synthetic_clusters": 3, "max_seq_length": 8,
        "hidden_size": 8, "batch_size": 64, "augmentation_warm_up_epochs": 1, "progress": False, "device": "cpu",
        "epochs": 2, "model": "mstein"}


def trainer_whose_batch_raises(tmp_path, error):
    """A tiny MStein trainer whose first batch raises ``error`` (its parameters stay finite)."""
    trainer = Trainer(build_config(None, TINY)[0], str(tmp_path))

    def rec_loss(*args, **kwargs):
        raise error

    trainer.model.rec_loss = rec_loss
    return trainer


def test_a_non_finite_error_in_a_batch_is_a_divergence_whatever_its_message(tmp_path):
    trainer = trainer_whose_batch_raises(tmp_path, NonFiniteError("a message without the usual words"))
    with pytest.raises(Diverged, match=r"training diverged at epoch 1 \(non-finite Gaussians in batch 1\)"):
        trainer.fit()


@pytest.mark.parametrize("message", ["mean contains NaN or inf", "cov must hold finite variances > 0 (found inf)",
                                     "values overflow float32"])
def test_a_plain_value_error_stays_an_error_whatever_its_message(tmp_path, message):
    # only the type (and the parameters' own values) decides, not the words of the message
    trainer = trainer_whose_batch_raises(tmp_path, ValueError(message))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        trainer.fit()
    assert not isinstance(info.value, Diverged)


def test_a_value_error_of_a_model_with_non_finite_parameters_is_a_divergence(tmp_path):
    trainer = trainer_whose_batch_raises(tmp_path, ValueError("some op refused its input"))
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(NAN)
    with pytest.raises(Diverged, match="training diverged at epoch 1"):
        trainer.fit()
