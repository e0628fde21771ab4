-- name: mp_softrank
-- signature: mp_softrank(sv, rows, cols)
-- description: the Marchenko-Pastur soft rank lambda_+ / lambda_max of a rows x cols matrix: with
--    M = min(rows, cols), N = max(rows, cols), Q = N / M and the eigenvalues normalised to mean 1
--    (lambda_i = s_i^2 * M / sum_j s_j^2, WeightWatcher's rescaling), a random matrix's bulk ends at
--        lambda_+ = (1 + 1 / sqrt(Q))^2
--    and mp_softrank = lambda_+ / max_i lambda_i, at most 1: near 1 when the spectrum is all bulk
--    (random-like), small when a few large directions (spikes) stand out. The bulk's variance is taken as
--    the mean eigenvalue (1 after the rescaling), not fitted: WeightWatcher's mp_fit fits it to the
--    density, which puts it below 1 when spikes carry much of the norm, so its soft rank is the SMALLER
--    one then (up to 10x smaller with strong spikes); on an all-bulk spectrum both are about 1
--    (WeightWatcher's is not capped and can come out a few % above 1). The floor is lambda_+ / M: with a
--    short side M of 4 or less it is 1 whatever the spectrum, so read it at layer sizes. NULL for an
--    all-zero spectrum and for one holding a NaN or an infinity.
CREATE OR REPLACE MACRO mp_softrank(sv, rows, cols) AS
    CASE WHEN list_max(sv::DOUBLE[]) > 0 AND rows > 0 AND cols > 0
        AND isfinite(list_sum(list_transform(sv::DOUBLE[], lambda x: x * x))) THEN
        least(1.0, (1 + 1 / sqrt(greatest(rows, cols)::DOUBLE / least(rows, cols)))^2
            / (list_max(sv::DOUBLE[]) ^ 2 * least(rows, cols)
               / list_sum(list_transform(sv::DOUBLE[], lambda x: x * x))))
    END;
