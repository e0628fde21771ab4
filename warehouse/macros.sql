-- layerlake SQL macros: similarity (CKA) on stored Gram matrices and rank measures on stored spectra.
--
-- Installed on every connection by warehouse.macros.install(con). Conventions:
--   * a spectrum `sv` is a list of singular values s_i >= 0 (any order; stored descending);
--   * exact zeros are dropped wherever a ratio or logarithm would meet them;
--   * a measure that is undefined (empty or NULL spectrum, all zeros, division by zero) is NULL,
--     never NaN and never an error. The three norms of an all-zero spectrum are 0 (well defined);
--   * helpers whose name starts with `_ll_` are internal: they exist so an expensive sub-expression is
--     written once (a DuckDB macro is expanded inline, and a lambda must not re-evaluate it per element).

-- ---------------------------------------------------------------------------------------------------
-- Similarity
-- ---------------------------------------------------------------------------------------------------

-- cka(a, b): linear CKA of two stored centred Gram matrices (flattened n*n float lists, same probe).
--     cka = <A, B> / sqrt(<A, A> <B, B>)        with <A, B> = sum_ij A_ij B_ij = list_dot_product(a, b)
-- With A = H K H (biased centring) this is the biased HSIC estimator of Kornblith et al. (2019);
-- with U-centred Grams (zero diagonal, Szekely-Rizzo) it is the debiased one: the estimator is whatever
-- the two arrays hold (the `estimator` column). Lists are promoted to DOUBLE so the sums of n^2 products
-- accumulate in float64. NULL when either Gram is zero (or NULL).
CREATE OR REPLACE MACRO cka(a, b) AS
    list_dot_product(a::DOUBLE[], b::DOUBLE[])
    / nullif(sqrt(list_dot_product(a::DOUBLE[], a::DOUBLE[]) * list_dot_product(b::DOUBLE[], b::DOUBLE[])), 0);

-- cka_normed(a, b, na, nb): the same CKA using the stored Frobenius norms (`gram_norm` = sqrt(<A, A>)):
--     cka = <A, B> / (na * nb)
-- one dot product per pair instead of three. NULL when a norm is 0 or NULL.
CREATE OR REPLACE MACRO cka_normed(a, b, na, nb) AS
    list_dot_product(a::DOUBLE[], b::DOUBLE[]) / nullif(na::DOUBLE * nb::DOUBLE, 0);

-- ---------------------------------------------------------------------------------------------------
-- Rank measures on a spectrum
-- ---------------------------------------------------------------------------------------------------

-- _ll_pos(sv): the strictly positive singular values, as DOUBLE.
CREATE OR REPLACE MACRO _ll_pos(sv) AS list_filter(sv::DOUBLE[], lambda x: x > 0);

-- erank(sv): effective rank of Roy & Vetterli (2007).
--     p_i = s_i / S, S = sum_i s_i (zeros dropped);   erank = exp(-sum_i p_i ln p_i)
-- computed as exp(ln S - (sum_i s_i ln s_i) / S), the same quantity in one pass.
-- 1 for a single nonzero value, k for k equal values. NULL for an empty, all-zero or NULL spectrum.
CREATE OR REPLACE MACRO _ll_erank(pos) AS
    CASE WHEN len(pos) > 0 THEN
        exp(ln(list_sum(pos)) - list_sum(list_transform(pos, lambda x: x * ln(x))) / list_sum(pos))
    END;
CREATE OR REPLACE MACRO erank(sv) AS _ll_erank(_ll_pos(sv));

-- per(sv, k): proportional effective rank, erank(sv) / k. The paper divides by k = head dimension for
-- every matrix; pass the k you mean (d_head, rank, least(rows, cols)). NULL when k is 0 or NULL.
CREATE OR REPLACE MACRO per(sv, k) AS erank(sv) / nullif(k::DOUBLE, 0);

-- stable_rank(sv): sum_i s_i^2 / max_i s_i^2 (= ||W||_F^2 / ||W||_2^2). NULL when all values are 0.
CREATE OR REPLACE MACRO stable_rank(sv) AS
    list_sum(list_transform(sv::DOUBLE[], lambda x: x * x)) / nullif(list_max(sv::DOUBLE[]) ^ 2, 0);

-- condition_number(sv): max_i s_i / min_{s_i > 0} s_i (the condition number of the matrix restricted
-- to its row space). NULL for an empty or all-zero spectrum.
CREATE OR REPLACE MACRO condition_number(sv) AS list_max(_ll_pos(sv)) / list_min(_ll_pos(sv));

-- spectral_norm(sv): max_i s_i (= ||W||_2). NULL for an empty spectrum.
CREATE OR REPLACE MACRO spectral_norm(sv) AS list_max(sv::DOUBLE[]);

-- nuclear_norm(sv): sum_i s_i (= ||W||_*). NULL for an empty spectrum.
CREATE OR REPLACE MACRO nuclear_norm(sv) AS list_sum(sv::DOUBLE[]);

-- frobenius_norm(sv): sqrt(sum_i s_i^2) (= ||W||_F). NULL for an empty spectrum.
CREATE OR REPLACE MACRO frobenius_norm(sv) AS sqrt(list_sum(list_transform(sv::DOUBLE[], lambda x: x * x)));

-- powerlaw_alpha(sv): power-law exponent of the tail of the eigenvalue spectrum lambda_i = s_i^2, as
-- WeightWatcher's alpha, with a fixed tail instead of WeightWatcher's KS search for x_min:
--     lambda_(1) >= ... >= lambda_(m): the nonzero eigenvalues, sorted descending;
--     tail = the top k = floor(m / 2) of them, x_min = lambda_(k) (the smallest in the tail);
--     alpha = 1 + k / sum_{i=1..k} ln(lambda_(i) / x_min)        (continuous Hill / MLE, Clauset et al. 2009)
-- computed as 1 + k / (sum_i ln lambda_(i) - k ln x_min). Larger alpha = lighter tail (more random-like
-- weights). NULL when k = 0 (fewer than 2 nonzero values) or the tail is flat (all tail values tied).
CREATE OR REPLACE MACRO _ll_hill(tail) AS
    CASE WHEN len(tail) > 0 THEN
        1 + len(tail) / nullif(
            list_sum(list_transform(tail, lambda x: ln(x))) - len(tail) * ln(list_min(tail)), 0)
    END;
CREATE OR REPLACE MACRO _ll_tail(eig) AS list_slice(list_reverse_sort(eig), 1, len(eig) // 2);
CREATE OR REPLACE MACRO powerlaw_alpha(sv) AS _ll_hill(_ll_tail(list_transform(_ll_pos(sv), lambda x: x * x)));
