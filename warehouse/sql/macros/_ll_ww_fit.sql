-- name: _ll_ww_fit
-- signature: _ll_ww_fit(eig)
-- description: WeightWatcher's power-law fit of ascending eigenvalues eig (all > 0): for each candidate
--    x_min = eig[i] but the largest, the tail eig[i..n] (m = n - i + 1 values) gives
--        alpha_i = 1 + m / (sum_{j>=i} ln eig[j] - m ln eig[i])          (continuous MLE)
--        D_i = max_{j>=i} | 1 - (eig[j] / eig[i])^(1 - alpha_i) - (j - i) / m |   (KS distance; 1 if alpha_i <= 1)
--    and the fit is the i of the smallest D_i (the first on ties): [D, i, alpha, x_min, m].
CREATE OR REPLACE MACRO _ll_ww_fit(eig) AS
    CASE WHEN len(eig) >= 2 THEN
        list_sort(list_transform(range(1, len(eig)), lambda i: [
            CASE WHEN _ll_ww_alpha_at(eig, i) > 1 THEN
                list_max(list_transform(list_slice(eig, i, len(eig)), lambda x, k:
                    abs(1 - (x / eig[i]) ^ (1 - _ll_ww_alpha_at(eig, i)) - (k - 1) / (len(eig) - i + 1))))
            ELSE 1.0 END,
            i::DOUBLE, _ll_ww_alpha_at(eig, i), eig[i], (len(eig) - i + 1)::DOUBLE]))[1]
    END;
