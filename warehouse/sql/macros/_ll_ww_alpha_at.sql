-- name: _ll_ww_alpha_at
-- signature: _ll_ww_alpha_at(eig, i)
-- description: the continuous power-law MLE of the tail eig[i..n] of ascending eig, with x_min = eig[i]:
--        alpha = 1 + m / (sum_{j>=i} ln eig[j] - m ln eig[i]),  m = n - i + 1
CREATE OR REPLACE MACRO _ll_ww_alpha_at(eig, i) AS
    1 + (len(eig) - i + 1) / nullif(
        list_sum(list_transform(list_slice(eig, i, len(eig)), lambda x: ln(x)))
        - (len(eig) - i + 1) * ln(eig[i]), 0);
