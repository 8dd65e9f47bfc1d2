

def test_float64_outside_float32s_range_saturates_and_keeps_its_counts(tmp_path):
    import numpy as np

    import wdist
    from wdist.loaders.dtypes import to_float32

    x = np.array([1e300, -1e300, -1e-300, 5e-324, 1.0, 2.0, 0.0, -0.0, np.nan, np.inf, -np.inf])
    y = to_float32(x, "float64")
    f32 = np.finfo(np.float32)
    assert y.dtype == np.float32
    assert y[0] == f32.max and y[1] == -f32.max
    assert y[2] == -f32.smallest_subnormal and y[3] == f32.smallest_subnormal
    assert list(y[4:6]) == [1.0, 2.0] and y[6] == 0 and np.signbit(y[7]) and np.isnan(y[8])
    assert y[9] == np.inf and y[10] == -np.inf
    np.save(tmp_path / "big64.npy", x)
    st = wdist.inspect(str(tmp_path / "big64.npy"), roles=["all"]).tensors[0].stats
    assert (st["inf_count"], st["nan_count"], st["finite_count"]) == (2, 1, 8)
    assert st["zero_fraction"] == 2 / 11 and st["max"] == float(f32.max)
