"""Spectral metrics: streamed Gram eigenvalues against numpy's SVD, the power-law fit, the MP bulk, the
randomized fallback and bounded memory, all on real safetensors files."""

from __future__ import annotations

import dataclasses
import math
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_np
from safetensors.torch import save_file as save_torch

from wdist.analyzers.spectral import (
    GramState,
    SpectralOptions,
    accumulate_gram,
    analyze_tensor,
    combine_layer,
    esd_histogram,
    fit_power_law,
    matrix_view,
    mp_fit,
    sorted_median,
)
from wdist.loaders import TensorRef, open_checkpoint


def _refs(tmp_path: Path, tensors: dict[str, np.ndarray], dtype: torch.dtype = torch.float32,
           name: str = "m.safetensors") -> dict[str, TensorRef]:
    path = tmp_path / name
    save_torch({k: torch.from_numpy(np.ascontiguousarray(v)).to(dtype) for k, v in tensors.items()}, str(path))
    ck = open_checkpoint(str(path))
    return {t.name: t for t in ck.tensors}


def _stored(v: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The values the file holds, exactly, in float64 (the reference the SVD is taken of)."""
    return torch.from_numpy(np.ascontiguousarray(v)).to(dtype).to(torch.float64).numpy()


def _svd_evals(w: np.ndarray) -> np.ndarray:
    return np.sort(np.linalg.svd(w, compute_uv=False) ** 2)


def _structured(rng: np.random.Generator) -> dict[str, np.ndarray]:
    low = rng.standard_normal((301, 3)) @ rng.standard_normal((3, 120))      # rank 3: 117 zero singular values
    scaled = rng.standard_normal((257, 90)) * np.logspace(-2, 1, 90)         # columns of very different scale
    spike = rng.standard_normal((150, 333)) * 0.01
    spike[:, 7] += 5.0                                                       # wide, one dominant column
    return {"random.weight": rng.standard_normal((413, 129)), "wide.weight": rng.standard_normal((97, 410)),
            "low.weight": low, "scaled.weight": scaled, "spike.weight": spike}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("chunk", [1 << 20, 3001, 1])
def test_eigenvalues_equal_svd(tmp_path: Path, dtype: torch.dtype, chunk: int) -> None:
    # chunk 3001 divides no row count; chunk 1 is rounded up to single rows; the small panel forces
    # several column passes for the wide matrices.
    mats = _structured(np.random.default_rng(0))
    refs = _refs(tmp_path, mats, dtype)
    opts = SpectralOptions(chunk_elems=chunk, panel_elems=5000)
    for name, w in mats.items():
        res = analyze_tensor(refs[name], opts)
        assert res is not None and res.method == "gram"
        ref_ev = _svd_evals(_stored(w, dtype))
        got = np.asarray(res.eigenvalues)
        assert got.shape == ref_ev.shape == (min(w.shape),)
        np.testing.assert_allclose(got, ref_ev, rtol=1e-9, atol=1e-11 * ref_ev[-1], err_msg=name)
        assert res.spectral_norm == pytest.approx(ref_ev[-1], rel=1e-12)
        assert res.frobenius_sq == pytest.approx(float((_stored(w, dtype) ** 2).sum()), rel=1e-10)
        assert res.stable_rank == pytest.approx(ref_ev.sum() / ref_ev[-1], rel=1e-9)
        sv = np.sqrt(ref_ev[ref_ev > ref_ev[-1] * 1e-12])
        p = sv / sv.sum()
        assert res.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-6)
    low = analyze_tensor(refs["low.weight"], opts)
    # Rank 3 in exact arithmetic; rounding to 16 bits adds a little full-rank noise.
    assert low is not None and low.effective_rank is not None
    assert low.effective_rank <= (3.01 if dtype == torch.float32 else 3.5)


def test_conv_per_kernel_and_flatten_conventions(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    torch_conv = rng.standard_normal((24, 10, 3, 2)).astype(np.float32)   # PyTorch [out, in, kh, kw]
    keras_conv = rng.standard_normal((3, 2, 10, 24)).astype(np.float32)   # Keras [kh, kw, in, out]
    narrow = rng.standard_normal((6, 40, 3)).astype(np.float32)          # Conv1d with out < in: wide kernels
    refs = _refs(tmp_path, {"c.weight": torch_conv, "k.kernel": keras_conv, "n.weight": narrow})

    v = matrix_view(torch_conv.shape)
    assert v is not None and (v.layout, v.kernels, v.rows, v.cols, v.mode) == ("kernel-last", 6, 24, 10, "per-kernel")
    per_kernel = np.sort(np.concatenate([_svd_evals(torch_conv[:, :, i, j].astype(np.float64))
                                         for i in range(3) for j in range(2)]))
    res = analyze_tensor(refs["c.weight"], SpectralOptions(chunk_elems=70))
    assert res is not None and res.matrices == 6 and res.matrix_shape == [24, 10]
    np.testing.assert_allclose(res.eigenvalues, per_kernel, rtol=1e-9, atol=1e-10)

    flat = analyze_tensor(refs["c.weight"], SpectralOptions(conv_mode="flatten"))
    assert flat is not None and flat.mode == "flatten" and flat.matrix_shape == [60, 24]
    np.testing.assert_allclose(flat.eigenvalues, _svd_evals(torch_conv.reshape(24, -1).astype(np.float64)),
                               rtol=1e-9, atol=1e-10)

    kres = analyze_tensor(refs["k.kernel"], SpectralOptions(chunk_elems=50), keras=True)
    keras_ref = np.sort(np.concatenate([_svd_evals(keras_conv[i, j].astype(np.float64))
                                        for i in range(3) for j in range(2)]))
    assert kres is not None and kres.matrices == 6 and kres.matrix_shape == [24, 10]
    np.testing.assert_allclose(kres.eigenvalues, keras_ref, rtol=1e-9, atol=1e-10)
    kflat = analyze_tensor(refs["k.kernel"], SpectralOptions(conv_mode="flatten"), keras=True)
    assert kflat is not None
    np.testing.assert_allclose(kflat.eigenvalues, _svd_evals(keras_conv.reshape(-1, 24).astype(np.float64)),
                               rtol=1e-9, atol=1e-10)

    nres = analyze_tensor(refs["n.weight"], SpectralOptions(chunk_elems=1, panel_elems=100))
    narrow_ref = np.sort(np.concatenate([_svd_evals(narrow[:, :, i].astype(np.float64)) for i in range(3)]))
    assert nres is not None and nres.matrix_shape == [40, 6]
    np.testing.assert_allclose(nres.eigenvalues, narrow_ref, rtol=1e-9, atol=1e-10)


def test_views_of_other_layouts() -> None:
    assert matrix_view((7,)) is None and matrix_view((0, 5)) is None
    one = matrix_view((16, 8, 1, 1))                          # 1x1 conv is one out x in matrix
    assert one is not None and (one.layout, one.rows, one.cols, one.mode) == ("rows", 16, 8, "matrix")
    kone = matrix_view((1, 1, 8, 16), keras=True)
    assert kone is not None and (kone.rows, kone.cols) == (8, 16)
    gpt2 = matrix_view((768, 2304))                           # GPT-2 Conv1D [in, out]: a plain matrix
    assert gpt2 is not None and (gpt2.n, gpt2.side) == (2304, 768)
    with pytest.raises(ValueError):
        SpectralOptions(conv_mode="fft")


def _ww_reference_fit(evals: np.ndarray) -> tuple[float, float, float]:
    """WeightWatcher 0.7.7's WWFit.fit_power_law_standard, transcribed loop for loop."""
    data = np.sort(evals[evals > 1e-5])
    log_data = np.log(data)
    n_all = data.size
    alphas, ds = np.zeros(n_all - 1), np.ones(n_all - 1)
    for i, xmin in enumerate(data[:-1]):
        n = float(n_all - i)
        alphas[i] = 1 + n / (np.sum(log_data[i:]) - n * log_data[i])
        if alphas[i] > 1:
            ds[i] = np.max(np.abs(1 - (data[i:] / xmin) ** (-alphas[i] + 1) - np.arange(n) / n))
    i = int(np.argmin(ds))
    return float(alphas[i]), float(data[i]), float(ds[i])


def test_fit_matches_weightwatcher_loop() -> None:
    rng = np.random.default_rng(5)
    bulk = rng.random(300) * 0.5
    tail = 1.0 * rng.random(150) ** (-1 / 2.2)
    ev = np.concatenate([bulk, tail, [0.0, 1e-7]])
    fit = fit_power_law(ev)
    alpha, xmin, d = _ww_reference_fit(ev)
    assert fit is not None and fit.method == "mle-ks"
    assert (fit.alpha, fit.xmin, fit.ks) == (pytest.approx(alpha, rel=1e-12), xmin, pytest.approx(d, rel=1e-9))
    assert fit.tail_count == int(np.count_nonzero(ev >= xmin))
    small = fit_power_law(tail[:15])
    assert small is not None and small.method == "small-n" and small.tail_count >= 8
    assert fit_power_law(np.array([0.0, 3.0])) is None


def _ww_reference_small_n(evals: np.ndarray) -> tuple[float, float, float]:
    """WeightWatcher 0.7.7's small-N rule (fewer than 20 eigenvalues), loop for loop: alpha = 1 + (n-1)/sum ln,
    tails of at least 8 (else the whole spectrum), xmin minimising D - 0.868/sqrt(n)."""
    data = np.sort(evals[evals > 1e-5])
    log_data = np.log(data)
    n_all = data.size
    cands = [i for i in range(n_all - 1) if n_all - i >= 8] or [0]
    best: tuple[float, float, float, float] | None = None
    for i in cands:
        n = float(n_all - i)
        s = np.sum(log_data[i:]) - n * log_data[i]
        alpha = 1 + (n - 1) / s if s > 0 else np.inf
        if not (np.isfinite(alpha) and alpha > 1):
            continue
        d = np.max(np.abs(1 - (data[i:] / data[i]) ** (-alpha + 1) - np.arange(n) / n))
        if best is None or d - 0.868 / np.sqrt(n) < best[0]:
            best = (d - 0.868 / np.sqrt(n), alpha, data[i], d)
    assert best is not None
    return best[1], best[2], best[3]


def _spectra(n: int, kind: int, rng: np.random.Generator) -> np.ndarray:
    if kind == 0:
        return rng.random(n) ** -0.6                                          # one power law
    if kind == 1:
        return np.concatenate([rng.random(n // 2) * 0.5, rng.random(n - n // 2) ** (-1 / 2.2)])  # bulk + tail
    if kind == 2:
        return np.concatenate([np.round(rng.random(n - 1) * 5, 1) + 0.1, [6.0]])  # many ties below a distinct top
    return np.concatenate([np.zeros(n // 3), rng.exponential(size=n - n // 3)])  # zeros dropped first


@pytest.mark.parametrize("n", [2, 3, 8, 9, 19, 20, 21, 33, 47, 100, 383, 384, 768, 1100])
@pytest.mark.parametrize("kind", [0, 1, 2, 3])
def test_fit_equals_weightwatcher_loop_across_block_sizes(n: int, kind: int) -> None:
    # The KS scan runs in blocks of candidates with the columns before each row clipped to zero; these sizes
    # give one block, several, and a last partial one, on both the small-N rule and the Clauset scan.
    ev = _spectra(n, kind, np.random.default_rng(n * 10 + kind))
    fit = fit_power_law(ev)
    kept = int(np.count_nonzero(ev > 1e-5))
    if kept < 2:
        assert fit is None
        return
    assert fit is not None
    alpha, xmin, d = (_ww_reference_small_n if kept < 20 else _ww_reference_fit)(ev)
    assert fit.method == ("small-n" if kept < 20 else "mle-ks")
    assert (fit.alpha, fit.xmin, fit.ks) == (pytest.approx(alpha, rel=1e-12), xmin, pytest.approx(d, rel=1e-9, abs=1e-15))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 16, 17, 383, 384, 1000, 1001])
def test_sorted_median_equals_numpy_median(size: int) -> None:
    rng = np.random.default_rng(size)
    for x in (rng.standard_normal(size) * 10.0 ** rng.integers(-30, 30), np.round(rng.random(size), 2),
              rng.random(size) * (np.finfo(np.float64).max / 4), np.full(size, 0.1)):
        x = np.sort(x)
        want = float(np.median(x))
        assert sorted_median(x) == want or (math.isnan(want) and math.isnan(sorted_median(x)))
    x = np.sort(np.append(rng.random(size), np.nan))
    assert math.isnan(sorted_median(x)) and math.isnan(float(np.median(x)))
    assert math.isnan(sorted_median(np.zeros(0)))


def _with_spectrum(rng: np.random.Generator, lam: np.ndarray, n: int) -> np.ndarray:
    m = lam.size
    u = np.linalg.qr(rng.standard_normal((n, m)))[0]
    v = np.linalg.qr(rng.standard_normal((m, m)))[0]
    return (u * np.sqrt(lam)) @ v.T


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
def test_alpha_recovered_from_matrix_with_power_law_esd(tmp_path: Path, alpha: float) -> None:
    # An ESD with a bulk below 1 and a tail drawn (at evenly spaced quantiles) from a Pareto of exponent alpha.
    rng = np.random.default_rng(int(alpha * 10))
    q = (np.arange(300) + 0.5) / 300
    lam = np.concatenate([rng.uniform(0.01, 0.6, 150), 1.0 * q ** (-1 / (alpha - 1))])
    w = _with_spectrum(rng, lam, 600)
    res = analyze_tensor(_refs(tmp_path, {"w.weight": w})["w.weight"], SpectralOptions(chunk_elems=20000))
    assert res is not None and res.alpha is not None and res.tail_count is not None
    assert abs(res.alpha - alpha) <= 0.1
    assert 270 <= res.tail_count <= 320 and res.tail_trusted
    assert res.alpha_weighted == pytest.approx(res.alpha * math.log10(res.spectral_norm or 0))
    assert res.alpha_ks is not None and res.alpha_ks < 0.05
    assert res.looks_random is False


def test_alpha_of_random_pareto_draws() -> None:
    errors = []
    for seed in range(10):
        lam = 0.1 * np.random.default_rng(seed).random(3000) ** (-1 / (2.5 - 1))
        fit = fit_power_law(lam)
        assert fit is not None
        errors.append(fit.alpha - 2.5)
    err = np.abs(errors)
    assert np.median(err) <= 0.05 and np.mean(err <= 0.1) >= 0.8


def test_mp_spikes_of_planted_signal_and_random_init(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n, m, k = 1000, 400, 4
    noise = rng.standard_normal((n, m)).astype(np.float32) * 0.05
    u = np.linalg.qr(rng.standard_normal((n, k)))[0]
    v = np.linalg.qr(rng.standard_normal((m, k)))[0]
    theta = 0.05 * (n * m) ** 0.25 * np.array([3.0, 4.0, 5.0, 6.0])  # well above the BBP threshold (N M)^(1/4) σ
    planted = noise + ((u * theta) @ v.T).astype(np.float32)
    init = torch.nn.Linear(300, 200).weight.detach().numpy()          # PyTorch's Kaiming-uniform initialisation
    refs = _refs(tmp_path, {"noise.weight": noise, "planted.weight": planted, "init.weight": init.copy()})

    r_noise = analyze_tensor(refs["noise.weight"])
    assert r_noise is not None and r_noise.mp_spikes == 0 and r_noise.looks_random
    assert r_noise.mp_sigma2 == pytest.approx(0.05 ** 2, rel=0.03)
    r_plant = analyze_tensor(refs["planted.weight"])
    assert r_plant is not None and r_plant.mp_spikes == k and r_plant.looks_random is False
    # The bulk variance is estimated from the median, so the planted signal does not inflate it.
    assert r_plant.mp_sigma2 == pytest.approx(0.05 ** 2, rel=0.03)
    assert r_plant.mp_edge == pytest.approx(0.05 ** 2 * (math.sqrt(n) + math.sqrt(m)) ** 2, rel=0.03)
    r_init = analyze_tensor(refs["init.weight"])
    assert r_init is not None and r_init.mp_spikes == 0 and r_init.looks_random
    assert r_init.mp_ks is not None and r_init.mp_ks < 0.05
    assert mp_fit(np.zeros(10), 20, 10) is None


def test_randomized_path_above_max_side(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((700, 260)) * np.linspace(0.5, 1.5, 260)).astype(np.float32)
    wide = rng.standard_normal((180, 900)).astype(np.float32)
    refs = _refs(tmp_path, {"w.weight": w, "wide.weight": wide})
    for name, mat in (("w.weight", w), ("wide.weight", wide)):
        res = analyze_tensor(refs[name], SpectralOptions(max_side=64, chunk_elems=10007))
        ev = _svd_evals(mat.astype(np.float64))
        assert res is not None and res.method == "randomized"
        assert res.spectral_norm == pytest.approx(ev[-1], rel=0.01)
        assert res.stable_rank == pytest.approx(ev.sum() / ev[-1], rel=0.01)
        assert res.alpha is None and res.effective_rank is None and res.mp_spikes is None
        assert res.alpha_skipped is not None and "max_side 64" in res.alpha_skipped


def test_peak_memory_stays_bounded(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    tall = rng.standard_normal((20000, 512), dtype=np.float32)
    save_np({"tall.weight": tall, "wide.weight": np.ascontiguousarray(tall.T)}, str(tmp_path / "big.safetensors"))
    nbytes = tall.nbytes
    del tall
    refs = {t.name: t for t in open_checkpoint(str(tmp_path / "big.safetensors")).tensors}
    opts = SpectralOptions(chunk_elems=1 << 16, panel_elems=1 << 18)
    for name in ("tall.weight", "wide.weight"):
        tracemalloc.start()
        try:
            res = analyze_tensor(refs[name], opts)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert res is not None and res.n_evals == 512
        # Gram 512² float64 (2 MiB), chunk and panel buffers, fit temporaries; the matrix itself is 39 MiB.
        assert peak < nbytes / 4, (name, peak)


def test_gram_state_merges_and_packs(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((90, 30)).astype(np.float32)
    refs = _refs(tmp_path, {"top.weight": w[:50], "bottom.weight": w[50:], "all.weight": w})
    view = matrix_view(w.shape)
    assert view is not None
    top = accumulate_gram(refs["top.weight"], matrix_view((50, 30)) or view)
    bottom = accumulate_gram(refs["bottom.weight"], matrix_view((40, 30)) or view)
    whole = accumulate_gram(refs["all.weight"], view)
    merged = GramState(view, "cols", top.gram.copy()).merge(GramState(view, "cols", bottom.gram))
    np.testing.assert_allclose(merged.gram, whole.gram, rtol=1e-12)
    back = GramState.unpack(pickle.loads(pickle.dumps(whole.pack())))
    np.testing.assert_array_equal(back.gram, whole.gram)
    np.testing.assert_allclose(back.eigenvalues(), _svd_evals(w.astype(np.float64)), rtol=1e-9, atol=1e-10)
    with pytest.raises(ValueError):
        whole.merge(GramState.empty(matrix_view((30, 90)) or view))


def test_bad_values_layers_and_json(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    bad = rng.standard_normal((20, 10)).astype(np.float32)
    bad[3, 4] = np.nan
    ih, hh = rng.standard_normal((80, 12)), rng.standard_normal((80, 20))  # LSTM gates stacked as stored
    refs = _refs(tmp_path, {"bad.weight": bad, "lstm.weight_ih_l0": ih, "lstm.weight_hh_l0": hh,
                            "zero.weight": np.zeros((8, 5)), "ln.weight": np.ones(7)})
    r_bad = analyze_tensor(refs["bad.weight"])
    assert r_bad is not None and r_bad.method == "none" and r_bad.alpha is None
    assert r_bad.alpha_skipped == "the tensor has NaN or Inf values"
    assert analyze_tensor(refs["ln.weight"]) is None
    r_zero = analyze_tensor(refs["zero.weight"])
    assert r_zero is not None and r_zero.spectral_norm == 0.0 and r_zero.alpha_skipped == "the matrix is all zeros"

    a, b = analyze_tensor(refs["lstm.weight_ih_l0"]), analyze_tensor(refs["lstm.weight_hh_l0"])
    assert a is not None and b is not None
    layer = combine_layer("lstm", [a, b])
    assert layer is not None and layer.n_evals == 32 and layer.mode == "layer"
    assert layer.spectral_norm == max(a.spectral_norm or 0, b.spectral_norm or 0)
    assert layer.stable_rank == pytest.approx(((ih ** 2).sum() + (hh ** 2).sum()) / layer.spectral_norm, rel=1e-6)
    assert layer.mp_spikes == (a.mp_spikes or 0) + (b.mp_spikes or 0)
    single = combine_layer("bad", [r_bad])
    assert single is not None and single.name == "bad" and single.alpha_skipped == r_bad.alpha_skipped

    d = a.to_dict()
    assert "eigenvalues" not in d and len(a.to_dict(eigenvalues=True)["eigenvalues"]) == 12
    hist = d["esd_histogram"]
    assert sum(hist["counts"]) + hist["zeros"] == 12 and len(hist["edges"]) == len(hist["counts"]) + 1
    assert set(a.stats()) >= {"alpha", "spectral_norm", "stable_rank", "mp_spikes"}
    assert esd_histogram(np.zeros(4)) == {"edges": [], "counts": [], "zeros": 4}
    # to_dict is dataclasses.asdict without the spectrum, and owns its lists (the report may be edited)
    full = dataclasses.asdict(a)
    assert a.to_dict(eigenvalues=True) == full and {**d, "eigenvalues": full["eigenvalues"]} == full
    d["esd_histogram"]["counts"].append(1)
    d["shape"].append(1)
    assert a.to_dict() == {k: v for k, v in full.items() if k != "eigenvalues"}
    renamed = combine_layer("one", [a])
    assert renamed is not None and renamed.to_dict() == {**a.to_dict(), "name": "one"}
    renamed.notes.append("x")
    assert "x" not in a.notes


# --- defects found by the 2026-12-03 review --------------------------------------------------------------


def _res(name, shape):
    from wdist.analyzers.spectral import SpectralResult

    return SpectralResult(name=name, shape=list(shape), mode="matrix", convention="test", matrices=1,
                          matrix_shape=[max(shape), min(shape)], method="gram")


def test_rank_deficient_matrices_with_a_large_norm_are_not_fitted_on_rounding_noise():
    import numpy as np

    from wdist.analyzers.spectral import SpectralOptions, spectral_metrics

    w = np.full((64, 48), 3e4)  # rank 1, lambda_max 2.76e12: eigvalsh's noise sits near 1e-4
    ev = np.linalg.eigvalsh(w.T @ w)
    assert (ev > 1e-5).sum() > 2  # the noise that the absolute 1e-5 cut let into the fit
    res = spectral_metrics(_res("c", [64, 48]), ev, 64, 48, float((w ** 2).sum()),
                           SpectralOptions())
    assert res.alpha is None and "fewer than 2 eigenvalues" in (res.alpha_skipped or "")
    assert res.effective_rank == pytest.approx(1.0)


def test_all_zero_and_tiny_matrices_give_honest_nulls():
    import numpy as np

    from wdist.analyzers.spectral import SpectralOptions, spectral_metrics

    res = spectral_metrics(_res("z", [20, 30]), np.zeros(20), 30, 20, 0.0, SpectralOptions())
    assert res.stable_rank is None and res.spectral_norm == 0.0
    rng = np.random.default_rng(0)
    row = rng.normal(size=(37, 4))
    res = spectral_metrics(_res("r", [37, 4]), np.linalg.eigvalsh(row.T @ row), 37, 4,
                           float((row ** 2).sum()), SpectralOptions())
    assert res.looks_random is None  # 4 eigenvalues: MP's KS allowance 4/M is 1, nothing can fail it


def test_check_passes_the_spectral_options_on(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    import wdist

    rng = np.random.default_rng(0)
    save_file({"gauss.weight": rng.normal(size=(200, 100)).astype(np.float32),
               "conv2.weight": rng.normal(size=(32, 12, 3, 5)).astype(np.float32)}, str(tmp_path / "m.safetensors"))
    p = str(tmp_path / "m.safetensors")
    rep = wdist.check(p, ["gauss.weight: alpha <= 100"], config=False, spectral_max_side=16)
    assert rep.checkpoints[0].rules[0].verdict == "error"  # alpha not computed above max_side: nothing to check
    from wdist.api import options

    flat = wdist.inspect(p, opts=options(spectral=True, spectral_conv="flatten")).spectral.tensors["conv2.weight"]
    per = wdist.inspect(p, spectral=True).spectral.tensors["conv2.weight"]
    flat, per = flat["tail_count"], per["tail_count"]
    assert flat != per
    for conv, want in (("flatten", flat), ("per-kernel", per)):
        rr = wdist.check(p, [f"conv2.weight: tail_count <= {want}"], config=False, spectral_conv=conv).checkpoints[0]
        assert rr.rules[0].verdict == "pass" and rr.rules[0].results[0].value == want


def test_nan_matrices_make_no_numpy_warnings(tmp_path):
    """A NaN weight's Gram is non-finite and reported as such; numpy's matmul warning leaked to stderr."""
    import warnings

    import wdist

    w = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32)
    w[0, 0], w[1, 1], w[2, 2] = np.nan, np.inf, -np.inf  # inf * 0 and inf - inf in the Gram: "invalid value"
    from safetensors.numpy import save_file

    save_file({"a.weight": w}, str(tmp_path / "nan.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = wdist.inspect(str(tmp_path / "nan.safetensors"), jobs=1, spectral=True)
    assert rep.spectral is not None
