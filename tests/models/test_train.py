from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stmap.models import fit, load_checkpoint, save_checkpoint  # noqa: E402


class _Lin(torch.nn.Module):
    def __init__(self, n_in: int = 3):
        super().__init__()
        self.lin = torch.nn.Linear(n_in, 1)

    def forward(self, x):
        return self.lin(x).squeeze(-1)


def _data(seed=0, n=200):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    w = torch.tensor([1.5, -2.0, 0.5])
    return x, x @ w + 0.3


def _step(x, y):
    return lambda m, idx, epoch: torch.nn.functional.mse_loss(m(x[idx]), y[idx])


class TestFit:
    def test_learns_known_weights(self):
        x, y = _data()
        m = _Lin()
        hist = fit(m, _step(x, y), len(x), epochs=150, batch_size=32, lr=0.05, seed=0)
        # noise-free linear data: the least-squares solution is exact, Adam gets within 1e-2 of it
        np.testing.assert_allclose(m.lin.weight.detach().numpy().ravel(), [1.5, -2.0, 0.5], atol=1e-2)
        assert hist.loss[-1] < hist.loss[0] and not m.training

    def test_seed_reproducible(self):
        x, y = _data()
        torch.manual_seed(0)
        a = _Lin()
        torch.manual_seed(0)
        b = _Lin()
        fit(a, _step(x, y), len(x), epochs=5, batch_size=16, seed=7)
        fit(b, _step(x, y), len(x), epochs=5, batch_size=16, seed=7)
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(pa, pb, rtol=0, atol=0)  # same seed, same batches, same CPU arithmetic

    def test_early_stopping_restores_best(self):
        x, y = _data()
        m = _Lin()
        vals = iter([5.0, 1.0, 2.0, 3.0, 4.0, 0.5])
        snapshots = []

        def val(model):
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
            return next(vals)

        hist = fit(m, _step(x, y), len(x), epochs=6, batch_size=50, seed=0, patience=3, val_step=val)
        # best validation at epoch 1, then three worse epochs (2, 3, 4) -> stop after epoch 4 with epoch-1 weights
        assert hist.stopped_early and hist.best_epoch == 1 and len(hist.loss) == 5
        for k, v in m.state_dict().items():
            torch.testing.assert_close(v, snapshots[1][k], rtol=0, atol=0)

    def test_checkpoint_roundtrip(self, tmp_path):
        m = _Lin(4)
        path = save_checkpoint(tmp_path / "m.pt", m, config={"n_in": 4}, extra={"genes": ["a", "b"], "arr": np.ones(2)})
        m2, config, extra = load_checkpoint(path, _Lin)
        assert config == {"n_in": 4} and extra["genes"] == ["a", "b"] and extra["arr"] == [1.0, 1.0]
        x = torch.randn(5, 4)
        torch.testing.assert_close(m2(x), m(x), rtol=0, atol=0)

    def test_bad_inputs(self, tmp_path):
        with pytest.raises(ValueError, match="Nothing to train"):
            fit(_Lin(), lambda m, i, e: None, 0)
        with pytest.raises(FileNotFoundError):
            load_checkpoint(tmp_path / "none.pt", _Lin)
        torch.save({"x": 1}, tmp_path / "other.pt")
        with pytest.raises(ValueError, match="not a model saved by stmap"):
            load_checkpoint(tmp_path / "other.pt", _Lin)


def _cases(func):
    """Every invalid value generated from the function's declared constraints, with a stable test id."""
    from stmap._core import invalid_values

    return [
        pytest.param(name, value, id=f"{name}-{i}")
        for name, spec in func.__stmap_params__.items()
        for i, value in enumerate(invalid_values(spec))
    ]


@pytest.mark.parametrize(("name", "value"), _cases(fit))
def test_fit_invalid_value_raises_untouched(name, value):
    from stmap import StmapInputError

    x, y = _data()
    m = _Lin()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(StmapInputError, match=f"fit: {name} must be"):
        fit(m, _step(x, y), len(x), **{name: value})
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)  # not a single step taken
