-- name: _ll_ww_fit
-- signature: _ll_ww_fit(eig)
-- description: WeightWatcher's power-law fit of ascending eigenvalues eig (all > 0): for each candidate
--    x_min = eig[i] but the largest, the tail eig[i..n] (m = n - i + 1 values) gives
--        alpha_i = 1 + m / (sum_{j>=i} ln eig[j] - m ln eig[i])          (continuous MLE)
--        D_i = max_{j>=i} | 1 - (eig[j] / eig[i])^(1 - alpha_i) - (j - i) / m |   (KS distance; 1 if alpha_i <= 1)
--    and the fit is the i of the smallest D_i (the first on ties): [D, i, alpha, x_min, m].
--    Each candidate's alpha, x_min and m are computed once, before its KS scan, and the scan reads no
--    list but its own tail: written inside the scan they were recomputed (and eig copied) for every tail
--    value, which took 9.5 s for one spectrum of 256 values and minutes at Pythia's widths.
-- uses: _ll_ww_alpha_at
CREATE OR REPLACE MACRO _ll_ww_fit(eig) AS
    CASE WHEN len(eig) >= 2 THEN
        list_sort(list_transform(
            list_transform(range(1, len(eig)), lambda i: {
                'i': i, 'alpha': _ll_ww_alpha_at(eig, i), 'x_min': eig[i], 'm': len(eig) - i + 1,
                'tail': list_slice(eig, i, len(eig))}),
            lambda c: [
                CASE WHEN c.alpha > 1 THEN
                    list_max(list_transform(c.tail, lambda x, k:
                        abs(1 - (x / c.x_min) ^ (1 - c.alpha) - (k - 1) / c.m)))
                ELSE 1.0 END,
                c.i::DOUBLE, c.alpha, c.x_min, c.m::DOUBLE]))[1]
    END;
