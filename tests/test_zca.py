"""ZCA whitening: against a direct numpy reference, inverse, persistence, train-only fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memdistill.data import ImageDataset, ZCAWhitening, fit_zca, train_val_split
from memdistill.errors import ConfigError, IntegrityError

SHAPE = (2, 3, 3)  # D = 18


def _correlated(n: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d = int(np.prod(SHAPE))
    mixing = torch.randn(d, d, generator=g, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ mixing + 3.0
    return x.reshape(n, *SHAPE).to(dtype)


def _cov(z: torch.Tensor) -> np.ndarray:
    return np.cov(z.reshape(len(z), -1).double().numpy(), rowvar=False)


def test_whitened_covariance_is_identity_for_small_regularization():
    x = _correlated(2000)
    zca = ZCAWhitening.fit(x, regularization=1e-10)
    z = zca.transform(x)
    assert z.shape == x.shape and z.dtype == x.dtype
    np.testing.assert_allclose(_cov(z), np.eye(18), atol=1e-6)
    np.testing.assert_allclose(z.reshape(len(z), -1).mean(0).numpy(), 0.0, atol=1e-9)


def test_matches_a_direct_reference_computation():
    x = _correlated(300, seed=1)
    reg = 0.1
    flat = x.reshape(300, -1).numpy()
    mean = flat.mean(0)
    s, u = np.linalg.eigh(np.cov(flat, rowvar=False))  # unbiased, as kornia
    w = u @ np.diag(1.0 / np.sqrt(s + reg)) @ u.T
    expected = (flat - mean) @ w
    got = ZCAWhitening.fit(x, regularization=reg).transform(x).reshape(300, -1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    # regularisation shrinks each direction: whitened variances are S / (S + reg)
    whitened = np.linalg.eigvalsh(_cov(torch.from_numpy(got)))
    np.testing.assert_allclose(whitened, np.sort(s / (s + reg)), atol=1e-9)


def test_batching_does_not_change_the_fit():
    x = _correlated(257, seed=2)
    a = ZCAWhitening.fit(x, 0.1, batch_size=16).state_dict()
    b = ZCAWhitening.fit(x, 0.1, batch_size=10_000).state_dict()
    torch.testing.assert_close(a["mean"], b["mean"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a["eigenvalues"], b["eigenvalues"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_inverse_round_trip(dtype, tol):
    x = _correlated(500, seed=3)
    zca = ZCAWhitening.fit(x, regularization=0.1)
    probe = _correlated(7, seed=4, dtype=dtype)
    z = zca.transform(probe)
    assert z.dtype == dtype
    torch.testing.assert_close(zca.inverse(z), probe, rtol=tol, atol=tol)
    torch.testing.assert_close(zca.transform(zca.inverse(probe)), probe, rtol=tol, atol=tol)


def test_gradients_flow_through_transform():
    zca = ZCAWhitening.fit(_correlated(100), 0.1)
    x = _correlated(3, seed=9, dtype=torch.float32).requires_grad_(True)
    zca.transform(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_state_dict_round_trip_is_plain_tensors():
    x = _correlated(200, seed=5)
    zca = ZCAWhitening.fit(x, regularization=0.25)
    state = zca.state_dict()
    assert set(state) == {"mean", "eigenvectors", "eigenvalues", "regularization", "image_shape"}
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert float(state["regularization"]) == 0.25
    again = ZCAWhitening.from_state_dict(state)
    assert again.regularization == 0.25 and again.image_shape == SHAPE
    torch.testing.assert_close(again.transform(x), zca.transform(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match="eigenvectors"):
        ZCAWhitening.from_state_dict({k: v for k, v in state.items() if k != "eigenvectors"})


def test_save_load_round_trip(tmp_path):
    from safetensors.torch import load_file

    x = _correlated(200, seed=6)
    zca = ZCAWhitening.fit(x, regularization=0.1)
    path = tmp_path / "sub" / "zca.safetensors"
    zca.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["zca.safetensors"]  # no temp file left
    assert set(load_file(path)) == set(zca.state_dict())
    loaded = ZCAWhitening.load(path)
    torch.testing.assert_close(loaded.transform(x), zca.transform(x), rtol=1e-12, atol=1e-12)
    zca.save(path)  # overwriting works too
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(IntegrityError, match="junk.safetensors"):
        ZCAWhitening.load(tmp_path / "junk.safetensors")


def test_rejects_bad_inputs():
    zca = ZCAWhitening.fit(_correlated(50), 0.1)
    with pytest.raises(ConfigError, match=r"\(\.\.\., 2, 3, 3\)"):
        zca.transform(torch.zeros(4, 3, 3, 3))
    with pytest.raises(ConfigError, match="N >= 2"):
        ZCAWhitening.fit(torch.zeros(1, *SHAPE))
    with pytest.raises(ConfigError, match="singular"):
        ZCAWhitening.fit(torch.zeros(5, *SHAPE), regularization=0.0)


# ----------------------------------------------------------------- on a dataset
def _dataset(split: str, n: int = 200, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 4
    return ImageDataset("toy", split, images, labels, ("a", "b", "c", "d"), (0.5,), (0.25,))


def test_fit_zca_uses_training_split_only():
    train, test = _dataset("train"), _dataset("test", seed=1)
    with pytest.raises(ConfigError, match="training split"):
        fit_zca(test)
    part, val = train_val_split(train, 0.2, seed=0)
    with pytest.raises(ConfigError, match="training split"):
        fit_zca(val)
    zca = fit_zca(part, regularization=0.1)
    direct = ZCAWhitening.fit(part.normalize(part.images, dtype=torch.float64), 0.1)
    torch.testing.assert_close(zca.state_dict()["mean"], direct.state_dict()["mean"])
    # a ZCA already attached to the dataset is ignored while fitting
    refit = fit_zca(part.with_zca(zca), regularization=0.1, batch_size=7)
    torch.testing.assert_close(refit.state_dict()["eigenvalues"], zca.state_dict()["eigenvalues"])


def test_dataset_normalize_with_zca_round_trips():
    train = _dataset("train", n=400)
    ds = train.with_zca(fit_zca(train, regularization=0.1))
    x = ds.normalize(ds.images[:20])
    plain = train.normalize(train.images[:20])
    assert not torch.allclose(x, plain)
    back = (ds.denormalize(x) * 255).round().to(torch.uint8)
    assert torch.equal(back, ds.images[:20])
