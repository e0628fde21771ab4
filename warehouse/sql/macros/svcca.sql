-- name: svcca
-- signature: svcca(a, b, keep := 0.99)
-- description: SVCCA (Raghu et al. 2017) between two stored sketches (gram columns of the same probe,
--    biased estimator, linear kernel): the mean canonical correlation between the leading sample-space
--    directions of each site's centred activations that hold a share keep of its variance, from the
--    Grams alone: the eigenvectors of K = X~ X~^T (eigenvalues = squared singular values of X~), and
--        rho = singular values of U_k(a)^T U_k(b)   (cosines of the principal angles)
--    1 for the same activations up to an invertible linear map of the kept directions. NULL for a NULL,
--    all-zero or mismatched pair. Computed in Python (numpy eigh per row): about 1 ms a pair at n = 128.
CREATE OR REPLACE MACRO svcca(a, b, keep := 0.99) AS _ll_svcca(a::DOUBLE[], b::DOUBLE[], keep);
